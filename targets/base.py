"""The interface every target implements, and the model handed to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from edgeport.errors import ConfigError
from edgeport.progress import report
from edgeport.types import Artifact, CalibrationSet, FileRecord, TensorSpec


@dataclass
class SourceModel:
    """The model as every target may start from it: the ONNX interchange file, or the torch module."""

    onnx_path: Path
    module: Any  # torch.nn.Module in eval mode
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Session(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Target(ABC):
    """One runtime. Capabilities are class data so listing targets needs no backend import."""

    name: ClassVar[str]
    extra: ClassVar[str]
    runtime: ClassVar[str]  # the module a device must have to run the artifact
    precisions: ClassVar[tuple[str, ...]]
    quant_schemes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def export(self, source: SourceModel, precision: str, out_dir: Path, options: dict,
               calibration: CalibrationSet | None = None) -> Artifact:
        """Write a float artifact (fp32, or fp16 where the runtime has it) into out_dir.
        `calibration` is there for converters that check their own work on real data."""

    @abstractmethod
    def quantize(
        self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, precision: str,
        out_dir: Path, options: dict,
    ) -> Artifact:
        """Write an integer artifact (`precision`) calibrated on `calibration` into out_dir."""

    @abstractmethod
    def load(self, artifact: Artifact, threads: int) -> Session:
        """A host-side session that computes what the file computes (used for verification)."""

    def runtime_requirements(self) -> list[str]:
        """pip requirement lines a device needs to run this target's artifacts."""
        return [self.runtime]

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(
                f"target {self.name} has no precision {precision!r}; it offers {', '.join(self.precisions)}"
            )

    def new_artifact(self, precision: str, fmt: str, files: list[str], source: SourceModel, **extra) -> Artifact:
        """An unsaved Artifact; the pipeline gives it its id and hashes its files."""
        return Artifact(
            id="",
            target=self.name,
            format=fmt,
            precision=precision,
            files=[FileRecord(path=f) for f in files],
            inputs=[s.model_copy() for s in source.inputs],
            outputs=[s.model_copy() for s in source.outputs],
            **extra,
        )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio; identical outputs give 300 dB (JSON has no infinity)."""
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return 300.0 if noise == 0 else float(10 * np.log10(max(signal, 1e-30) / noise))


BUDGET_KEYS = ("max_accuracy_drop", "min_cosine", "min_top1_agreement")


def int8_budget(reference: np.ndarray, current: np.ndarray, labels: np.ndarray | None, options: dict) -> tuple[bool, dict]:
    """Whether an int8 model's outputs on calibration data meet the accuracy-aware budget: every
    one given of `max_accuracy_drop` (points, when the calibration samples have labels),
    `min_top1_agreement` (with the float model's classes) and `min_cosine` (0.99 if none is given)."""
    measured = {"cosine": cosine(reference, current)}
    checks = []
    drop = options.get("max_accuracy_drop")
    if drop is not None and labels is not None and reference.ndim == 2:
        labels = labels[: len(reference)]
        ref_acc, acc = float((reference.argmax(1) == labels).mean()), float((current.argmax(1) == labels).mean())
        measured |= {"accuracy": acc, "reference_accuracy": ref_acc}
        checks.append((ref_acc - acc) * 100 <= drop)
    agreement = options.get("min_top1_agreement")
    if agreement is not None and reference.ndim == 2:
        measured["top1_agreement"] = float((reference.argmax(1) == current.argmax(1)).mean())
        checks.append(measured["top1_agreement"] >= agreement)
    floor = options.get("min_cosine")
    if floor is not None or not checks:
        checks.append(measured["cosine"] >= (floor if floor is not None else 0.99))
    return all(checks), measured


def accuracy_aware(options: dict) -> bool:
    return any(options.get(k) is not None for k in BUDGET_KEYS)


def median_ms(run, iterations: int = 200) -> float:
    """A quick in-process p50 of `run()`, to compare the all-int8 and mixed models side by side."""
    import time

    for _ in range(10):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def keep_sensitive_in_float(reference: np.ndarray, current, rank_layers, requantize, labels: np.ndarray | None,
                            options: dict, size, latency) -> dict:
    """The accuracy-aware loop both int8 targets share. Layers are ranked once (`rank_layers()`,
    worst first: each layer's cost measured alone); while the budget (`int8_budget`) is missed on
    calibration data, the float set grows to the 1, 2, 4, 8, ... most sensitive layers and
    `requantize(nodes)` rebuilds the int8 model without them. Doubling keeps a model with a
    hundred activations to a handful of rebuilds. Returns what was kept in float and what that
    cost in size and latency."""
    plain_size, plain_ms = size(), latency()
    limit = int(options.get("max_float_layers", 4))
    ranking: list[dict] | None = None
    kept, excluded, history = [], [], []
    steps = max(limit - 1, 0).bit_length() + 2  # at most: 0, 1, 2, 4, ... limit layers in float
    while True:
        met, measured = int8_budget(reference, current(), labels, options)
        history.append({"float_layers": list(kept), **measured})
        report(len(history), steps, f"accuracy-aware: {len(kept)} layer(s) in float, cosine {measured['cosine']:.5f}")
        if met or len(kept) >= limit:
            break
        ranking = ranking if ranking is not None else rank_layers()
        count = min(limit, max(1, 2 * len(kept)), len(ranking))
        if count <= len(kept):
            break
        kept = [r["tensor"] for r in ranking[:count]]
        excluded = list(dict.fromkeys(n for r in ranking[:count] for n in r["nodes"]))
        requantize(excluded)
    return {"budget": {k: options.get(k) for k in BUDGET_KEYS}, "float_tensors": kept,
            "nodes_excluded": excluded, "steps": history, "met": met, "size_bytes_all_int8": plain_size,
            "size_bytes": size(), "p50_ms_all_int8": plain_ms, "p50_ms": latency()}

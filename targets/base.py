"""The interface every target implements, and the model handed to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
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
    # Writes the same ONNX export with every dynamic dimension fixed to 1 (for converters that need it).
    export_static: Callable[[Path], None] | None = None


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

    def declared(self, artifact: Artifact) -> dict:
        """What the model file itself declares, to check a record against it: {"inputs": [...],
        "outputs": [...]} with each tensor's runtime name, shape (None for a dynamic dimension),
        dtype, and int8 scale / zero point where the format stores them; and "numerics": "int8"
        when its weights are integer, "float16" when half, else "float32"."""
        raise NotImplementedError

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


AWARE_KEYS = ("max_accuracy_drop", "min_cosine", "min_top1_agreement")


def numerics_of(precision: str) -> str:
    """The weights' number type a precision implies (what a model file can be checked for)."""
    return {"fp32": "float32", "fp16": "float16"}.get(precision, "int8")


def declared_tensor(name: str, shape, dtype: str, scale: float | None = None, zero_point: int | None = None) -> dict:
    return {"name": name, "shape": [d if isinstance(d, int) and d >= 0 else None for d in shape], "dtype": dtype,
            "scale": scale, "zero_point": zero_point}


def accuracy_aware(options: dict) -> bool:
    return any(options.get(k) is not None for k in AWARE_KEYS)


def calibration_verdict(reference: list[np.ndarray], current: list[np.ndarray], labels: np.ndarray | None,
                        options: dict, names: list[str]) -> tuple[bool, dict]:
    """Whether an int8 model's outputs on calibration data meet the accuracy-aware budget in
    `options` (every output judged, the worst decides; min_cosine 0.99 when no limit is given),
    and the worst figures measured. `options["class_scores"]` names the class-score outputs."""
    from edgeport.metrics import accuracy, judge, output_metrics

    scores = options.get("class_scores") or []
    metrics = [output_metrics(n, r, c, n in scores) for n, r, c in zip(names, reference, current)]
    limits = {k: options.get(k) for k in AWARE_KEYS}
    if all(v is None for v in limits.values()):
        limits["min_cosine"] = 0.99
    scored = next((i for i, n in enumerate(names) if n in scores), None)
    acc = ref_acc = None
    if scored is not None and labels is not None:
        labels = labels[: len(reference[scored])]
        acc, ref_acc = accuracy(current[scored], labels), accuracy(reference[scored], labels)
    misses = judge(metrics, limits, acc, ref_acc)
    measured = {"cosine": min(m.cosine for m in metrics), "worst_output": min(metrics, key=lambda m: m.cosine).name}
    tops = [m.top1_agreement for m in metrics if m.top1_agreement is not None]
    if tops:
        measured["top1_agreement"] = min(tops)
    if acc is not None:
        measured |= {"accuracy": acc, "reference_accuracy": ref_acc}
    return not misses, measured


def worst_sqnr_db(reference: list[np.ndarray], current: list[np.ndarray]) -> float:
    """The lowest SQNR over outputs: a layer's cost is what it does to the output it hurts most."""
    from edgeport.metrics import sqnr_db

    return min(sqnr_db(r, c) for r, c in zip(reference, current))


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


def keep_sensitive_in_float(reference: list[np.ndarray], current, rank_layers, requantize, labels: np.ndarray | None,
                            options: dict, size, latency, names: list[str]) -> dict:
    """The accuracy-aware loop both int8 targets share. Layers are ranked once (`rank_layers()`,
    worst first: each layer's cost measured alone); while the budget (`calibration_verdict`) is
    missed on calibration data, the float set grows to the 1, 2, 4, 8, ... most sensitive layers
    and `requantize(nodes)` rebuilds the int8 model with those compute nodes in float. Doubling
    keeps a model with a hundred activations to a handful of rebuilds. Returns what was kept in
    float and what that cost in size and latency."""
    plain_size, plain_ms = size(), latency()
    limit = int(options.get("max_float_layers", 4))
    ranking: list[dict] | None = None
    kept, excluded, history = [], [], []
    steps = max(limit - 1, 0).bit_length() + 2  # at most: 0, 1, 2, 4, ... limit layers in float
    while True:
        met, measured = calibration_verdict(reference, current(), labels, options, names)
        history.append({"float_layers": list(kept), **measured})
        report(len(history), steps, f"accuracy-aware: {len(kept)} layer(s) in float, cosine {measured['cosine']:.5f}")
        if met or len(kept) >= limit:
            break
        ranking = ranking if ranking is not None else [r for r in rank_layers() if r["nodes"]]
        count = min(limit, max(1, 2 * len(kept)), len(ranking))
        if count <= len(kept):
            break
        kept = [r["tensor"] for r in ranking[:count]]
        excluded = list(dict.fromkeys(n for r in ranking[:count] for n in r["nodes"]))
        requantize(excluded)
    return {"budget": {k: options.get(k) for k in AWARE_KEYS}, "float_tensors": kept,
            "nodes_excluded": excluded, "steps": history, "met": met, "size_bytes_all_int8": plain_size,
            "size_bytes": size(), "p50_ms_all_int8": plain_ms, "p50_ms": latency()}

"""The interface every target implements, and what is handed to it.

A target is one module that owns everything about its runtime: its options (`Options`, the
schema of `[targets.NAME]`), precisions, how it exports and quantizes, how a host session and a
device run its files, its runtime variants (hints, delegates), its int8 sensitivity, its search
axes, what a cache key must add, what a device installs and what a bundle adds. Nothing outside
`targets/` names a runtime; the pipeline asks the target.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeport.errors import ConfigError
from edgeport.metrics import BUDGET_KEYS, Budget
from edgeport.progress import report
from edgeport.types import Artifact, CalibrationSet, DeviceRuntime, FileRecord, TensorSpec, write_text_atomic


@dataclass
class SourceModel:
    """The model as every target may start from it: the ONNX interchange file, or the torch module."""

    onnx_path: Path
    module: Any  # torch.nn.Module in eval mode
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Writes the same ONNX export with every dynamic dimension fixed to 1 (for converters that need it).
    export_static: Callable[[Path], None] | None = None


@dataclass
class QuantizeRequest:
    """What integer quantization is given besides the model: the shared calibration set, the
    outputs an accuracy-aware budget judges top-1 agreement on, a folder where work every
    candidate of a search can share is kept (a layer ranking), and learned int8 ranges if any."""

    calibration: CalibrationSet
    class_scores: list[str] = field(default_factory=list)
    shared: Path | None = None
    # A QDQ ONNX model of the same model with int8 ranges and weights learned by quantization-aware
    # training: a target that can run it builds its int8 from it instead of calibrating.
    learned: Path | None = None

    def shared_result(self, name: str, key: dict, compute):
        """`compute()` once per `key` for every build that asks (JSON, written atomically). Builds
        in parallel workers that ask at once wait for the first: two accuracy-aware candidates of
        one target share one layer ranking, minutes on a real CNN."""
        if self.shared is None:
            return compute()
        import fcntl
        import hashlib
        import json

        path = self.shared / f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if path.is_file():
                return json.loads(path.read_text())
            result = compute()
            write_text_atomic(path, json.dumps(result))
            return result


# What an int8 artifact's options["quantization"]["ranges"] says when the model went through QAT.
LEARNED_RANGES = "learned ranges (QAT)"
RECALIBRATED = "re-calibrated"


def learned_scheme(path: Path, options: TargetOptions) -> dict:
    """The options record of an int8 artifact that is the learned QDQ model (QAT), as trained."""
    scheme = {"format": "QDQ", "ranges": LEARNED_RANGES, "from": f"{path.parent.name}/{path.name}",
              "weights": "int8-symmetric per channel (learned scales)", "activations": "uint8-asymmetric (learned ranges)"}
    if getattr(options, "accuracy_aware", False):
        scheme["note"] = "the accuracy budget keeps no layer in float: the learned ranges are used as trained"
    return scheme


class Session(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds by the runtime's tensor names in, outputs by the runtime's tensor names out."""


class TargetOptions(BaseModel):
    """`[targets.NAME]`: every target's options model derives from this one."""

    model_config = ConfigDict(extra="forbid")

    precisions: list[str] = Field(default_factory=lambda: ["fp32"])

    # Fields that change how an artifact is run, not the file: they never enter a build's cache key.
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def build_options(self) -> dict:
        """The options a build depends on (what its cache key holds)."""
        return self.model_dump(exclude={"precisions", *self.RUNTIME_FIELDS})


class PluginOptions(TargetOptions):
    """A third-party target without an options model: options pass through as given."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class SearchAxes:
    """What `edgeport tune` may vary for this target's int8: the option that holds a calibration
    method and the target's value for each of edgeport's names (minmax, entropy, percentile), and
    whether it can keep sensitive layers in float."""

    method_option: str | None = None
    methods: dict[str, str] = field(default_factory=dict)
    accuracy_aware: bool = False


class Target(ABC):
    """One runtime. Capabilities are class data so listing targets needs no backend import."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra of edgeport that installs it
    runtime: ClassVar[str]  # the module the host imports to run its files
    precisions: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[TargetOptions]] = PluginOptions
    # On a device: (module, pip package) alternatives, the first that imports wins.
    device_modules: ClassVar[tuple[tuple[str, str], ...]] = ()
    # In a bundle's manifest: the runtime an app needs.
    bundle_runtime: ClassVar[dict] = {}
    # A native benchmark tool on phones (a key of the adb profile), used when the phone has no Python.
    phone_benchmark: ClassVar[str | None] = None
    float_precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")

    # --- building

    @abstractmethod
    def export(self, source: SourceModel, precision: str, out_dir: Path, options: TargetOptions,
               calibration: CalibrationSet | None = None) -> Artifact:
        """Write a float artifact (fp32, or fp16 where the runtime has it) into out_dir.
        `calibration` is there for converters that check their own work on real data."""

    @abstractmethod
    def quantize(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, precision: str,
                 out_dir: Path, options: TargetOptions) -> Artifact:
        """Write an integer artifact (`precision`) calibrated on `request.calibration` into out_dir."""

    def cache_extras(self, precision: str, options: TargetOptions, calibration: CalibrationSet) -> dict:
        """What else a build's cache key must hold (a converter that checks its work on data
        depends on that data)."""
        return {}

    # --- running on the host

    @abstractmethod
    def load(self, artifact: Artifact, threads: int) -> Session:
        """A host-side session that computes what the file computes (used for verification)."""

    def declared(self, artifact: Artifact) -> dict:
        """What the model file itself declares, to check a record against it: {"inputs": [...],
        "outputs": [...]} with each tensor's runtime name, shape (None for a dynamic dimension),
        dtype, and int8 scale / zero point where the format stores them; and "numerics": "int8"
        when its weights are integer, "float16" when half, "float32", or None where the format
        does not say."""
        raise NotImplementedError(f"target {self.name} cannot read back what its files declare")

    def runtime_variants(self, options: TargetOptions) -> list[dict]:
        """The runtime settings each benchmark runs with (one result per variant)."""
        return [{}]

    # --- int8 tools

    def offers_sensitivity(self, artifact: Artifact) -> bool:
        """Whether `sensitivity` can rank this artifact's layers."""
        return False

    def sensitivity(self, float_artifact: Artifact, artifact: Artifact, calibration: CalibrationSet) -> list[dict]:
        """Per-layer int8 sensitivity of an int8 artifact against its fp32 parent, worst first:
        each quantized tensor's cost to the output (its SQNR when only it is quantized)."""
        return []

    def search_axes(self) -> SearchAxes:
        return SearchAxes()

    # --- devices and bundles

    @staticmethod
    def device_loader():
        """A function `load(path, threads, options, shapes)` that the self-contained on-device
        runner calls (its source is shipped to the device, so it may import only the standard
        library, numpy and this runtime). It returns a dict: version, ran (settings that ran),
        set_inputs(feeds by runtime name), invoke() -> outputs by runtime name, and optionally
        clock() (the runtime's own latency of the last call, ms)."""
        raise NotImplementedError

    @staticmethod
    def example_loader():
        """A function `load(path)` for a bundle's example.py, returning run(feeds) -> outputs
        (both by the runtime's names); standard library, numpy and this runtime only."""
        raise NotImplementedError

    def bundle_extras(self, artifact: Artifact, manifest: dict, folder: Path) -> None:
        """Add what an app on this runtime needs beyond the model and example.py."""

    def phone_inputs(self, artifact: Artifact, samples: dict[str, np.ndarray]) -> dict[str, bytes]:
        """One sample per input as raw bytes keyed by the name `phone_benchmark` knows the tensor by."""
        return {}

    def device_runtime(self) -> DeviceRuntime:
        """What the device layer needs to run this target's artifacts."""
        return DeviceRuntime(name=self.name, loader=function_source(self.device_loader),
                             modules=list(self.device_modules), phone_benchmark=self.phone_benchmark)

    # --- shared helpers

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


def function_source(function) -> str:
    """The source of a self-contained function (a device loader, an example loader), dedented,
    renamed to what the runner and the example call."""
    import textwrap

    text = textwrap.dedent(inspect.getsource(function))
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("@")]
    return "\n".join(lines).replace(f"def {function.__name__}(", "def load(", 1) + "\n"


@contextlib.contextmanager
def quiet(log: Path | None = None):
    """Converters (TensorFlow, absl, onnx2tf, ExecuTorch) write to the process's stdout/stderr
    from C++ as well as Python: send both file descriptors to `log` (kept beside the artifact)
    unless -v."""
    if logging.getLogger("edgeport").isEnabledFor(logging.INFO):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log or os.devnull, "ab") as sink, contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.write((out.getvalue() + err.getvalue()).encode())


def example_args(source: SourceModel, batch: int = 1):
    """Zeros of the source's input shapes and dtypes (what a converter traces with)."""
    import torch

    return tuple(torch.zeros(s.concrete_shape(batch), dtype=getattr(torch, s.dtype)) for s in source.inputs)


def numerics_of(precision: str) -> str:
    """The weights' number type a precision implies (what a model file can be checked for)."""
    return {"fp32": "float32", "fp16": "float16"}.get(precision, "int8")


def declared_tensor(name: str, shape, dtype: str, scale: float | None = None, zero_point: int | None = None) -> dict:
    return {"name": name, "shape": [d if isinstance(d, int) and d >= 0 else None for d in shape], "dtype": dtype,
            "scale": scale, "zero_point": zero_point}


# --- accuracy-aware int8, shared by the targets that can keep layers in float

AWARE_KEYS = BUDGET_KEYS


class AwareOptions(BaseModel):
    """Accuracy-aware int8 options, for targets that can keep sensitive layers in float."""

    max_accuracy_drop: float | None = Field(None, ge=0, description="accuracy-aware int8: keep the most sensitive "
                                            "layers in float until int8 is within this many points on labelled "
                                            "calibration data (else min_cosine, default 0.99, decides)")
    min_cosine: float | None = Field(None, gt=0, le=1, description="accuracy-aware int8: output cosine floor")
    min_top1_agreement: float | None = Field(None, gt=0, le=1, description="accuracy-aware int8: share of "
                                             "calibration samples whose top class matches the float model's")
    min_confident_top1_agreement: float | None = Field(None, gt=0, le=1, description=(
        "accuracy-aware int8: that share among the samples the float model gives its top class p >= 0.5"))
    max_float_layers: int = Field(4, ge=0, description="accuracy-aware: at most this many layers kept in float")

    @property
    def budget(self) -> Budget:
        return Budget(**{k: getattr(self, k) for k in AWARE_KEYS})

    @property
    def accuracy_aware(self) -> bool:
        return bool(self.budget.limits)

    def without_budget(self) -> dict:
        """The build options an accuracy-aware loop's budget does not change (a shared ranking's key)."""
        return {k: v for k, v in self.build_options().items() if k not in (*AWARE_KEYS, "max_float_layers")}


def calibration_verdict(reference: list[np.ndarray], current: list[np.ndarray], labels: np.ndarray | None,
                        budget: Budget, names: list[str], scores: list[str]) -> tuple[bool, dict]:
    """Whether an int8 model's outputs on calibration data meet an accuracy-aware budget (every
    output judged, the worst decides; min_cosine 0.99 when no limit is given), and the worst
    figures measured."""
    from edgeport.metrics import accuracy, output_metrics

    metrics = [output_metrics(n, r, c, n in scores) for n, r, c in zip(names, reference, current)]
    limits = budget if budget.limits else Budget(min_cosine=0.99)
    scored = next((i for i, n in enumerate(names) if n in scores), None)
    acc = ref_acc = None
    if scored is not None and labels is not None:
        labels = labels[: len(reference[scored])]
        acc, ref_acc = accuracy(current[scored], labels), accuracy(reference[scored], labels)
    # a confident budget with no confident calibration sample is not met: nothing would stay float
    misses = limits.misses(metrics, acc, ref_acc, strict=limits.min_confident_top1_agreement is not None)
    measured = {"cosine": min(m.cosine for m in metrics), "worst_output": min(metrics, key=lambda m: m.cosine).name}
    tops = [m.top1_agreement for m in metrics if m.top1_agreement is not None]
    if tops:
        measured["top1_agreement"] = min(tops)
    confident = [m.confident_top1_agreement for m in metrics if m.confident_top1_agreement is not None]
    if confident:
        measured["confident_top1_agreement"] = min(confident)
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


@dataclass
class AwareLoop:
    """The accuracy-aware loop's inputs: the float model's outputs on calibration data and ways to
    get the current int8 model's outputs, rank layers, rebuild with compute nodes in float, and
    measure size and latency."""

    reference: list[np.ndarray]
    current: Callable[[], list[np.ndarray]]
    rank_layers: Callable[[], list[dict]]
    requantize: Callable[[list[str]], None]
    size: Callable[[], int]
    latency: Callable[[], float]
    names: list[str]


def keep_sensitive_in_float(loop: AwareLoop, options: AwareOptions, request: QuantizeRequest) -> dict:
    """The accuracy-aware loop the int8 targets share. Layers are ranked once (worst first: each
    layer's cost measured alone); while the budget is missed on calibration data, the float set
    grows to the 1, 2, 4, 8, ... most sensitive layers and the model is rebuilt with those compute
    nodes in float. Doubling keeps a model with a hundred activations to a handful of rebuilds.
    Returns what was kept in float and what that cost in size and latency."""
    plain_size, plain_ms = loop.size(), loop.latency()
    limit = options.max_float_layers
    ranking: list[dict] | None = None
    kept, excluded, history = [], [], []
    steps = max(limit - 1, 0).bit_length() + 2  # at most: 0, 1, 2, 4, ... limit layers in float
    while True:
        met, measured = calibration_verdict(loop.reference, loop.current(), request.calibration.labels,
                                            options.budget, loop.names, request.class_scores)
        history.append({"float_layers": list(kept), **measured})
        report(len(history), steps, f"accuracy-aware: {len(kept)} layer(s) in float, cosine {measured['cosine']:.5f}")
        if met or len(kept) >= limit:
            break
        ranking = ranking if ranking is not None else [r for r in loop.rank_layers() if r["nodes"]]
        count = min(limit, max(1, 2 * len(kept)), len(ranking))
        if count <= len(kept):
            break
        kept = [r["tensor"] for r in ranking[:count]]
        excluded = list(dict.fromkeys(n for r in ranking[:count] for n in r["nodes"]))
        loop.requantize(excluded)
    return {"budget": options.budget.model_dump(include=set(AWARE_KEYS)), "float_tensors": kept, "nodes_excluded": excluded, "steps": history, "met": met,
            "size_bytes_all_int8": plain_size, "size_bytes": loop.size(), "p50_ms_all_int8": plain_ms,
            "p50_ms": loop.latency()}

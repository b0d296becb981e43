"""Records that flow between stages. `targets`, `calibration` and `devices` share only these."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from edgeport.errors import ArtifactIntegrityError

TENSOR_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
Precision = Literal["fp32", "fp16", "int8", "int8-dynamic", "full-int8", "mixed"]
Layout = Literal["NCHW", "NHWC", "none"]
Dim = int | str  # a string names a dynamic dimension ("batch")


class TensorSpec(BaseModel):
    """One input or output. `name` is always the user's name; the other fields describe the
    tensor as the runtime holds it, and `runtime_name` / `source_dtype` say how that differs
    from the model the user gave (every consumer maps tensors by name through this record)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[Dim]
    dtype: str = "float32"
    layout: Layout = "none"
    scale: float | None = None  # int8 IO only
    zero_point: int | None = None
    # How this tensor's axes come from the source model's: tensor = source.transpose(source_axes).
    source_axes: list[int] | None = None
    # The runtime's own name when it differs (a TFLite signature key such as "args_0").
    runtime_name: str | None = None
    # The model's dtype when the runtime's differs (TFLite takes int64 token ids as int32).
    source_dtype: str | None = None

    @field_validator("dtype", "source_dtype")
    @classmethod
    def known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in TENSOR_DTYPES:
            from edgeport.errors import did_you_mean

            raise ValueError(f"dtype {value!r} is not one of {', '.join(TENSOR_DTYPES)}{did_you_mean(value, TENSOR_DTYPES)}")
        return value

    @property
    def key(self) -> str:
        """What the runtime calls this tensor."""
        return self.runtime_name or self.name

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype).kind in "iu" and bool(self.scale)

    def from_source(self, array: np.ndarray) -> np.ndarray:
        """A source-layout array as this tensor takes it: transposed, then quantized for int8 IO
        or cast (int64 ids -> int32)."""
        if self.source_axes:
            array = array.transpose(self.source_axes)
        if self.quantized:
            info = np.iinfo(self.dtype)
            array = np.clip(np.round(array / self.scale) + self.zero_point, info.min, info.max)
        return np.ascontiguousarray(array.astype(self.dtype))

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """This tensor's values in the source model's layout: dequantized to float32 for int8 IO,
        else in the model's own dtype."""
        array = np.asarray(array)
        if self.quantized:
            array = (array.astype(np.float32) - self.zero_point) * self.scale
        elif self.source_dtype:
            array = array.astype(self.source_dtype)
        if self.source_axes:
            array = array.transpose(np.argsort(self.source_axes))
        return array

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension set to `batch`."""
        return tuple(d if isinstance(d, int) else batch for d in self.shape)

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and isinstance(self.shape[0], str)


class FileRecord(BaseModel):
    path: str  # relative to the artifact folder
    sha256: str = ""  # filled by Artifact.save
    size_bytes: int = 0


def deflated(*members: bytes) -> int:
    """Bytes of `members` in one zip archive (deflate, level 9): what a download or an app store ships."""
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i, data in enumerate(members):
            z.writestr(str(i), data)
    return len(packed.getvalue())


def zip_bytes(*paths: Path) -> int:
    """Zip-deflated size of a model's files (clustered or sparse weights shrink it; raw size does not show it)."""
    return deflated(*(Path(p).read_bytes() for p in paths))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def artifact_name(target: str, precision: str, variant: str | None, sep: str = "/") -> str:
    """target/precision[/variant], how artifacts are labelled; with sep "-", their run folder's name."""
    return sep.join(filter(None, [target, precision, variant]))


class Artifact(BaseModel):
    """What an export or quantize step wrote, saved as artifact.json beside its files."""

    schema_version: int = 1
    id: str
    target: str
    format: str
    precision: Precision
    converter: str | None = None
    variant: str | None = None  # e.g. the calibration method when a run compares several
    files: list[FileRecord] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: dict = Field(default_factory=dict)  # quantization scheme, runtime hints
    provenance: dict = Field(default_factory=dict)  # stage, parent, config hash, tool versions

    _root: Path | None = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        if self._root is None:
            raise ValueError("artifact has no folder yet")
        return self._root

    @property
    def main_file(self) -> Path:
        return self.root / self.files[0].path

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def label(self) -> str:
        return artifact_name(self.target, self.precision, self.variant)

    @property
    def slug(self) -> str:
        """The artifact's name in the run folder: target-precision[-variant]."""
        return artifact_name(self.target, self.precision, self.variant, "-")

    def save(self, folder: Path) -> Artifact:
        """Hash every listed file (main model file first) and write artifact.json into `folder`."""
        self.files = [
            FileRecord(path=f.path, sha256=sha256_file(folder / f.path), size_bytes=(folder / f.path).stat().st_size)
            for f in self.files
        ]
        self._root = folder
        write_text_atomic(folder / "artifact.json", self.model_dump_json(indent=2))
        return self

    @classmethod
    def load(cls, folder: Path | str) -> Artifact:
        """Read artifact.json and re-check every file's sha256; a mismatch is an error."""
        folder = Path(folder)
        meta = folder / "artifact.json"
        if not meta.is_file():
            raise ArtifactIntegrityError(f"{folder}: no artifact.json here; is this an artifact folder?")
        try:
            artifact = cls.model_validate_json(meta.read_bytes())
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ArtifactIntegrityError(
                f"{meta} is truncated or not an artifact record ({where}: {first['msg']}); rebuild the artifact "
                "(edgeport export, or run --rebuild)") from e
        if not artifact.files:
            raise ArtifactIntegrityError(f"{meta} lists no files; rebuild the artifact (edgeport export, or run --rebuild)")
        for record in artifact.files:
            parts = Path(record.path).parts
            if not parts or Path(record.path).is_absolute() or ".." in parts:
                raise ArtifactIntegrityError(f"{meta} names a file outside its folder ({record.path!r}); an "
                                             "artifact's files are relative paths inside it: rebuild the artifact")
            path = folder / record.path
            if not path.is_file():
                raise ArtifactIntegrityError(f"{path}: file listed in artifact.json is missing")
            found = sha256_file(path)
            if found != record.sha256:
                raise ArtifactIntegrityError(
                    f"{path}: sha256 mismatch (recorded {record.sha256[:12]}…, found {found[:12]}…); "
                    "the file was changed after it was written: delete the folder or re-run with --rebuild"
                )
        artifact._root = folder
        return artifact


class OutputMetrics(BaseModel):
    """One output of an artifact against PyTorch's on the same samples (edgeport.metrics)."""

    name: str
    samples: int = 0
    max_abs: float
    cosine: float  # mean over samples of each sample's cosine (of the input-dependent part when `centred`)
    cosine_min: float | None = None  # the worst sample's
    cosine_global: float | None = None  # all samples as one vector, raw values
    sqnr_db: float
    top1_agreement: float | None = None  # class-score outputs only
    top1_interval: list[float] | None = None  # its 95% Wilson interval: what this many samples can tell
    confident_top1_agreement: float | None = None  # on samples PyTorch gives its top class p >= 0.5
    confident_top1_interval: list[float] | None = None  # its 95% Wilson interval
    confident_samples: int | None = None  # how many those are
    input_dependence: float | None = None  # share of the reference's energy that varies with the input
    centred: bool = False  # judged on outputs minus the reference's mean (it hardly varies)


class VerifyReport(BaseModel):
    artifact_id: str
    target: str
    precision: str
    samples: int
    outputs: list[OutputMetrics]
    accuracy: float | None = None  # fraction in [0, 1]
    reference_accuracy: float | None = None
    scores_output: str | None = None  # the class-score output accuracy was measured on
    passed: bool
    failures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    tolerances: dict = Field(default_factory=dict)

    @property
    def cosine(self) -> float:
        """The worst output's mean per-sample cosine."""
        return min(o.cosine for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @property
    def confident_output(self) -> OutputMetrics | None:
        """The class-score output with the lowest agreement on confident samples."""
        measured = [o for o in self.outputs if o.confident_top1_agreement is not None]
        return min(measured, key=lambda o: o.confident_top1_agreement) if measured else None

    @property
    def confident_top1_agreement(self) -> float | None:
        return self.confident_output and self.confident_output.confident_top1_agreement

    def summary(self) -> dict:
        """The flat form report.json carries: the worst output for each figure, and every output."""
        mins = [o.cosine_min for o in self.outputs if o.cosine_min is not None]
        confident = self.confident_output
        return {
            "passed": self.passed,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "cosine": self.cosine,
            "cosine_min": min(mins) if mins else None,
            "max_abs": max(o.max_abs for o in self.outputs),
            "sqnr_db": min(o.sqnr_db for o in self.outputs),
            "top1_agreement": self.top1_agreement,
            "top1_interval": next((o.top1_interval for o in self.outputs if o.top1_agreement == self.top1_agreement
                                   and o.top1_interval), None),
            "confident_top1_agreement": confident and confident.confident_top1_agreement,
            "confident_top1_interval": confident and confident.confident_top1_interval,
            "confident_samples": confident and confident.confident_samples,
            "worst_output": min(self.outputs, key=lambda o: o.cosine).name,
            "samples": self.samples,
            "failures": self.failures,
            "warnings": self.warnings,
            "outputs": [o.model_dump() for o in self.outputs],
        }


class BenchResult(BaseModel):
    device: str
    runtime: str
    runtime_version: str
    threads: int
    iterations: int
    warmup: int
    batch: int = 1
    min_ms: float
    p50_ms: float | None  # None only where a device's own tool does not report it (benchmark_model < TF 2.13)
    p90_ms: float | None  # benchmark_model reports p5/median/p95, not p90/p99: left empty, not made up
    p99_ms: float | None
    mean_ms: float
    std_ms: float
    p50_per_process_ms: list[float | None] = Field(default_factory=list)  # [bench] processes > 1: each one's p50
    throughput_per_s: float
    load_ms: float
    first_ms: float
    peak_rss_mb: float
    model_size_bytes: int
    options: dict = Field(default_factory=dict)  # runtime settings that ran (e.g. precision hint)
    device_facts: dict = Field(default_factory=dict)
    # Verification of the same artifact run on this device (accuracy, cosine, top-1 vs PyTorch).
    device_verify: dict | None = None


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


class CalibrationSet(BaseModel):
    """Preprocessed samples in model layout, one array per input with the sample axis first.

    The same set quantizes every target, so targets are compared fairly. `labels`
    exist for evaluation sets of labelled data.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str
    seed: int
    digest: str = ""  # content hash, the cache key of everything quantized from it
    path: str | None = None  # the .npz it was saved as, once saved

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int):
        """Feed dicts of up to `size` samples."""
        for start in range(0, len(self), size):
            yield {name: array[start : start + size] for name, array in self.inputs.items()}

    def samples(self):
        """Feed dicts of one sample each (batch dimension kept)."""
        return self.batches(1)


class DeviceRuntime(BaseModel):
    """What a device needs from a target to run its artifacts, handed to the device layer (which
    names no runtime): the source of the target's loader for the runner, the modules to import
    (and the pip packages that provide them), and a native benchmark tool for phones without Python."""

    name: str
    loader: str
    modules: list[tuple[str, str]]
    phone_benchmark: str | None = None

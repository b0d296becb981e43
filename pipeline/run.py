"""`edgeport run`: load -> export -> calibrate -> quantize -> verify -> bench -> report, each stage cached."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeport import targets
from edgeport.calibration import build_sets, load_set, save_set
from edgeport.devices.profiles import DeviceProfile
from edgeport.devices.transport import Device
from edgeport.errors import (
    ArtifactIntegrityError, ConfigError, DataError, DeviceError, DeviceUnreachableError, EdgeportError, did_you_mean,
)
from edgeport.pipeline.config import PRECISIONS, BenchDevice, RunConfig, to_toml
from edgeport.pipeline.interchange import OPSET, export_onnx
from edgeport.pipeline.model_loading import LoadedModel, load_model
from edgeport.pipeline.stages import Event, Listener, Stages, key_hash, tool_versions
from edgeport.metrics import accuracy
from edgeport.pipeline.verify import compare, reference_outputs, session_outputs
from edgeport.targets.base import SourceModel
from edgeport.types import Artifact, BenchResult, CalibrationSet, VerifyReport, sha256_file, write_text_atomic

STEPS = ("export", "quantize", "verify", "bench", "report")
FLOAT_PRECISIONS = ("fp32", "fp16")
BENCH_SAMPLES = 32  # held-out samples each benchmark cycles through
PRECISION_ORDER = ("fp32", "fp16", "int8-dynamic", "int8", "full-int8", "mixed")


def precision_rank(precision: str) -> int:
    return PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)


@dataclass(frozen=True)
class Planned:
    """One artifact the config asks for."""

    target: str
    precision: str
    options: dict = field(default_factory=dict, hash=False, compare=False)
    variant: str | None = None

    @property
    def label(self) -> str:
        return f"{self.target}/{self.precision}" + (f"/{self.variant}" if self.variant else "")

    @property
    def slug(self) -> str:
        return f"{self.target}-{self.precision}" + (f"-{self.variant}" if self.variant else "")


@dataclass
class ArtifactResult:
    artifact: Artifact | None  # None when it could not be built (see `error`)
    verify: VerifyReport | None = None
    bench: list[BenchResult] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)  # per-layer int8 error, worst first
    planned: Planned | None = None
    error: str | None = None  # one line: why a stage of this artifact failed
    log: str | None = None  # where its traceback is, relative to the run folder
    bench_errors: list[str] = field(default_factory=list)  # one line per device that could not measure it
    warnings: list[str] = field(default_factory=list)  # what failed without failing the artifact

    @property
    def label(self) -> str:
        return self.artifact.label if self.artifact else self.planned.label

    @property
    def target(self) -> str:
        return self.artifact.target if self.artifact else self.planned.target

    @property
    def precision(self) -> str:
        return self.artifact.precision if self.artifact else self.planned.precision

    @property
    def variant(self) -> str | None:
        return self.artifact.variant if self.artifact else self.planned.variant


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    artifacts: list[ArtifactResult]
    baseline_bench: list[BenchResult] = field(default_factory=list)
    reference_accuracy: float | None = None
    built: list[str] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    compression: list[dict] = field(default_factory=list)
    model_info: dict = field(default_factory=dict)
    bundles: list[Path] = field(default_factory=list)
    search: dict | None = None  # `edgeport tune`: every candidate and the choice

    @property
    def failures(self) -> list[str]:
        """Every artifact that could not be built, verified or benchmarked, or failed verification."""
        found = []
        for r in self.artifacts:
            if r.error:
                found.append(f"{r.label}: {r.error}" + (f" (log: {self.run_dir / r.log})" if r.log else ""))
            found += [f"{r.label}: {f}" for f in (r.verify.failures if r.verify else [])]
            found += [f"{r.label}: {e}" for e in r.bench_errors]
        return found


def content_hash(path: Path | None) -> str | None:
    """A file's sha256, or for a folder the hash of every file's name and content (the cache key of data)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return sha256_file(path)
    import hashlib

    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(p.relative_to(path).as_posix().encode() + bytes.fromhex(sha256_file(p)))
    return digest.hexdigest()


def threads_of(config: RunConfig) -> int:
    return config.bench.threads or os.cpu_count() or 1


def check_precisions(wanted: list[str], configured: dict[str, list[str]]) -> None:
    """Each precision asked for (export -p) is known and built by one of the chosen targets."""
    built = sorted({p for ps in configured.values() for p in ps}, key=precision_rank)
    for p in wanted:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}{did_you_mean(p, PRECISIONS)}; precisions: {', '.join(PRECISIONS)}")
        if p not in built:
            raise ConfigError(f"no chosen target builds {p}: their [targets.X] precisions are {', '.join(built)}; "
                              "add it there or ask for one of those")


class Run:
    """One execution of a config; the pieces are methods so that the CLI's single-stage commands reuse them."""

    def __init__(self, config: RunConfig, on_event: Listener | None = None, rebuild: bool = False):
        from edgeport.pipeline.preflight import preflight

        self.config = config
        self.run_dir = config.run_dir
        preflight(config)  # a missing file or an unknown device fails before any work
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {self.run_dir}: {e.strerror}; set runs_dir "
                              "(or --runs-dir) to a folder you can write") from e
        self.emit = on_event or (lambda event: None)
        self.stages = Stages(self.run_dir, self.emit, rebuild)
        self.versions = tool_versions()
        self._original: LoadedModel | None = None
        self._model: LoadedModel | None = None
        self._reference = None
        self.compression: list[dict] = []
        self.compressed_path: Path | None = None
        self._devices: dict[str, Device] = {}

    # --- load, interchange, data

    @property
    def original(self) -> LoadedModel:
        """The model as the user gave it."""
        if self._original is None:
            self.emit(Event("start", "load", self.config.model.source))
            started = time.perf_counter()
            self._original = load_model(self.config.model, self.config.base_dir)
            self.emit(Event("done", "load", self.config.model.source, seconds=time.perf_counter() - started))
        return self._original

    @property
    def model(self) -> LoadedModel:
        """The model every target exports: the original after the [[compress]] steps."""
        if self._model is None:
            if self.config.compress:
                from edgeport.pipeline.compress.chain import run_chain

                self._model, self.compression, self.compressed_path = run_chain(self)
            else:
                self._model = self.original
        return self._model

    def interchange(self) -> SourceModel:
        model = self.model
        key = {"model": model.digest, "inputs": [s.model_dump() for s in model.inputs],
               "outputs": [s.name for s in model.outputs], "opset": OPSET, "versions": self.versions}
        def build(folder: Path) -> None:
            with contextlib.redirect_stdout(sys.stderr):
                export_onnx(model, folder / "model.onnx")

        path = self.stages.folder("export", "interchange", key, build,
                                  lambda d: d / "model.onnx")
        return SourceModel(onnx_path=path, module=model.module, inputs=model.inputs, outputs=model.outputs,
                           export_static=lambda target: export_onnx(model, target, static_batch=True))

    def data(self) -> tuple[CalibrationSet, CalibrationSet]:
        data = self.config.data
        path = self.config.resolve_path(data.path) if data.path else None
        eval_path = self.config.resolve_path(data.eval_path) if data.eval_path else None
        preprocessing = data.preprocessing or self.config.model.preprocessing
        key = {"data": data.model_dump(), "content": [content_hash(p) for p in (path, eval_path)],
               "preprocessing": preprocessing.model_dump() if preprocessing else None,
               "inputs": [s.model_dump() for s in self.config.model.inputs]}

        def build(folder: Path) -> None:
            calib, evaluation = build_sets(
                data.source, self.config.model.inputs, data.calibration_samples, data.eval_samples, data.seed, path,
                preprocessing=preprocessing.model_dump() if preprocessing else None, function=data.function,
                eval_path=eval_path, base_dir=self.config.base_dir, eval_function=data.eval_function,
            )
            save_set(calib, folder / "calibration.npz")
            save_set(evaluation, folder / "evaluation.npz")

        return self.stages.folder("calibrate", "calibration", key, build,
                                  lambda d: (load_set(d / "calibration.npz"), load_set(d / "evaluation.npz")))

    # --- artifacts

    def plan(self, only_targets: list[str] | None = None, only_precisions: list[str] | None = None) -> list[Planned]:
        """Every configured (target, precision[, calibration method]); fp32 first as int8's parent.
        Fails on a missing runtime or an unknown precision before any work."""
        names = only_targets or list(self.config.targets)
        for name in names:
            targets.info(name)
        check_precisions(only_precisions or [], {name: self.config.target_options(name).precisions for name in names})
        plugins = {name: targets.get(name) for name in names}  # fail on a missing runtime before any work
        planned: list[Planned] = []
        for name, target in plugins.items():
            options = self.config.target_options(name)
            wanted = [p for p in options.precisions if not only_precisions or p in only_precisions]
            for p in wanted:
                target.check_precision(p)
            for precision in sorted(wanted, key=precision_rank):
                base = options.model_dump(exclude={"precisions", "hint", "performance_hint", "streams"})
                methods = base.get("calibration_method")
                # A list of calibration methods builds one int8 artifact each, compared side by side.
                if precision not in FLOAT_PRECISIONS and isinstance(methods, list) and len(methods) > 1:
                    planned += [Planned(name, precision, {**base, "calibration_method": m}, m) for m in methods]
                else:
                    if isinstance(methods, list):
                        base["calibration_method"] = methods[0]
                    planned.append(Planned(name, precision, base))
        return planned

    def artifacts(self, only_targets: list[str] | None = None, only_precisions: list[str] | None = None) -> list[Artifact]:
        """Every planned artifact, built or from the cache; the first failure raises."""
        return [self.build(p.target, p.precision, p.options, p.variant) for p in self.plan(only_targets, only_precisions)]

    def isolated(self, result: ArtifactResult, stage: str, work, *, device: str | None = None,
                 passthrough: tuple[type[Exception], ...] = ()):
        """Run one artifact's stage; a failure is recorded on `result` (one line, and the traceback
        in logs/) instead of ending the run: one crash never loses the other targets' work.
        Exceptions of the `passthrough` types are the caller's to handle."""
        try:
            return work()
        except passthrough:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one artifact: record it, go on
            import traceback

            reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            if not isinstance(e, EdgeportError):
                reason = f"{e.__class__.__name__}: {reason}"
            log = Path("logs") / f"{result.planned.slug if result.planned else result.label}.{stage}.log"
            (self.run_dir / log).parent.mkdir(parents=True, exist_ok=True)
            (self.run_dir / log).write_text("".join(traceback.format_exception(e)))
            line = f"{stage} failed{' on ' + device if device else ''}: {reason}"
            if stage == "bench":
                result.bench_errors.append(line + f" (log: {self.run_dir / log})")
            elif stage == "sensitivity":
                result.warnings.append(line + f" (log: {self.run_dir / log})")
            else:
                result.error, result.log = line, str(log)
            self.emit(Event("warning", stage, result.label, detail=f"{result.label}: {line} (log: {self.run_dir / log})"))
            return None

    def build_planned(self, planned: Planned) -> ArtifactResult:
        result = ArtifactResult(None, planned=planned)
        # A tampered file in the run folder is the run's problem (exit 2: delete it or --rebuild), not the target's.
        result.artifact = self.isolated(result, "build", lambda: self.build(planned.target, planned.precision,
                                                                             planned.options, planned.variant),
                                        passthrough=(ArtifactIntegrityError,))
        return result

    def class_scores(self) -> list[str]:
        """The outputs that hold class scores: those the config names, else the first output when it
        is [batch, classes] and there are labels (in the data, or a labels file) to say so."""
        if self.config.model.class_scores is not None:
            return list(self.config.model.class_scores)
        first = self.original.outputs[0]  # the compressed model's outputs are the same
        if len(first.shape) != 2 or not isinstance(first.shape[1], int) or first.shape[1] < 2:
            return []
        classes, labels = first.shape[1], self.data()[1].labels
        if self.config.model.labels:
            return [first.name] if len(self.labels()) == classes else []
        # Labels in the data say so when they fit: ids below the width, covering most of it (an
        # embedding evaluated with digit labels is 64 wide for 10 classes: not class scores).
        fits = labels is not None and labels.max() < classes and len(np.unique(labels)) > classes / 2
        return [first.name] if fits else []

    def build(self, name: str, precision: str, options: dict, variant: str | None = None) -> Artifact:
        """One artifact of target `name` (cached): a float export, or an integer one quantized
        from the fp32 export (built first when needed) with `options`."""
        target = targets.get(name)
        source = self.interchange()
        calibration = self.data()[0]
        if precision in FLOAT_PRECISIONS:
            float_options = {k: v for k, v in options.items() if k == "converter"}
            key = {"stage": "export", "parent": sha256_file(source.onnx_path), "target": name,
                   "precision": precision, "options": float_options, "versions": self.versions,
                   # only converters that look at data (onnx2tf checks its layout choices) depend on it
                   "calibration": calibration.digest if options.get("converter") == "onnx2tf" else None}
            return self._build(f"{name}-{precision}", key,
                               lambda d: target.export(source, precision, d, options, calibration))
        parent = self.build(name, "fp32", options)
        options = {**options, "class_scores": self.class_scores()}  # what accuracy-aware int8 judges
        key = {"stage": "quantize", "parent": parent.id, "calibration": calibration.digest,
               "precision": precision, "options": options, "versions": self.versions}
        slug = f"{name}-{precision}" + (f"-{variant}" if variant else "")
        return self._build(slug, key, lambda d: target.quantize(source, parent, calibration, precision, d, options),
                           stage="quantize", variant=variant)

    def _build(self, label: str, key: dict, make, stage: str = "export", variant: str | None = None) -> Artifact:
        artifact_id = key_hash(key)[:16]

        def build(folder: Path) -> None:
            with contextlib.redirect_stdout(sys.stderr):  # converters print progress; stdout is the user's
                artifact = make(folder)
            artifact.id = artifact_id
            artifact.variant = variant
            artifact.provenance = {"stage": stage, "parent": key["parent"], "config_hash": key_hash(key["options"]),
                                   "tool_versions": self.versions}
            artifact.save(folder)

        return self.stages.folder(stage, f"artifacts/{label}", key, build, Artifact.load)

    # --- verify and bench

    def verify(self, artifact: Artifact) -> VerifyReport:
        evaluation = self.data()[1]
        tolerance = self.config.verify.tolerance(artifact.precision)
        scores = self.class_scores()
        key = {"artifact": artifact.id, "files": [f.sha256 for f in artifact.files], "model": self.model.digest,
               "io": [s.model_dump() for s in (*artifact.inputs, *artifact.outputs)], "scores": scores,
               "evaluation": evaluation.digest, "tolerance": tolerance.model_dump(), "versions": self.versions}

        def compute() -> dict:
            reference = self.reference(evaluation)
            session = targets.get(artifact.target).load(artifact, threads_of(self.config))
            outputs = session_outputs(session, evaluation, artifact, self.config.verify.batch)
            report = compare(artifact, reference, outputs, evaluation.labels, tolerance.model_dump(), scores)
            report.failures += accuracy_aware_misses(artifact, report)
            report.passed = not report.failures
            return report.model_dump()

        report = self.stages.record("verify", f"verify/{artifact.slug}.json", key, compute)
        return VerifyReport.model_validate(report)

    def sensitivity(self, artifact: Artifact) -> list[dict]:
        """Per-layer int8 sensitivity (ONNX Runtime and OpenVINO int8 artifacts), worst first; cached."""
        if artifact.target not in ("onnxruntime", "openvino") or artifact.precision != "int8":
            return []
        import importlib

        layer_sensitivity = importlib.import_module(f"edgeport.targets.{artifact.target}").layer_sensitivity
        parent = Artifact.load(self.run_dir / "artifacts" / f"{artifact.target}-fp32")
        calibration = self.data()[0]
        key = {"artifact": artifact.id, "parent": parent.id, "calibration": calibration.digest, "versions": self.versions}
        result = self.stages.record("verify", f"sensitivity/{artifact.slug}.json", key, lambda: {
            "layers": layer_sensitivity(parent.main_file, artifact.main_file, calibration)})
        return result["layers"]

    def reference(self, evaluation: CalibrationSet):
        if self._reference is None:
            self._reference = model_outputs(self.model, evaluation, self.config.verify.batch)
            self.save_samples(evaluation, self._reference)
        return self._reference

    def save_samples(self, evaluation: CalibrationSet, reference: list, count: int = 2) -> None:
        """A few held-out inputs with PyTorch's outputs for them: bundles ship these so that
        `example.py --self-test` (and `package verify`) run the app's own feeding path."""
        arrays = {name: array[:count] for name, array in evaluation.inputs.items()}
        arrays |= {f"expected:{spec.name}": out[:count] for spec, out in zip(self.model.outputs, reference)}
        path = self.run_dir / "verify" / "samples.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".samples.{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def reference_accuracy(self) -> float | None:
        """Held-out accuracy of the original model (the baseline row), on the first class-score output."""
        evaluation = self.data()[1]
        scores = self.class_scores()
        if evaluation.labels is None or not scores:
            return None
        original = self.original
        key = {"model": original.digest, "evaluation": evaluation.digest, "scores": scores}

        def compute() -> dict:
            outputs = self.reference(evaluation) if original is self.model else model_outputs(
                original, evaluation, self.config.verify.batch)
            index = [s.name for s in original.outputs].index(scores[0])
            return {"accuracy": accuracy(outputs[index], evaluation.labels)}

        return self.stages.record("verify", "verify/pytorch-fp32.json", key, compute)["accuracy"]

    def labels(self) -> list[str] | None:
        """Class names from model.labels, one per line."""
        if not self.config.model.labels:
            return None
        path = self.config.resolve_path(self.config.model.labels)
        if not path.is_file():
            raise ConfigError(f"model.labels file not found: {path}")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def model_info(self) -> dict:
        """What a bundle's manifest says about the model."""
        m = self.config.model
        return {"name": m.name or self.config.name, "version": m.version, "source": m.source,
                "sha256": self.model.digest, "labels": self.labels(), "class_scores": self.class_scores(),
                "state": dict(m.state), "preprocessing": m.preprocessing.model_dump() if m.preprocessing else None}

    def bench_settings(self) -> dict:
        b = self.config.bench
        return {"iterations": b.iterations, "min_seconds": b.min_seconds, "warmup": b.warmup, "threads": threads_of(self.config)}

    def bench_devices(self) -> list[tuple[BenchDevice, DeviceProfile]]:
        """[[bench.devices]] with their profiles; none configured = this machine."""
        entries = self.config.bench.devices or [BenchDevice(name="local", verify=False)]
        return [(entry, self.profile(entry.name)) for entry in entries]

    def profile(self, name: str) -> DeviceProfile:
        """A device profile: the built-ins and those in [devices] dir."""
        from edgeport.devices.profiles import get_profile

        folder = self.config.resolve_path(self.config.devices.dir) if self.config.devices.dir else None
        return get_profile(name, folder)

    def device(self, profile: DeviceProfile) -> Device:
        """One open connection per device for the whole run (an SSH master is reused)."""
        if profile.name not in self._devices:
            from edgeport.devices.transport import open_device

            self._devices[profile.name] = open_device(profile)
        return self._devices[profile.name]

    def close(self) -> None:
        for device in self._devices.values():
            device.close()
        self._devices.clear()

    def __enter__(self) -> Run:
        """Hold the run folder (a second process is refused, naming this one's pid) until exit,
        which also closes device connections. Workers of a search use a Run without holding it."""
        from edgeport.pipeline.lock import run_lock

        self._exit = contextlib.ExitStack()
        self._exit.enter_context(run_lock(self.run_dir))
        self._exit.callback(self.close)
        return self

    def __exit__(self, *exc) -> None:
        self._exit.__exit__(*exc)

    def runtime_variants(self, artifact: Artifact) -> list[dict]:
        """The runtime settings each benchmark of this artifact runs with (OpenVINO: one per hint)."""
        if artifact.target == "openvino":
            ov = self.config.target_options("openvino")
            return [{"hint": h, "performance_hint": ov.performance_hint, "streams": ov.streams} for h in ov.hint]
        if artifact.target == "tflite":
            return [{"xnnpack": self.config.target_options("tflite").xnnpack}]
        return [{}]

    def bench(self, result: ArtifactResult, down: dict[str, str] | None = None) -> list[BenchResult]:
        """Every configured device (and runtime variant) for one artifact. A device that cannot be
        reached is recorded in `down` and not tried again for the next artifacts."""
        artifact, down = result.artifact, down if down is not None else {}
        measured = []
        for entry, profile in self.bench_devices():
            if profile.runtimes and artifact.target not in profile.runtimes:
                self.emit(Event("warning", "bench", detail=f"{artifact.label} not measured on {profile.name}: its "
                                f"profile lists runtimes {', '.join(profile.runtimes)}"))
                continue
            if profile.name in down:
                result.bench_errors.append(f"not measured on {profile.name}: {down[profile.name]}")
                continue
            for options in self.runtime_variants(artifact):
                try:
                    bench = self.isolated(result, "bench", lambda: self.bench_on(entry, profile, artifact, options),
                                          device=profile.name, passthrough=(DeviceUnreachableError,))
                except DeviceUnreachableError as e:
                    down[profile.name] = str(e)
                    result.bench_errors.append(f"bench failed on {profile.name}: {e}")
                    self.emit(Event("warning", "bench", artifact.label, detail=f"{artifact.label}: {e}"))
                    break
                if bench is not None:
                    measured.append(bench)
        return measured

    def bench_on(self, entry: BenchDevice, profile: DeviceProfile, artifact: Artifact, options: dict) -> BenchResult:
        """One cached benchmark of one artifact on one device, with on-device verification for
        devices other than this machine."""
        from edgeport.devices.local import RUNNER
        from edgeport.devices.remote import measure

        is_local = profile.transport == "local"
        threads = threads_of(self.config) if is_local else (entry.threads if entry.threads is not None else profile.threads)
        settings = {**self.bench_settings(), "threads": threads, "options": options}
        samples = 0 if is_local or not entry.verify else self.config.bench.device_verify_samples
        evaluation = self.data()[1]
        key = {"artifact": artifact.id, "settings": settings, "device": profile.model_dump(exclude={"description"}),
               "runner": sha256_file(RUNNER), "versions": self.versions, "inputs": evaluation.digest,
               "verify": samples}

        def compute() -> dict:
            inputs = {name: array[:samples] for name, array in evaluation.inputs.items()} if samples else None
            result = measure(self.device(profile), artifact, settings, self.bench_samples(), inputs)
            outputs = result.pop("verify_outputs", None)
            if outputs is not None:
                reference = [r[:samples] for r in self.reference(evaluation)]
                labels = evaluation.labels[:samples] if evaluation.labels is not None else None
                tolerance = self.config.verify.tolerance(artifact.precision)
                result["device_verify"] = compare(artifact, reference, outputs, labels, tolerance.model_dump(),
                                                  self.class_scores()).summary()
            return result

        suffix = f"-{options['hint']}" if "hint" in options else ""
        folder = f"bench/{profile.name}"
        try:
            result = self.stages.record("bench", f"{folder}/{artifact.slug}{suffix}.json", key, compute)
        except DeviceError as e:
            kept = len(list((self.run_dir / folder).glob("*.json")))
            raise DeviceError(f"{e}. {kept} result(s) already measured on {profile.name} are kept in "
                              f"{self.run_dir / folder}; a re-run measures only the rest") from e
        return BenchResult.model_validate(result)

    def bench_samples(self) -> dict:
        """What every benchmark feeds: the first held-out samples (by input name, source layout),
        cycled; never random values, which mean nothing to a model that looks up token ids."""
        return {name: array[: BENCH_SAMPLES] for name, array in self.data()[1].inputs.items()}

    def bench_baseline(self) -> list[BenchResult]:
        import sys

        from edgeport.devices import local

        evaluation = self.data()[1]
        request = {"model": self.config.model.model_dump(mode="json"), "base_dir": str(self.config.base_dir),
                   "samples": str((self.run_dir / "calibration" / "evaluation.npz").resolve()), "count": BENCH_SAMPLES,
                   **self.bench_settings()}
        key = {"model": self.original.digest, "settings": self.bench_settings(), "versions": self.versions,
               "runner": sha256_file(local.RUNNER), "inputs": evaluation.digest}
        result = self.stages.record("bench", "bench/local/pytorch-fp32.json", key,
                                    lambda: local.run_json([sys.executable, "-m", "edgeport.pipeline.torch_bench"], request, 600))
        return [BenchResult.model_validate(result)]


def model_outputs(model: LoadedModel, dataset: CalibrationSet, batch: int) -> list:
    """The PyTorch model's outputs on a data set; a model that fails on the data is a data problem."""
    try:
        return reference_outputs(model.module, dataset, model.inputs, batch)
    except Exception as e:  # noqa: BLE001 - torch raises IndexError, RuntimeError, ... for bad samples
        last = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        hint = " (token ids outside the vocabulary?)" if "index out of range" in last else ""
        raise DataError(f"{dataset.source}: the PyTorch model fails on these samples: {last}{hint}") from e


def accuracy_aware_misses(artifact: Artifact, report: VerifyReport) -> list[str]:
    """An accuracy-aware int8 artifact must meet its budget on calibration data (where the loop
    judged it) and on held-out data (where it matters); say so when it did not."""
    from edgeport.metrics import judge

    aware = artifact.options.get("quantization", {}).get("accuracy_aware")
    if not aware:
        return []
    budget = {k: v for k, v in aware["budget"].items() if v is not None}
    misses = []
    if not aware["met"]:
        last = aware["steps"][-1]
        misses.append(f"accuracy-aware int8 did not meet {budget} on calibration data with "
                      f"{len(aware['float_tensors'])} layer(s) in float (max_float_layers; worst output "
                      f"{last.get('worst_output')!r}, cosine {last['cosine']:.5f})")
    misses += [f"accuracy-aware budget missed on held-out data: {m}"
               for m in judge(report.outputs, budget, report.accuracy, report.reference_accuracy)]
    return misses


def run(config: RunConfig, on_event: Listener | None = None, rebuild: bool = False, until: str = "report") -> RunResult:
    """Execute the pipeline up to `until` (one of STEPS); every finished stage is reused on the next call."""
    if until not in STEPS:
        raise EdgeportError(f"unknown stage {until!r}; stages: {', '.join(STEPS)}")
    with Run(config, on_event, rebuild) as job:
        return run_stages(job, config, until)


def run_stages(job: Run, config: RunConfig, until: str) -> RunResult:
    """Every artifact through every stage up to `until`. An artifact whose build, verification or
    benchmark fails is recorded with its reason (and traceback in logs/) and the others go on:
    the report shows its row as an error, and the exit code says that something failed."""
    write_text_atomic(job.run_dir / "config.resolved.toml", to_toml(config))
    if STEPS.index(until) >= STEPS.index("bench"):
        job.bench_devices()  # an unknown device or a bad profile fails before any work
    planned = job.plan()
    # What every target shares (model, export, data): a problem there is the whole run's, not one target's.
    job.interchange(), job.data(), job.class_scores()
    results = [job.build_planned(p) for p in planned]
    outcome = RunResult(config, job.run_dir, results, compression=job.compression)
    built = [r for r in results if r.artifact is not None]
    if STEPS.index(until) >= STEPS.index("verify"):
        outcome.reference_accuracy = job.reference_accuracy()
        for r in built:
            r.verify = job.isolated(r, "verify", lambda r=r: job.verify(r.artifact))
            r.sensitivity = job.isolated(r, "sensitivity", lambda r=r: job.sensitivity(r.artifact)) or []
    if STEPS.index(until) >= STEPS.index("bench"):
        if config.bench.baseline:
            outcome.baseline_bench = job.bench_baseline()
        down: dict[str, str] = {}
        timed = [r for r in built if r.error is None]  # verification failures too: the table shows what they cost
        job.emit(Event("progress", "bench", "artifacts", total=len(timed)))
        for done, r in enumerate(timed, 1):
            r.bench = job.bench(r, down)
            job.emit(Event("progress", "bench", "artifacts", r.label, total=len(timed), done=done))
    if until == "report":
        from edgeport.pipeline.package import package
        from edgeport.pipeline.report import write_reports

        outcome.model_info = job.model_info()
        outcome.reports = write_reports(outcome)
        if config.package.enabled and any(r.verify and r.verify.passed for r in results):
            job.emit(Event("start", "package", "bundles"))
            outcome.bundles = package(job.run_dir, precisions=config.package.precisions)
            job.emit(Event("done", "package", "bundles"))
    outcome.built = job.stages.built
    return outcome

"""`edgeport run`: load -> export -> calibrate -> quantize -> verify -> bench -> report, each stage cached."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeport import targets
from edgeport.calibration import build_sets, load_set, save_set
from edgeport.devices.profiles import DeviceProfile
from edgeport.devices.transport import Device
from edgeport.errors import ConfigError, DeviceError, EdgeportError, did_you_mean
from edgeport.pipeline.config import PRECISIONS, BenchDevice, RunConfig, to_toml
from edgeport.pipeline.interchange import OPSET, export_onnx
from edgeport.pipeline.model_loading import LoadedModel, load_model
from edgeport.pipeline.stages import Event, Listener, Stages, key_hash, tool_versions
from edgeport.pipeline.verify import compare, reference_outputs, session_outputs
from edgeport.targets.base import SourceModel
from edgeport.types import Artifact, BenchResult, CalibrationSet, VerifyReport, sha256_file, write_text_atomic

STEPS = ("export", "quantize", "verify", "bench", "report")
FLOAT_PRECISIONS = ("fp32", "fp16")
PRECISION_ORDER = ("fp32", "fp16", "int8-dynamic", "int8", "full-int8", "mixed")


def precision_rank(precision: str) -> int:
    return PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)


@dataclass
class ArtifactResult:
    artifact: Artifact
    verify: VerifyReport | None = None
    bench: list[BenchResult] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)  # per-layer int8 error, worst first


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
        return [f"{r.artifact.label}: {f}" for r in self.artifacts if r.verify for f in r.verify.failures]


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
        return SourceModel(onnx_path=path, module=model.module, inputs=model.inputs, outputs=model.outputs)

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
                eval_path=eval_path, base_dir=self.config.base_dir,
            )
            save_set(calib, folder / "calibration.npz")
            save_set(evaluation, folder / "evaluation.npz")

        return self.stages.folder("calibrate", "calibration", key, build,
                                  lambda d: (load_set(d / "calibration.npz"), load_set(d / "evaluation.npz")))

    # --- artifacts

    def artifacts(self, only_targets: list[str] | None = None, only_precisions: list[str] | None = None) -> list[Artifact]:
        """Every configured (target, precision), built or taken from the cache; fp32 first as int8's parent."""
        names = only_targets or list(self.config.targets)
        for name in names:
            targets.info(name)
        check_precisions(only_precisions or [], {name: self.config.target_options(name).precisions for name in names})
        plugins = {name: targets.get(name) for name in names}  # fail on a missing runtime before any work
        made: list[Artifact] = []
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
                    made += [self.build(name, precision, {**base, "calibration_method": m}, variant=m) for m in methods]
                else:
                    if isinstance(methods, list):
                        base["calibration_method"] = methods[0]
                    made.append(self.build(name, precision, base))
        return made

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
        key = {"artifact": artifact.id, "files": [f.sha256 for f in artifact.files], "model": self.model.digest,
               "io": [s.model_dump() for s in (*artifact.inputs, *artifact.outputs)],
               "evaluation": evaluation.digest, "tolerance": tolerance.model_dump(), "versions": self.versions}

        def compute() -> dict:
            reference = self.reference(evaluation)
            session = targets.get(artifact.target).load(artifact, threads_of(self.config))
            outputs = session_outputs(session, evaluation, self.model.inputs, artifact, self.config.verify.batch)
            return compare(artifact, reference, outputs, evaluation.labels, tolerance).model_dump()

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
            self._reference = reference_outputs(self.model.module, evaluation, self.model.inputs, self.config.verify.batch)
        return self._reference

    def reference_accuracy(self) -> float | None:
        """Held-out accuracy of the original model (the baseline row)."""
        from edgeport.pipeline.verify import accuracy

        evaluation = self.data()[1]
        if evaluation.labels is None:
            return None
        original = self.original
        key = {"model": original.digest, "evaluation": evaluation.digest}

        def compute() -> dict:
            if original is self.model:
                outputs = self.reference(evaluation)
            else:
                outputs = reference_outputs(original.module, evaluation, original.inputs, self.config.verify.batch)
            return {"accuracy": accuracy(outputs[0], evaluation.labels)}

        return self.stages.record("verify", "verify/pytorch-fp32.json", key, compute)["accuracy"]

    def model_info(self) -> dict:
        """What a bundle's manifest says about the model."""
        m = self.config.model
        labels = None
        if m.labels:
            path = self.config.resolve_path(m.labels)
            if not path.is_file():
                raise ConfigError(f"model.labels file not found: {path}")
            labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return {"name": m.name or self.config.name, "version": m.version, "source": m.source,
                "sha256": self.model.digest, "labels": labels,
                "preprocessing": m.preprocessing.model_dump() if m.preprocessing else None}

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

    def bench(self, artifact: Artifact) -> list[BenchResult]:
        targets.get(artifact.target)  # one line naming the extra when the runtime is missing
        results = []
        for entry, profile in self.bench_devices():
            if profile.runtimes and artifact.target not in profile.runtimes:
                self.emit(Event("warning", "bench", detail=f"{artifact.label} not measured on {profile.name}: its "
                                f"profile lists runtimes {', '.join(profile.runtimes)}"))
                continue
            for options in self.runtime_variants(artifact):
                results.append(self.bench_on(entry, profile, artifact, options))
        return results

    def bench_on(self, entry: BenchDevice, profile: DeviceProfile, artifact: Artifact, options: dict) -> BenchResult:
        """One cached benchmark of one artifact on one device, with on-device verification for
        devices other than this machine."""
        from edgeport.devices.local import RUNNER
        from edgeport.devices.remote import measure

        is_local = profile.transport == "local"
        threads = threads_of(self.config) if is_local else (entry.threads if entry.threads is not None else profile.threads)
        settings = {**self.bench_settings(), "threads": threads, "options": options}
        samples = 0 if is_local or not entry.verify else self.config.bench.device_verify_samples
        evaluation = self.data()[1] if samples else None
        key = {"artifact": artifact.id, "settings": settings, "device": profile.model_dump(exclude={"description"}),
               "runner": sha256_file(RUNNER), "versions": self.versions,
               "verify": [samples, evaluation.digest if evaluation else None]}

        def compute() -> dict:
            inputs = None
            if evaluation is not None:
                inputs = {a.name: a.from_source(evaluation.inputs[s.name][:samples])
                          for s, a in zip(self.model.inputs, artifact.inputs)}
            result = measure(self.device(profile), artifact, settings, inputs)
            outs = result.pop("verify_outputs", None)
            if outs is not None:
                outputs = [a.to_source(o) for a, o in zip(artifact.outputs, outs)]
                reference = [r[:samples] for r in self.reference(evaluation)]
                labels = evaluation.labels[:samples] if evaluation.labels is not None else None
                tolerance = self.config.verify.tolerance(artifact.precision)
                result["device_verify"] = compare(artifact, reference, outputs, labels, tolerance).summary()
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

    def bench_baseline(self) -> list[BenchResult]:
        import sys

        from edgeport.devices import local

        request = {"model": self.config.model.model_dump(mode="json"), "base_dir": str(self.config.base_dir),
                   **self.bench_settings()}
        key = {"model": self.original.digest, "settings": self.bench_settings(), "versions": self.versions,
               "runner": sha256_file(local.RUNNER)}
        result = self.stages.record("bench", "bench/local/pytorch-fp32.json", key,
                                    lambda: local.run_json([sys.executable, "-m", "edgeport.pipeline.torch_bench"], request, 600))
        return [BenchResult.model_validate(result)]


def run(config: RunConfig, on_event: Listener | None = None, rebuild: bool = False, until: str = "report") -> RunResult:
    """Execute the pipeline up to `until` (one of STEPS); every finished stage is reused on the next call."""
    if until not in STEPS:
        raise EdgeportError(f"unknown stage {until!r}; stages: {', '.join(STEPS)}")
    with Run(config, on_event, rebuild) as job:
        return run_stages(job, config, until)


def run_stages(job: Run, config: RunConfig, until: str) -> RunResult:
    write_text_atomic(job.run_dir / "config.resolved.toml", to_toml(config))
    if STEPS.index(until) >= STEPS.index("bench"):
        job.bench_devices()  # an unknown device or a bad profile fails before any work
    results = [ArtifactResult(a) for a in job.artifacts()]
    outcome = RunResult(config, job.run_dir, results, compression=job.compression)
    if STEPS.index(until) >= STEPS.index("verify"):
        outcome.reference_accuracy = job.reference_accuracy()
        for r in results:
            r.verify = job.verify(r.artifact)
            r.sensitivity = job.sensitivity(r.artifact)
    if STEPS.index(until) >= STEPS.index("bench"):
        if config.bench.baseline:
            outcome.baseline_bench = job.bench_baseline()
        for r in results:
            if r.verify is None or r.verify.passed:  # a failed export is not worth timing
                r.bench = job.bench(r.artifact)
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

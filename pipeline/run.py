"""`edgeport run`: one straight line of stages over typed records,

    load -> compress -> export -> build (export/quantize) -> verify -> bench -> report -> package,

each a function that takes records and returns records (pipeline/data.py, reference.py,
build.py, verify.py, benchmark.py, report.py, package.py), cached in the run folder. An
artifact whose build, verification or benchmark fails is recorded with its reason (and its
traceback in logs/) and the others go on: the report shows its row as an error and
`RunResult.raise_for_failures()` raises VerificationError (exit code 3) naming it.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeport import targets
from edgeport.errors import ArtifactIntegrityError, ConfigError, DeviceError, DeviceUnreachableError, EdgeportError
from edgeport.errors import VerificationError
from edgeport.pipeline.benchmark import BenchService
from edgeport.pipeline.build import Planned, build, float_parent, plan, sensitivity
from edgeport.pipeline.config import BenchDevice, RunConfig, to_toml
from edgeport.pipeline.data import DataSets, load_data
from edgeport.pipeline.interchange import OPSET, export_onnx
from edgeport.pipeline.model_loading import LoadedModel, load_model
from edgeport.pipeline.reference import Reference, compute_reference
from edgeport.pipeline.stages import Event, Listener, code_hash
from edgeport.pipeline.verify import compare, verify
from edgeport.pipeline.workspace import Workspace
from edgeport.targets.base import SourceModel
from edgeport.types import Artifact, BenchResult, VerifyReport, sha256_file, write_text_atomic

STEPS = ("export", "quantize", "verify", "bench", "report")
BENCH_SAMPLES = 32  # held-out samples each benchmark cycles through


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

    def raise_for_failures(self) -> RunResult:
        """This result, or VerificationError (exit code 3) naming every failure; the result rides along."""
        if self.failures:
            raise VerificationError(self.failures, result=self)
        return self


def isolated(ws: Workspace, result: ArtifactResult, stage: str, work, *, device: str | None = None,
             passthrough: tuple[type[Exception], ...] = ()):
    """Run one artifact's stage; a failure is recorded on `result` (one line, and the traceback
    in logs/) instead of ending the run: one crash never loses the other targets' work.
    Exceptions of the `passthrough` types are the caller's to handle."""
    try:
        return work()
    except passthrough:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one artifact: record it, go on
        reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        if not isinstance(e, EdgeportError):
            reason = f"{e.__class__.__name__}: {reason}"
        log = Path("logs") / f"{result.planned.slug if result.planned else result.artifact.slug}.{stage}.log"
        (ws.run_dir / log).parent.mkdir(parents=True, exist_ok=True)
        (ws.run_dir / log).write_text("".join(traceback.format_exception(e)))
        line = f"{stage} failed{' on ' + device if device else ''}: {reason}"
        where = f" (log: {ws.run_dir / log})"
        if stage == "bench":
            result.bench_errors.append(line + where)
        elif stage == "sensitivity":
            result.warnings.append(line + where)
        else:
            result.error, result.log = line, str(log)
        ws.emit(Event("warning", stage, result.label, detail=f"{result.label}: {line}{where}"))
        return None


# --- the stages the run composes


def load_original(ws: Workspace) -> LoadedModel:
    """The model as the user gave it."""
    return ws.timed("load", ws.config.model.source, lambda: load_model(ws.config.model, ws.config.base_dir))


def export_interchange(ws: Workspace, model: LoadedModel) -> SourceModel:
    """The one ONNX export every target may start from (cached)."""
    key = {"model": model.digest, "inputs": [s.model_dump() for s in model.inputs],
           "outputs": [s.name for s in model.outputs], "opset": OPSET, "versions": ws.versions,
           "code": code_hash("edgeport.pipeline.interchange")}

    def build_file(folder: Path) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            export_onnx(model, folder / "model.onnx")

    path = ws.stages.folder("export", "interchange", key, build_file, lambda d: d / "model.onnx")
    return SourceModel(onnx_path=path, module=model.module, inputs=model.inputs, outputs=model.outputs,
                       export_static=lambda target: export_onnx(model, target, static_batch=True))


def bench_samples(data: DataSets) -> dict[str, np.ndarray]:
    """What every benchmark feeds: the first held-out samples (by input name, source layout),
    cycled; never random values, which mean nothing to a model that looks up token ids."""
    return {name: array[:BENCH_SAMPLES] for name, array in data.evaluation.inputs.items()}


def bench_devices(config: RunConfig, service: BenchService) -> list[tuple[BenchDevice, object]]:
    """[[bench.devices]] with their profiles; none configured = this machine."""
    entries = config.bench.devices or [BenchDevice(name="local", verify=False)]
    return [(entry, service.profile(entry.name)) for entry in entries]


def round_suffix(round_: int | None) -> str:
    """The stage file suffix of one of several interleaved measurements."""
    return f"-round{round_}" if round_ is not None else ""


def bench_on(ws: Workspace, service: BenchService, entry: BenchDevice, profile, artifact: Artifact, options: dict,
             data: DataSets, reference: Reference, round_: int | None = None) -> BenchResult:
    """One cached benchmark of one artifact on one device with one runtime variant; devices other
    than this machine also run held-out samples and are compared with PyTorch there. `round_`
    names one of several interleaved measurements (cached one by one)."""
    from edgeport.devices.local import RUNNER

    samples = 0 if profile.transport == "local" or not entry.verify else ws.config.bench.device_verify_samples
    evaluation = data.evaluation
    key = {"artifact": artifact.id, "settings": {**service.request(profile, entry.threads), "options": options},
           "device": profile.model_dump(exclude={"description"}), "runner": sha256_file(RUNNER),
           "versions": ws.versions, "inputs": evaluation.digest, "verify": samples,
           "code": code_hash("edgeport.pipeline.benchmark", "edgeport.devices.remote",
                             targets.info(artifact.target).path.split(":")[0]), "round": round_}

    def compute() -> dict:
        inputs = {name: array[:samples] for name, array in evaluation.inputs.items()} if samples else None
        result = service.measure(artifact, profile, options, bench_samples(data), inputs, entry.threads)
        outputs = result.pop("verify_outputs", None)
        if outputs is not None:
            labels = evaluation.labels[:samples] if evaluation.labels is not None else None
            tolerance = ws.config.verify.tolerance(artifact.precision)
            result["device_verify"] = compare(artifact, [r[:samples] for r in reference.outputs], outputs, labels,
                                              tolerance, reference.class_scores).summary()
        return result

    suffix = (f"-{options['hint']}" if "hint" in options else "") + round_suffix(round_)
    folder = f"bench/{profile.name}"
    try:
        result = ws.stages.record("bench", f"{folder}/{artifact.slug}{suffix}.json", key, compute)
    except DeviceError as e:
        kept = len(list((ws.run_dir / folder).glob("*.json")))
        raise type(e)(f"{e}. {kept} result(s) already measured on {profile.name} are kept in "
                      f"{ws.run_dir / folder}; a re-run measures only the rest") from e
    return BenchResult.model_validate(result)


def bench_artifact(ws: Workspace, service: BenchService, result: ArtifactResult, data: DataSets, reference: Reference,
                   down: dict[str, str]) -> list[BenchResult]:
    """Every configured device (and runtime variant) for one artifact. A device that cannot be
    reached is recorded in `down` and not tried again for the next artifacts."""
    artifact = result.artifact
    target = targets.get(artifact.target)
    variants = target.runtime_variants(ws.config.target_options(artifact.target))
    measured = []
    for entry, profile in bench_devices(ws.config, service):
        if profile.runtimes and artifact.target not in profile.runtimes:
            ws.emit(Event("warning", "bench", detail=f"{artifact.label} not measured on {profile.name}: its "
                          f"profile lists runtimes {', '.join(profile.runtimes)}"))
            continue
        if profile.name in down:
            result.bench_errors.append(f"not measured on {profile.name}: {down[profile.name]}")
            continue
        for options in variants:
            try:
                bench = isolated(ws, result, "bench", lambda: bench_on(ws, service, entry, profile, artifact, options,
                                                                       data, reference),
                                 device=profile.name, passthrough=(DeviceUnreachableError,))
            except DeviceUnreachableError as e:
                down[profile.name] = str(e)
                result.bench_errors.append(f"bench failed on {profile.name}: {e}")
                ws.emit(Event("warning", "bench", artifact.label, detail=f"{artifact.label}: {e}"))
                break
            if bench is not None:
                measured.append(bench)
    return measured


def bench_baseline(ws: Workspace, service: BenchService, original: LoadedModel, data: DataSets,
                   round_: int | None = None) -> list[BenchResult]:
    """PyTorch eager fp32 on this machine, through the same service (cached; `round_` as in bench_on)."""
    from edgeport.devices import local

    request = service.request(service.profile("local"))
    key = {"model": original.digest, "settings": request, "versions": ws.versions, "runner": sha256_file(local.RUNNER),
           "inputs": data.evaluation.digest, "code": code_hash("edgeport.pipeline.torch_bench"), "round": round_}
    result = ws.stages.record("bench", f"bench/local/pytorch-fp32{round_suffix(round_)}.json", key, lambda: service.torch_eager(
        ws.config.model.model_dump(mode="json"), ws.config.base_dir, data.evaluation_file, BENCH_SAMPLES))
    return [BenchResult.model_validate(result)]


def model_info(config: RunConfig, model: LoadedModel, reference: Reference) -> dict:
    """What a bundle's manifest says about the model."""
    from edgeport.pipeline.reference import labels_of

    m = config.model
    return {"name": m.name or config.name, "version": m.version, "source": m.source, "sha256": model.digest,
            "labels": labels_of(config), "class_scores": reference.class_scores, "state": dict(m.state),
            "preprocessing": m.preprocessing.model_dump() if m.preprocessing else None}


@dataclass
class Prepared:
    """What every target shares: the model (compressed), its ONNX export, the data and the reference."""

    original: LoadedModel
    model: LoadedModel
    source: SourceModel
    data: DataSets
    reference: Reference
    compression: list[dict]
    compressed_path: Path | None


def prepare(ws: Workspace, service: BenchService) -> Prepared:
    """load -> data -> compress -> export -> reference. A problem here is the whole run's."""
    from edgeport.pipeline.compress.chain import compress_model
    from edgeport.pipeline.reference import class_scores

    original = load_original(ws)
    data = load_data(ws)
    compressed = compress_model(ws, original, data, service, class_scores(ws.config, original, data))
    source = export_interchange(ws, compressed.model)
    reference = compute_reference(ws, original, compressed.model, data)
    return Prepared(original, compressed.model, source, data, reference, compressed.rows, compressed.path)


def build_planned(ws: Workspace, prepared: Prepared, planned: Planned) -> ArtifactResult:
    """One planned artifact, isolated. A tampered file in the run folder is the run's problem
    (exit 2: delete it or --rebuild), not the target's."""
    result = ArtifactResult(None, planned=planned)
    result.artifact = isolated(ws, result, "build", lambda: build(ws, prepared.source, prepared.data, planned,
                                                                  prepared.reference.class_scores),
                               passthrough=(ArtifactIntegrityError,))
    return result


def run(config: RunConfig, on_event: Listener | None = None, rebuild: bool = False, until: str = "report") -> RunResult:
    """Execute the pipeline up to `until` (one of STEPS); every finished stage is reused on the next call."""
    from edgeport.pipeline.lock import run_lock

    if until not in STEPS:
        raise ConfigError(f"unknown stage {until!r}; stages: {', '.join(STEPS)}")
    ws = Workspace.open(config, on_event, rebuild)
    with run_lock(ws.run_dir), BenchService.of(config) as service:
        return run_stages(ws, service, until)


def run_stages(ws: Workspace, service: BenchService, until: str) -> RunResult:
    config = ws.config
    write_text_atomic(ws.run_dir / "config.resolved.toml", to_toml(config))
    planned = plan(config)
    if STEPS.index(until) >= STEPS.index("bench"):
        bench_devices(config, service)  # an unknown device or a bad profile fails before any work
    prepared = prepare(ws, service)
    results = [build_planned(ws, prepared, p) for p in planned]
    outcome = RunResult(config, ws.run_dir, results, compression=prepared.compression)
    built = [r for r in results if r.artifact is not None]
    if STEPS.index(until) >= STEPS.index("verify"):
        outcome.reference_accuracy = prepared.reference.accuracy
        for r in built:
            r.verify = isolated(ws, r, "verify", lambda r=r: verify(ws, r.artifact, prepared.reference, prepared.data))
            r.sensitivity = isolated(ws, r, "sensitivity", lambda r=r: sensitivity(
                ws, r.artifact, float_parent(ws, prepared.source, prepared.data, r.planned,
                                             prepared.reference.class_scores), prepared.data)) or []
    if STEPS.index(until) >= STEPS.index("bench"):
        if config.bench.baseline:
            outcome.baseline_bench = bench_baseline(ws, service, prepared.original, prepared.data)
        down: dict[str, str] = {}
        timed = [r for r in built if r.error is None]  # verification failures too: the table shows what they cost
        ws.emit(Event("progress", "bench", "artifacts", total=len(timed)))
        for done, r in enumerate(timed, 1):
            r.bench = bench_artifact(ws, service, r, prepared.data, prepared.reference, down)
            ws.emit(Event("progress", "bench", "artifacts", r.label, total=len(timed), done=done))
    if until == "report":
        from edgeport.pipeline.package import package
        from edgeport.pipeline.report import write_reports

        outcome.model_info = model_info(config, prepared.model, prepared.reference)
        outcome.reports = write_reports(outcome)
        if config.package.enabled and any(r.verify and r.verify.passed for r in results):
            ws.emit(Event("start", "package", "bundles"))
            outcome.bundles = package(ws.run_dir, precisions=config.package.precisions)
            ws.emit(Event("done", "package", "bundles"))
    outcome.built = ws.stages.built
    return outcome


def export(config: RunConfig, only_targets: list[str] | None = None, only_precisions: list[str] | None = None,
           on_event: Listener | None = None) -> list[Artifact]:
    """Build (or take from the cache) the configured artifacts; the first failure raises."""
    from edgeport.pipeline.lock import run_lock

    ws = Workspace.open(config, on_event)
    planned = plan(config, only_targets, only_precisions)
    with run_lock(ws.run_dir), BenchService.of(config) as service:
        prepared = prepare(ws, service)
        return [build(ws, prepared.source, prepared.data, p, prepared.reference.class_scores) for p in planned]


def verify_artifacts(config: RunConfig, artifacts: list[Artifact], on_event: Listener | None = None) -> list[VerifyReport]:
    """Compare artifacts (hashes checked when loaded) with the config's PyTorch model on held-out data."""
    ws = Workspace.open(config, on_event)
    with BenchService.of(config) as service:
        prepared = prepare(ws, service)
        return [verify(ws, a, prepared.reference, prepared.data) for a in artifacts]


def compress_only(config: RunConfig, on_event: Listener | None = None):
    """The [[compress]] steps alone: the compressed model's program and one row per step."""
    from edgeport.pipeline.compress.chain import compress_model
    from edgeport.pipeline.lock import run_lock
    from edgeport.pipeline.reference import class_scores

    if not config.compress:
        raise ConfigError(f"{config.name}: no [[compress]] steps to run")
    ws = Workspace.open(config, on_event)
    with run_lock(ws.run_dir), BenchService.of(config) as service:
        original = load_original(ws)
        data = load_data(ws)
        return compress_model(ws, original, data, service, class_scores(config, original, data))

"""`edgeport tune`: find, for one device, the fastest (or smallest) artifact that still meets an
accuracy budget on held-out data.

Candidates are targets x precisions x calibration methods x accuracy-aware fallback (on/off).
Each is built and verified through the same cached stages as `edgeport run` (so a re-run
builds nothing new), in waves that prune what cannot succeed:

1. float exports, in this process: an integer candidate whose fp32 parent fails verification
   is not built;
2. plain int8 candidates, in parallel (a process pool or Ray);
3. accuracy-aware candidates, in parallel, only where the plain int8 model of the same target
   and method missed the budget (else the fallback would keep nothing in float);
4. benchmarks, one at a time per device, of the candidates that passed verification: those
   within the budget compete; those outside it are timed too, so the latency Pareto front shows
   what the budget costs. A candidate that failed verification is never benchmarked.
"""

from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from edgeport import targets
from edgeport.errors import ConfigError
from edgeport.pipeline.config import RunConfig, parse
from edgeport.pipeline.run import FLOAT_PRECISIONS, ArtifactResult, Planned, Run, RunResult, precision_rank
from edgeport.pipeline.stages import Event, Listener
from edgeport.types import Artifact

# How each target names a calibration method (OpenVINO: the NNCF range estimator closest to it).
METHODS = {
    "onnxruntime": ("calibration_method", {"minmax": "minmax", "entropy": "entropy", "percentile": "percentile"}),
    "openvino": ("range_estimator", {"minmax": "minmax", "entropy": "histogram", "percentile": "mean_quantile"}),
}
AWARE_TARGETS = ("onnxruntime", "openvino")  # targets with per-layer float fallback
RUNTIME_ONLY = ("precisions", "hint", "performance_hint", "streams", "xnnpack")


@dataclass
class Candidate:
    target: str
    precision: str
    method: str | None = None
    aware: bool = False
    options: dict = field(default_factory=dict)
    status: str = "pending"  # kept | chosen | rejected | pruned | failed
    reason: str = ""
    artifact_id: str | None = None
    path: str | None = None  # artifact folder, relative to the run folder
    size_bytes: int | None = None
    verify: dict | None = None
    p50_ms: float | None = None
    float_layers: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str | None:
        return "-".join(filter(None, [self.method, "aware" if self.aware else None])) or None

    @property
    def label(self) -> str:
        return f"{self.target}/{self.precision}" + (f"/{self.variant}" if self.variant else "")


def base_options(config: RunConfig, name: str) -> dict:
    """A target's options from [targets.NAME] without the runtime-only ones (they do not change the file)."""
    options = config.target_options(name).model_dump(exclude=set(RUNTIME_ONLY))
    if isinstance(options.get("calibration_method"), list):
        options["calibration_method"] = options["calibration_method"][0]
    return options


def plan(config: RunConfig) -> list[Candidate]:
    """Every candidate the [search] section describes, in build order."""
    search = config.search
    names = search.targets or list(config.targets)
    found: list[Candidate] = []
    for name in names:
        offered = targets.info(name).precisions
        wanted = search.precisions or config.target_options(name).precisions
        for precision in sorted((p for p in wanted if p in offered), key=precision_rank):
            options = base_options(config, name)
            if precision in FLOAT_PRECISIONS or precision != "int8" or name not in METHODS:
                found.append(Candidate(name, precision, options=options))
                continue
            key, names_for = METHODS[name]
            for method in search.calibration_methods:
                for aware in dict.fromkeys(search.accuracy_aware):
                    tuned = {**options, key: names_for[method]}
                    if aware and name in AWARE_TARGETS:
                        tuned |= {**search.budget, "max_float_layers": search.max_float_layers}
                    elif aware:
                        continue
                    found.append(Candidate(name, precision, method, aware, tuned))
    return found


def judge(verify: dict, budget: dict) -> tuple[bool, str, float]:
    """Whether held-out metrics meet the budget, every output judged (the worst decides); the
    reason when not; how far the primary criterion missed (0 when met), in its own unit."""
    from edgeport.metrics import judge as misses_of, shortfall
    from edgeport.types import OutputMetrics

    outputs = [OutputMetrics.model_validate(o) for o in verify["outputs"]]
    accuracy, reference = verify.get("accuracy"), verify.get("reference_accuracy")
    misses = misses_of(outputs, budget, accuracy, reference, strict=True)
    return not misses, "; ".join(misses), shortfall(outputs, budget, accuracy, reference)


def build_task(task: dict) -> dict:
    """Build and verify one candidate (runs in a worker process or on a Ray node)."""
    from pathlib import Path

    config = parse(task["config"], "search worker", Path(task["base_dir"]))
    c = task["candidate"]
    job = Run(config, rebuild=task.get("rebuild", False))
    result = ArtifactResult(None, planned=Planned(c["target"], c["precision"], c["options"], c["variant"]))
    with contextlib.redirect_stdout(sys.stderr):
        artifact = job.isolated(result, "build", lambda: job.build(c["target"], c["precision"], c["options"],
                                                                   variant=c["variant"]))
        report = job.isolated(result, "verify", lambda: job.verify(artifact)) if artifact else None
    if report is None:
        return {"error": result.error, "log": result.log, "built": job.stages.built}
    return {"path": str(artifact.root.relative_to(job.run_dir)), "verify": report.summary(), "built": job.stages.built}


@dataclass
class SearchResult:
    run: RunResult
    candidates: list[Candidate]
    chosen: Candidate | None
    executor: str
    built: list[str]
    seconds: float

    def summary(self) -> dict:
        search = self.run.config.search
        return {"budget": search.budget, "objective": search.objective, "device": search.device,
                "executor": self.executor, "built": len(self.built), "seconds": self.seconds,
                "chosen": asdict(self.chosen) | {"label": self.chosen.label, "variant": self.chosen.variant}
                if self.chosen else None,
                "candidates": [asdict(c) | {"label": c.label, "variant": c.variant} for c in self.candidates]}


class Search:
    def __init__(self, config: RunConfig, on_event: Listener | None = None, rebuild: bool = False):
        if config.search is None:
            raise ConfigError("the config has no [search] section: add one with a budget "
                              "(min_top1_agreement, max_accuracy_drop or min_cosine)")
        self.config, self.search = config, config.search
        self.emit = on_event or (lambda event: None)
        self.job = Run(config, on_event, rebuild)
        self.built: list[str] = []
        self.rebuild = rebuild

    def run(self) -> SearchResult:
        started = time.perf_counter()
        from edgeport.pipeline.executor import make_pool

        candidates = self.candidates = plan(self.config)
        for name in dict.fromkeys(c.target for c in candidates):
            targets.get(name)  # a missing runtime fails before any work
        job = self.job
        job.profile(self.search.device)  # an unknown device fails before any work
        job.interchange()
        job.data()
        reference_accuracy = job.reference_accuracy()
        pool = make_pool(self.search.executor, self.search.workers, self.search.ray_address)

        parents_ok = {}
        self.count()
        for c in candidates:  # wave 1: float exports here (they are the integer candidates' parents)
            if c.precision in FLOAT_PRECISIONS:
                self.finish(c, self.build_here(c))
                self.count(c)
        for name in dict.fromkeys(c.target for c in candidates if c.precision not in FLOAT_PRECISIONS):
            fp32 = job.verify(job.build(name, "fp32", base_options(self.config, name)))
            parents_ok[name] = fp32.passed
        wave2 = [c for c in candidates if c.precision not in FLOAT_PRECISIONS and not c.aware]
        self.in_parallel(pool, self.prune_orphans(wave2, parents_ok))
        wave3 = [c for c in candidates if c.aware]
        for c in wave3:
            plain = next((p for p in wave2 if (p.target, p.precision, p.method) == (c.target, c.precision, c.method)), None)
            if plain is not None and plain.status == "kept":
                c.status, c.reason = "pruned", "plain int8 with this method already meets the budget"
        self.count()
        self.in_parallel(pool, self.prune_orphans([c for c in wave3 if c.status == "pending"], parents_ok))

        kept = [c for c in candidates if c.status == "kept"]
        timed = [c for c in candidates if c.status == "kept" or (c.status == "rejected" and c.verify["passed"])]
        results = self.bench(timed)
        baseline = job.bench_baseline() if self.config.bench.baseline else []
        chosen = self.choose(kept)
        built = self.built + job.stages.built
        outcome = RunResult(self.config, job.run_dir, results, baseline_bench=baseline,
                            reference_accuracy=reference_accuracy, built=built)
        result = SearchResult(outcome, candidates, chosen, pool.description, built, time.perf_counter() - started)
        self.report(result)
        if chosen is None:
            raise ConfigError(self.nothing_met(candidates))
        return result

    # --- building

    def build_here(self, c: Candidate) -> dict:
        result = ArtifactResult(None, planned=Planned(c.target, c.precision, c.options, c.variant))
        artifact = self.job.isolated(result, "build", lambda: self.job.build(c.target, c.precision, c.options,
                                                                             variant=c.variant))
        report = self.job.isolated(result, "verify", lambda: self.job.verify(artifact)) if artifact else None
        if report is None:
            return {"error": result.error, "log": result.log}
        return {"path": str(artifact.root.relative_to(self.job.run_dir)), "verify": report.summary()}

    def count(self, last: Candidate | None = None) -> None:
        """Candidates decided so far (built and judged, failed or pruned) of all planned."""
        done = sum(c.status != "pending" for c in self.candidates)
        self.emit(Event("progress", "search", "candidates", f"{last.label}: {last.status}" if last else "",
                        total=len(self.candidates), done=done))

    def prune_orphans(self, wave: list[Candidate], parents_ok: dict) -> list[Candidate]:
        for c in wave:
            if not parents_ok.get(c.target, True):
                c.status, c.reason = "pruned", f"the {c.target} fp32 export failed verification"
        return [c for c in wave if c.status == "pending"]

    def in_parallel(self, pool, wave: list[Candidate]) -> None:
        data = self.config.model_dump(mode="json", exclude_none=True)
        tasks = [{"config": data, "base_dir": str(self.config.base_dir), "index": i, "rebuild": self.rebuild,
                  "candidate": {"target": c.target, "precision": c.precision, "options": c.options,
                                "variant": c.variant}} for i, c in enumerate(wave)]
        for c in wave:
            self.emit(Event("start", "search", c.label))
        for task, result in pool.run(build_task, tasks):
            c = wave[task["index"]]
            self.built += result.get("built", [])
            self.finish(c, result)
            self.emit(Event("done", "search", c.label, detail=c.status))
            self.count(c)

    def finish(self, c: Candidate, result: dict) -> None:
        """Record a built candidate and judge it against the budget on held-out data."""
        if "error" in result:
            c.status, c.reason = "failed", result["error"] + (f" (log: {self.job.run_dir / result['log']})"
                                                              if result.get("log") else "")
            return
        artifact = Artifact.load(self.job.run_dir / result["path"])
        c.path, c.artifact_id, c.size_bytes, c.verify = result["path"], artifact.id, artifact.size_bytes, result["verify"]
        aware = artifact.options.get("quantization", {}).get("accuracy_aware") or {}
        c.float_layers = aware.get("float_tensors", [])
        met, why, _ = judge(c.verify, self.search.budget)
        c.status, c.reason = ("kept", "meets the budget") if met else ("rejected", why)

    # --- measuring and choosing

    def bench(self, timed: list[Candidate]) -> list[ArtifactResult]:
        """Benchmark `timed` on the objective's device and every [[bench.devices]], one thread per
        device, each device measuring one artifact at a time."""
        from edgeport.pipeline.config import BenchDevice

        job = self.job
        configured = {e.name: e for e, _ in job.bench_devices()} if self.config.bench.devices else {}
        names = dict.fromkeys([self.search.device, *configured])
        pairs = [(configured.get(n) or BenchDevice(name=n), job.profile(n)) for n in names]
        results = {c.label: ArtifactResult(Artifact.load(job.run_dir / c.path)) for c in timed}
        for c in timed:
            results[c.label].verify = job.verify(results[c.label].artifact)

        def on_device(entry, profile) -> None:
            measured = [c for c in timed if not profile.runtimes or results[c.label].artifact.target in profile.runtimes]
            self.emit(Event("progress", "bench", profile.name, total=len(measured)))
            for done, c in enumerate(measured, 1):
                r = results[c.label]
                options = job.runtime_variants(r.artifact)[0]
                bench = job.bench_on(entry, profile, r.artifact, options)
                r.bench.append(bench)
                if profile.name == self.search.device:
                    c.p50_ms = bench.p50_ms
                self.emit(Event("progress", "bench", profile.name, c.label, total=len(measured), done=done))

        with ThreadPoolExecutor(len(pairs)) as threads:
            for future in [threads.submit(on_device, e, p) for e, p in pairs]:
                future.result()
        return list(results.values())

    def choose(self, kept: list[Candidate]) -> Candidate | None:
        if self.search.objective == "size":
            # Ties (int8 files of different calibration methods have the same size) go to the closer
            # artifact, not to a noisy latency: the same sweep must choose the same file anywhere.
            ranked = sorted(kept, key=lambda c: (c.size_bytes, -c.verify["cosine"], c.label))
        else:
            ranked = sorted((c for c in kept if c.p50_ms is not None), key=lambda c: (c.p50_ms, c.size_bytes))
        if ranked:
            ranked[0].status, ranked[0].reason = "chosen", f"lowest {self.objective_label} within the budget"
        return ranked[0] if ranked else None

    @property
    def objective_label(self) -> str:
        return "size" if self.search.objective == "size" else f"p50 on {self.search.device}"

    def nothing_met(self, candidates: list[Candidate]) -> str:
        judged = [(judge(c.verify, self.search.budget)[2], c) for c in candidates if c.verify]
        budget = ", ".join(f"{k} = {v}" for k, v in self.search.budget.items())
        if not judged:
            return f"no candidate could be built for the budget {budget}; see {self.job.run_dir / 'report.md'}"
        miss, closest = min(judged, key=lambda pair: pair[0])
        return (f"no candidate meets {budget}: the closest is {closest.label} ({closest.reason}; "
                f"{miss:.4g} short); see {self.job.run_dir / 'report.md'}")

    # --- reporting

    def report(self, result: SearchResult) -> None:
        from edgeport.pipeline.package import package
        from edgeport.pipeline.report import write_reports

        result.run.search = result.summary()
        result.run.model_info = self.job.model_info()
        result.run.reports = write_reports(result.run)
        if result.chosen is not None and self.config.package.enabled:
            result.run.bundles = package(self.job.run_dir, ids=[result.chosen.artifact_id])


def tune(config: RunConfig, on_event: Listener | None = None, rebuild: bool = False) -> SearchResult:
    """Run the [search]; every candidate goes through the cached stages of `edgeport run`."""
    search = Search(config, on_event, rebuild)
    with search.job:  # holds the run folder its workers build in
        return search.run()


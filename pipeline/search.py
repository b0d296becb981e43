"""`edgeport tune`: find, for one device, the fastest (or smallest) artifact that still meets an
accuracy budget on held-out data.

Candidates are compression recipes x targets x precisions x calibration methods x
accuracy-aware fallback (on/off), each target saying which of these axes it has
(Target.search_axes). A recipe other than "none" appends its [[compress]] steps to the run's and
builds in a run folder of its own (runs/NAME/recipes/RECIPE), so its compressed model, export,
reference and artifacts never mix with another's; a recipe that only prepares the model for
int8 (QAT, adaptive rounding, ...) offers only integer candidates, judged against the original
model. Each is built and verified
through the same stage functions as `edgeport run` (so a re-run builds nothing new), in waves
that prune what cannot succeed:

1. float exports, in this process: an integer candidate whose fp32 parent fails verification
   is not built;
2. plain int8 candidates, in parallel (a process pool or Ray);
3. accuracy-aware candidates, in parallel, only where the plain int8 model of the same target
   and method missed the budget (else the fallback would keep nothing in float);
4. benchmarks, after every build has finished, one at a time per device (this machine last and
   alone, so nothing else runs while it times; with [bench] processes = N, in N interleaved rounds
   of one process per candidate, the median round counting): those within the budget compete;
   those outside it are timed too, so the latency Pareto front shows what the budget costs. A
   candidate that failed verification is never benchmarked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from edgeport import targets
from edgeport.errors import BudgetNotMetError, ConfigError
from edgeport.pipeline.benchmark import BenchService, median_result
from edgeport.pipeline.build import Planned, build, float_parent, precision_rank
from edgeport.pipeline.config import BenchDevice, RunConfig, parse
from edgeport.pipeline.run import ArtifactResult, RunResult, bench_baseline, bench_on, isolated, model_info, prepare
from edgeport.pipeline.stages import Event, Listener
from edgeport.pipeline.verify import verify
from edgeport.pipeline.workspace import Workspace
from edgeport.targets.base import TargetOptions
from edgeport.metrics import BUDGET_KEYS, SCORE_KEYS, Budget
from edgeport.types import Artifact, BenchResult, OutputMetrics, artifact_name


@dataclass
class Candidate:
    target: str
    precision: str
    method: str | None = None
    aware: bool = False
    recipe: str = "none"
    options: TargetOptions | None = None
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
        recipe = None if self.recipe == "none" else self.recipe
        return "-".join(filter(None, [recipe, self.method, "aware" if self.aware else None])) or None

    @property
    def label(self) -> str:
        return artifact_name(self.target, self.precision, self.variant)


def base_options(config: RunConfig, name: str) -> TargetOptions:
    """A target's options from [targets.NAME], one calibration method where a list was given."""
    options = config.target_options(name)
    method_option = targets.get(name).search_axes().method_option
    methods = getattr(options, method_option, None) if method_option else None
    return options.model_copy(update={method_option: methods[0]}) if isinstance(methods, list) else options


def recipe_config(config: RunConfig, recipe: str) -> RunConfig:
    """The run config of one recipe: its steps after the run's own, in a run folder of its own."""
    if recipe == "none":
        return config
    search = config.search.model_copy(update={"recipes": ["none"]})
    return config.model_copy(update={
        "name": recipe, "runs_dir": str(config.run_dir / "recipes"), "search": search,
        "compress": [*config.compress, *config.search.recipe_steps(recipe)],
        "verify": config.verify.model_copy(update={"against": "original"}),
        "package": config.package.model_copy(update={"enabled": False})})


def plan(config: RunConfig, recipe: str = "none") -> list[Candidate]:
    """Every candidate the [search] section describes for one recipe, in build order."""
    search = config.search
    names = search.targets or list(config.targets)
    prepares_int8 = config.search.prepares_int8(recipe)
    found: list[Candidate] = []
    for name in names:
        target = targets.get(name)
        axes = target.search_axes()
        wanted = search.precisions or config.target_options(name).precisions
        for precision in sorted((p for p in wanted if p in target.precisions), key=precision_rank):
            if prepares_int8 and precision in target.float_precisions:
                continue  # the prepared float model is a vehicle for int8, not a product
            options = base_options(config, name)
            if precision != "int8" or not axes.method_option:
                found.append(Candidate(name, precision, options=options, recipe=recipe))
                continue
            for method in search.calibration_methods:
                for aware in dict.fromkeys(search.accuracy_aware):
                    if aware and not axes.accuracy_aware:
                        continue
                    update = {axes.method_option: axes.methods[method]}
                    if aware:
                        update |= {**search.budget.limits, "max_float_layers": search.max_float_layers}
                    found.append(Candidate(name, precision, method, aware, recipe, options.model_copy(update=update)))
    return found


def plain_twin(aware: Candidate, plain: list[Candidate]) -> Candidate | None:
    """The plain int8 candidate an accuracy-aware one starts from (same target, precision, method)."""
    return next((p for p in plain if (p.target, p.precision, p.method) == (aware.target, aware.precision, aware.method)),
                None)


def judge(verify: dict, budget: Budget) -> tuple[bool, str, float]:
    """Whether held-out metrics meet the budget, every output judged (the worst decides); the
    reason when not; how far the primary criterion missed (0 when met), in its own unit."""
    outputs = [OutputMetrics.model_validate(o) for o in verify["outputs"]]
    accuracy, reference = verify.get("accuracy"), verify.get("reference_accuracy")
    misses = budget.misses(outputs, accuracy, reference, strict=True)
    return not misses, "; ".join(misses), budget.shortfall(outputs, accuracy, reference)


def build_and_verify(ws: Workspace, prepared, c: dict) -> dict:
    """One candidate built and verified, isolated: its result, or its error and log."""
    result = ArtifactResult(None, planned=Planned(c["target"], c["precision"], c["options"], c["variant"]))
    scores = prepared.reference.class_scores
    with contextlib.redirect_stdout(sys.stderr):
        artifact = isolated(ws, result, "build", lambda: build(ws, prepared.source, prepared.data, result.planned, scores))
        report = isolated(ws, result, "verify", lambda: verify(ws, artifact, prepared.reference, prepared.data)) \
            if artifact else None
    if report is None:
        return {"error": result.error, "log": result.log, "built": ws.stages.built}
    return {"path": str(artifact.root.relative_to(ws.run_dir)), "verify": report.summary(), "built": ws.stages.built}


def build_task(task: dict) -> dict:
    """Build and verify one candidate (runs in a worker process or on a Ray node): the model,
    data and reference come from the run folder's cache, which the parent filled."""
    from pathlib import Path

    config = parse(task["config"], "search worker", Path(task["base_dir"]))
    c = dict(task["candidate"])
    c["options"] = config.target_options(c["target"]).model_validate(c["options"])
    ws = Workspace.open(config, rebuild=task.get("rebuild", False))
    with BenchService.of(config) as service:
        prepared = prepare(ws, service)
        return build_and_verify(ws, prepared, c)


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

        def record(c: Candidate) -> dict:
            return {**asdict(c), "options": c.options.model_dump(mode="json") if c.options else None,
                    "label": c.label, "variant": c.variant}

        return {"budget": search.budget.limits, "objective": search.objective, "device": search.device,
                "executor": self.executor, "built": len(self.built), "seconds": self.seconds,
                "chosen": record(self.chosen) if self.chosen else None,
                "candidates": [record(c) for c in self.candidates]}


class Search:
    """One recipe's candidates built and judged in its own workspace; the search of the run's
    config (recipe "none") also owns the other recipes' searches, benchmarks and chooses."""

    def __init__(self, config: RunConfig, on_event: Listener | None = None, rebuild: bool = False,
                 recipe: str = "none", service: BenchService | None = None):
        if config.search is None:
            raise ConfigError(f"the config has no [search] section: add one with a budget ({', '.join(BUDGET_KEYS)})")
        self.config, self.search, self.recipe = config, config.search, recipe
        self.emit = on_event or (lambda event: None)
        self.rebuild = rebuild
        self.ws = Workspace.open(config, on_event, rebuild)
        self.service = service or BenchService.of(config)
        self.built: list[str] = []
        self.candidates: list[Candidate] = []
        self.everyone: list[Candidate] = self.candidates  # for progress: every recipe's candidates
        self.root = self.ws.run_dir  # the run folder candidates' paths are relative to (the "none" recipe's)

    def run(self) -> SearchResult:
        from edgeport.pipeline.executor import make_pool

        started = time.perf_counter()
        recipes = [self if r == "none" else Search(recipe_config(self.config, r), self.emit, self.rebuild, r, self.service)
                   for r in self.search.recipes]
        self.everyone = []
        for r in recipes:  # a missing runtime or an unknown step fails before any work
            r.candidates = plan(r.config, r.recipe)
            r.everyone, r.root = self.everyone, self.ws.run_dir
            self.everyone += r.candidates
        self.service.profile(self.search.device)  # an unknown device fails before any work
        pool = make_pool(self.search.executor, self.search.workers, self.search.ray_address)
        for r in recipes:
            r.build_all(pool)
        pool.close()  # every build has finished: nothing else runs while this machine times

        candidates = self.everyone
        owner = {c.label: r for r in recipes for c in r.candidates}
        kept = [c for c in candidates if c.status == "kept"]
        timed = [c for c in candidates if c.status == "kept" or (c.status == "rejected" and c.verify["passed"])]
        results = self.bench(timed, owner, recipes[0])
        chosen = self.choose(kept)
        built = [b for r in recipes for b in r.built + r.ws.stages.built]
        outcome = RunResult(self.config, self.ws.run_dir, results, baseline_bench=self.baseline,
                            reference_accuracy=recipes[0].prepared.reference.accuracy, built=built)
        result = SearchResult(outcome, candidates, chosen, pool.description, built, time.perf_counter() - started)
        self.report(result, recipes[0].prepared)
        if chosen is None:
            raise BudgetNotMetError(self.nothing_met(candidates), result)
        return result

    def build_all(self, pool) -> None:
        """Waves 1-3 of this recipe's candidates (see the module's docstring)."""
        ws, candidates = self.ws, self.candidates
        self.prepared = prepared = prepare(ws, self.service)
        for key in SCORE_KEYS:
            if getattr(self.search, key) is not None and not prepared.reference.class_scores:
                raise ConfigError(f"[search] {key} needs an output of class scores, and none is taken as one "
                                  "(no labels fit it): set model.class_scores, or budget min_cosine instead")
        self.count()
        for c in candidates:  # wave 1: float exports here (they are the integer candidates' parents)
            if c.precision in targets.get(c.target).float_precisions:
                self.finish(c, build_and_verify(ws, prepared, self.task_candidate(c)))
                self.count(c)
        parents_ok = {}
        # A recipe is judged against the original: its fp32 says nothing about its export.
        for c in candidates if self.recipe == "none" else []:
            if c.precision not in targets.get(c.target).float_precisions and c.target not in parents_ok:
                planned = Planned(c.target, c.precision, base_options(self.config, c.target))
                fp32 = float_parent(ws, prepared.source, prepared.data, planned, prepared.reference.class_scores)
                parents_ok[c.target] = verify(ws, fp32, prepared.reference, prepared.data).passed
        wave2 = [c for c in candidates if c.status == "pending" and not c.aware]
        self.in_parallel(pool, self.prune_orphans(wave2, parents_ok))
        wave3 = [c for c in candidates if c.aware]
        for c in wave3:
            plain = plain_twin(c, wave2)
            if plain is not None and plain.status == "kept":
                c.status, c.reason = "pruned", "plain int8 with this method already meets the budget"
        if self.search.accuracy_aware_from == "closest":
            self.prune_to_closest(wave2, [c for c in wave3 if c.status == "pending"])
        self.count()
        self.in_parallel(pool, self.prune_orphans([c for c in wave3 if c.status == "pending"], parents_ok))

    # --- building

    @staticmethod
    def task_candidate(c: Candidate) -> dict:
        return {"target": c.target, "precision": c.precision, "options": c.options, "variant": c.variant}

    def count(self, last: Candidate | None = None) -> None:
        """Candidates decided so far (built and judged, failed or pruned) of all planned."""
        done = sum(c.status != "pending" for c in self.everyone)
        self.emit(Event("progress", "search", "candidates", f"{last.label}: {last.status}" if last else "",
                        total=len(self.everyone), done=done))

    def prune_orphans(self, wave: list[Candidate], parents_ok: dict) -> list[Candidate]:
        for c in wave:
            if not parents_ok.get(c.target, True):
                c.status, c.reason = "pruned", f"the {c.target} fp32 export failed verification"
        return [c for c in wave if c.status == "pending"]

    def prune_to_closest(self, plain: list[Candidate], aware: list[Candidate]) -> None:
        """One accuracy-aware fallback per target and precision: from the calibration method whose
        plain int8 came closest to the budget (none where a plain int8 meets it). The others would
        keep much the same layers in float (ONNX Runtime ranks them once for every method) from a
        worse start."""
        def shortfall(c: Candidate) -> float | None:
            twin = plain_twin(c, plain)
            return judge(twin.verify, self.search.budget)[2] if twin and twin.verify else None

        groups: dict[tuple, list[Candidate]] = {}
        for c in aware:
            if shortfall(c) is not None:
                groups.setdefault((c.target, c.precision), []).append(c)
        for group in groups.values():
            met = next((p for p in plain if p.status == "kept" and (p.target, p.precision) == (group[0].target,
                                                                                                group[0].precision)), None)
            if met is not None:  # no fallback (float layers, slower, larger) can beat that int8
                for c in group:
                    c.status, c.reason = "pruned", f"plain int8 with {met.method} already meets the budget"
                continue
            best = min(group, key=shortfall)
            for c in group:
                if c is not best:
                    c.status = "pruned"
                    c.reason = (f"the fallback starts from the plain int8 closest to the budget ({best.method}, "
                                f"{shortfall(best):.4g} short against {shortfall(c):.4g}); "
                                "[search] accuracy_aware_from = \"every\" builds it too")

    def in_parallel(self, pool, wave: list[Candidate]) -> None:
        data = self.config.model_dump(mode="json", exclude_none=True)
        tasks = [{"config": data, "base_dir": str(self.config.base_dir), "index": i, "rebuild": self.rebuild,
                  "candidate": {**self.task_candidate(c), "options": c.options.model_dump(mode="json")}}
                 for i, c in enumerate(wave)]
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
            c.status, c.reason = "failed", result["error"] + (f" (log: {self.ws.run_dir / result['log']})"
                                                              if result.get("log") else "")
            return
        artifact = Artifact.load(self.ws.run_dir / result["path"])
        c.path = os.path.relpath(artifact.root, self.root)
        c.artifact_id, c.size_bytes, c.verify = artifact.id, artifact.size_bytes, result["verify"]
        aware = artifact.options.get("quantization", {}).get("accuracy_aware") or {}
        c.float_layers = aware.get("float_tensors", [])
        met, why, _ = judge(c.verify, self.search.budget)
        c.status, c.reason = ("kept", "meets the budget") if met else ("rejected", why)

    # --- measuring and choosing

    def bench(self, timed: list[Candidate], owner: dict[str, Search], first: Search) -> list[ArtifactResult]:
        """Benchmark `timed` on the objective's device and every [[bench.devices]]: other devices
        in parallel, one artifact at a time each; then this machine alone (with PyTorch eager), so
        no build or other measurement shares its cores while it times. Each candidate is measured
        in its recipe's workspace, against that recipe's reference."""
        configured = {e.name: e for e in self.config.bench.devices}
        names = dict.fromkeys([self.search.device, *configured])
        pairs = [(configured.get(n) or BenchDevice(name=n), self.service.profile(n)) for n in names]
        results = {c.label: ArtifactResult(Artifact.load(self.ws.run_dir / c.path)) for c in timed}
        for c in timed:
            ws, prepared = owner[c.label].ws, owner[c.label].prepared
            results[c.label].verify = verify(ws, results[c.label].artifact, prepared.reference, prepared.data)

        def on_device(entry, profile, rounds: int = 1) -> None:
            """Every candidate once per round, one process each, rounds interleaved; with several
            rounds, each candidate's median round counts. A slow minute of a shared machine then
            costs every candidate one round, not one candidate all of its processes."""
            measured = [c for c in timed if not profile.runtimes or results[c.label].artifact.target in profile.runtimes]
            service = self.service.one_process() if rounds > 1 else self.service
            runs: dict[str, list] = {c.label: [] for c in measured}
            self.emit(Event("progress", "bench", profile.name, total=len(measured) * rounds))
            for k in range(rounds):
                for done, c in enumerate(measured, 1):
                    r = results[c.label]
                    target = targets.get(r.artifact.target)
                    options = target.runtime_variants(self.config.target_options(r.artifact.target))[0]
                    ws, prepared = owner[c.label].ws, owner[c.label].prepared
                    runs[c.label].append(bench_on(ws, service, entry, profile, r.artifact, options, prepared.data,
                                                  prepared.reference, k if rounds > 1 else None))
                    self.emit(Event("progress", "bench", profile.name, c.label, total=len(measured) * rounds,
                                    done=k * len(measured) + done))
                if rounds > 1 and self.config.bench.baseline:
                    eager.extend(bench_baseline(first.ws, service, first.prepared.original, first.prepared.data, k))
            for c in measured:
                bench = runs[c.label][0] if rounds == 1 else median_result(runs[c.label])
                results[c.label].bench.append(bench)
                if profile.name == self.search.device:
                    c.p50_ms = bench.p50_ms

        remote = [(e, p) for e, p in pairs if p.transport != "local"]
        if remote:
            with ThreadPoolExecutor(len(remote)) as threads:
                for future in [threads.submit(on_device, e, p) for e, p in remote]:
                    future.result()
        eager: list[BenchResult] = []
        rounds = self.config.bench.processes
        for entry, profile in pairs:
            if profile.transport == "local":
                on_device(entry, profile, rounds)
        if eager:  # timed in the rounds
            self.baseline = [median_result(eager)]
        else:
            self.baseline = (bench_baseline(first.ws, self.service, first.prepared.original, first.prepared.data)
                             if self.config.bench.baseline else [])
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
        budget = self.search.budget.describe()
        if not judged:
            return f"no candidate could be built for the budget {budget}; see {self.ws.run_dir / 'report.md'}"
        miss, closest = min(judged, key=lambda pair: pair[0])
        return (f"no candidate meets {budget}: the closest is {closest.label} ({closest.reason}; "
                f"{miss:.4g} short); see {self.ws.run_dir / 'report.md'}")

    # --- reporting

    def report(self, result: SearchResult, prepared) -> None:
        from edgeport.pipeline.package import package
        from edgeport.pipeline.report import write_reports

        result.run.search = result.summary()
        result.run.model_info = model_info(self.config, prepared.model, prepared.reference)
        result.run.reports = write_reports(result.run)
        if result.chosen is not None and self.config.package.enabled:
            result.run.bundles = package(self.ws.run_dir, ids=[result.chosen.artifact_id])


def tune(config: RunConfig, on_event: Listener | None = None, rebuild: bool = False) -> SearchResult:
    """Run the [search]; every candidate goes through the cached stages of `edgeport run`."""
    from edgeport.pipeline.lock import run_lock

    search = Search(config, on_event, rebuild)
    with run_lock(search.ws.run_dir), search.service:  # holds the run folder its workers build in
        return search.run()

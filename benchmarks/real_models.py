"""EfficientNet-Lite0 (ImageNet weights, offline) on this machine, in one run, written to docs/performance.md:

- PyTorch eager fp32,
- each target's fp32 and int8 as the libraries give them (the first calibration method, nothing
  kept in float: ONNX Runtime QDQ minmax, NNCF's default ranges, litert-torch and ExecuTorch PT2E),
- per target and compression recipe ([search] recipes: ptq-plus, qat, ...), the int8 candidate of
  the search that agrees best with PyTorch fp32,
- edgeport's choice: the fastest artifact within the budget (`edgeport tune CONFIG`).

Artifacts come from the search (built once, cached); every latency in the table is measured
again here, quietly, the rows interleaved over --rounds rounds (median of their p50s), so ratios
are side by side in one run on a shared, noisy machine. The last column compares the p50 the
tune measured with this quiet re-measurement: the tune's own figures are honest when it is ~1.

    python benchmarks/real_models.py [--config examples/efficientnet-lite0.toml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cache_state(built: list[str]) -> str:
    """How much of the tune was built in this run: a cold tune and a re-timing are minutes apart."""
    exports = sum(rel.startswith("artifacts/") for rel in built)
    benchmarks = sum(rel.startswith("bench/") for rel in built)
    if not built:
        return " (everything cached)"
    return f" ({len(built)} stages built in this run: {exports} exports, {benchmarks} benchmarks)"


def pick_rows(search, run_dir: Path) -> list[dict]:
    """The table's artifacts, from the search's candidates (each once)."""
    from edgeport import targets
    from edgeport.pipeline.search import judge
    from edgeport.types import Artifact

    budget = search.run.config.search.budget
    verified = [c for c in search.candidates if c.verify and c.path]
    rows, seen = [], set()

    def add(c, name: str) -> None:
        if c is not None and c.label not in seen:
            seen.add(c.label)
            rows.append({"name": name, "candidate": c, "artifact": Artifact.load(run_dir / c.path)})

    names = dict.fromkeys(c.target for c in search.candidates)
    for name in names:
        floats = targets.get(name).float_precisions
        plain = [c for c in verified if c.target == name and c.recipe == "none" and not c.aware]
        add(next((c for c in plain if c.precision == "fp32"), None), f"{name} fp32")
        add(next((c for c in plain if c.precision not in floats), None), f"{name} int8 (library defaults)")
    recipes = dict.fromkeys(c.recipe for c in search.candidates)
    for recipe in recipes:
        for name in names:
            ints = [c for c in verified if c.target == name and c.recipe == recipe
                    and c.precision not in targets.get(name).float_precisions]
            best = min(ints, key=lambda c: (judge(c.verify, budget)[2], -c.verify["cosine"]), default=None)
            if best is not None:
                add(best, f"{name} {best.precision}, best of recipe {recipe}: {best.variant}")
    if search.chosen is not None:
        add(search.chosen, f"edgeport's choice: {search.chosen.label}")  # unless a row above is it
        next(r for r in rows if r["candidate"] is search.chosen)["chosen"] = True
    return rows


def measure_rows(config, run_dir: Path, rows: list[dict], rounds: int) -> dict:
    """p50 of every row and of PyTorch eager, fresh processes, rows interleaved round by round."""
    from edgeport import targets
    from edgeport.pipeline.benchmark import BenchService, run_samples_for

    eager = {"p50s": []}
    samples = run_dir / "calibration" / "evaluation.npz"
    with BenchService.of(config) as service:
        service = service.one_process()  # the rounds are the processes here
        local = service.profile("local")
        for row in rows:  # what each measurement needs, worked out once
            artifact = row["artifact"]
            row["options"] = targets.get(artifact.target).runtime_variants(config.target_options(artifact.target))[0]
            row["samples"] = run_samples_for(artifact, None)
        for round_ in range(rounds):
            eager["p50s"].append(service.torch_eager(config.model.model_dump(mode="json"), config.base_dir,
                                                     samples, 32)["p50_ms"])
            print(f"round {round_ + 1}/{rounds} PyTorch eager: {eager['p50s'][-1]:.3f} ms", file=sys.stderr)
            for row in rows:
                result = service.measure(row["artifact"], local, row["options"], row["samples"])
                row.setdefault("p50s", []).append(result["p50_ms"])
                print(f"round {round_ + 1}/{rounds} {row['name']:<60} p50 {result['p50_ms']:.3f} ms", file=sys.stderr)
        facts = result["device_facts"]
        threads = service.threads_on(local)
    for row in rows:
        row["p50_ms"] = statistics.median(row["p50s"])
    return {"eager_ms": statistics.median(eager["p50s"]), "facts": facts, "threads": threads}


def table(config, search, rows: list[dict], measured: dict, tune_seconds: float, rounds: int) -> list[str]:
    from edgeport.pipeline.plots import share

    eager = measured["eager_ms"]
    facts = measured["facts"]
    from edgeport.pipeline.search import judge

    budget = config.search.budget
    tune_eager = search.run.baseline_bench[0].p50_ms if search.run.baseline_bench else None
    fp32 = {r["artifact"].target: r["p50_ms"] for r in rows if r["candidate"].precision == "fp32"}
    lines = [
        "# Performance: EfficientNet-Lite0", "",
        f"Measured {datetime.date.today()} by `python benchmarks/real_models.py` on {facts.get('cpu')} "
        f"({facts.get('cores')} cores, {facts.get('arch')}), batch 1, {measured['threads'] or 'every core as'} "
        f"thread(s), every row timed in a fresh process by the same harness, rows interleaved over {rounds} rounds "
        "(the median of their p50s). Agreement and cosine compare each artifact's logits with the original PyTorch "
        f"fp32 model on {rows[0]['candidate'].verify['samples']} held-out 224x224 crops of photos of scenes that "
        "calibration (and QAT) never saw (`edgeport crops`), with the 95% interval of the agreement; "
        "the second agreement counts only the crops PyTorch gives its top class a probability >= 0.5.", "",
        "| model | p50 (ms) | vs eager | vs its fp32 | cosine | top-1 agreement [95%] | top-1 where p >= 0.5 [95%] | "
        "meets the budget | tune's p50 / this p50 | tune's speed-up / this speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| PyTorch eager fp32 | {eager:.3f} | 1.00x | — | 1.000000 | 1.0000 | 1.0000 | — | "
        + (f"{tune_eager / eager:.2f} | 1.00 |" if tune_eager else "— | — |"),
    ]
    for row in rows:
        c, v = row["candidate"], row["candidate"].verify
        top1 = v.get("top1_agreement")
        meets = "yes" if judge(v, budget)[0] else "no"
        name = f"**{row['name']}**" if row.get("chosen") else row["name"]
        own = fp32.get(c.target)
        vs_fp32 = f"{own / row['p50_ms']:.2f}x" if own and c.precision != "fp32" else "—"
        honest = f"{c.p50_ms / row['p50_ms']:.2f}" if c.p50_ms else "—"
        # the speed-up over eager the tune reported against this run's: the machine's drift cancels
        speedup = f"{(tune_eager / c.p50_ms) / (eager / row['p50_ms']):.2f}" if c.p50_ms and tune_eager else "—"
        lines.append(f"| {name} | {row['p50_ms']:.3f} | {eager / row['p50_ms']:.2f}x | {vs_fp32} | {v['cosine']:.6f} | "
                     f"{share(top1, v.get('top1_interval'))} | "
                     f"{share(v.get('confident_top1_agreement'), v.get('confident_top1_interval'))} | {meets} | {honest} | "
                     f"{speedup} |")
    chosen = search.chosen
    lines += ["", f"`edgeport tune {config.name}` searched {len(search.candidates)} candidates (recipes "
              f"{', '.join(config.search.recipes)} x targets x precisions x calibration methods x accuracy-aware "
              f"fallback) with `{budget.describe()}` in {tune_seconds / 60:.1f} min"
              + cache_state(search.built)
              + (f"; it chose {chosen.label}." if chosen else "; nothing met the budget.")
              + f" The full candidate table and the Pareto plots are in the run's report.md (`{search.run.run_dir / 'report.md'}`).", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "efficientnet-lite0.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    args = parser.parse_args()

    from rich.console import Console

    from edgeport.calibration.crops import DEFAULT_FOLDER, write_crops
    from edgeport.cli.progress import progress_listener
    from edgeport.errors import BudgetNotMetError
    from edgeport.pipeline.config import load_config
    from edgeport.pipeline.search import tune
    from edgeport.types import write_text_atomic

    write_crops(DEFAULT_FOLDER)
    config = load_config(args.config)
    started = time.perf_counter()
    with progress_listener(Console(stderr=True), verbose=True) as listener:
        try:
            search = tune(config, listener)
        except BudgetNotMetError as e:
            print(f"tune: {e}", file=sys.stderr)
            search = e.result
    tune_seconds = time.perf_counter() - started
    rows = pick_rows(search, search.run.run_dir)
    measured = measure_rows(config, search.run.run_dir, rows, args.rounds)
    lines = table(config, search, rows, measured, tune_seconds, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

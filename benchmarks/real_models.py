"""EfficientNet-Lite0 (ImageNet weights, offline) on this machine, in one run, written to docs/performance.md:

- PyTorch eager fp32,
- each target's fp32 and int8 as the libraries give them (default settings: ONNX Runtime QDQ
  minmax, NNCF's default ranges, litert-torch PT2E),
- edgeport's choice: the fastest artifact whose top-1 agrees with PyTorch fp32 on >= 99% of
  held-out photo crops (`edgeport tune examples/efficientnet-lite0.toml`).

Artifacts come from the cached stages (built once); every latency in the table is measured
again here, the rows interleaved over --rounds rounds (median of their p50s), so ratios are
side by side in one run on a shared, noisy machine.

    python benchmarks/real_models.py [--config examples/efficientnet-lite0.toml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure_rows(job, rows: list[dict], rounds: int) -> None:
    """p50 of every row, fresh processes, rows interleaved round by round."""
    from edgeport.devices.local import LocalDevice, run_json
    from edgeport.devices.remote import measure

    settings = job.bench_settings()
    torch_request = {"model": job.config.model.model_dump(mode="json"), "base_dir": str(job.config.base_dir), **settings}
    with LocalDevice() as device:
        for round_ in range(rounds):
            for row in rows:
                if row["artifact"] is None:
                    result = run_json([sys.executable, "-m", "edgeport.pipeline.torch_bench"], torch_request, 900)
                else:
                    options = job.runtime_variants(row["artifact"])[0]
                    result = measure(device, row["artifact"], {**settings, "options": options})
                row.setdefault("p50s", []).append(result["p50_ms"])
                print(f"round {round_ + 1}/{rounds} {row['name']:<44} p50 {result['p50_ms']:.3f} ms", file=sys.stderr)
    for row in rows:
        row["p50_ms"] = statistics.median(row["p50s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "efficientnet-lite0.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    args = parser.parse_args()

    from edgeport.calibration.crops import DEFAULT_FOLDER, write_crops
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.config import load_config
    from edgeport.pipeline.run import Run
    from edgeport.pipeline.search import base_options, tune
    from edgeport.types import Artifact, write_text_atomic
    from rich.console import Console

    write_crops(DEFAULT_FOLDER)
    config = load_config(args.config)
    with progress_listener(Console(stderr=True), verbose=True) as listener:
        search = tune(config, listener)
        job = Run(config, listener)
        rows = [{"name": "PyTorch eager fp32", "artifact": None, "verify": {"cosine": 1.0, "top1_agreement": 1.0}}]
        for name in config.targets:
            for precision in ("fp32", "int8"):
                artifact = job.build(name, precision, base_options(config, name))
                report = job.verify(artifact)
                rows.append({"name": f"{name} {precision} (library defaults)", "artifact": artifact,
                             "verify": report.summary()})
        chosen = search.chosen
        rows.append({"name": f"edgeport's choice: {chosen.label}", "artifact": Artifact.load(job.run_dir / chosen.path),
                     "verify": chosen.verify, "chosen": True})
        measure_rows(job, rows, args.rounds)
        facts = job.bench_baseline()[0].device_facts
        job.close()

    eager = rows[0]["p50_ms"]
    budget = config.search.min_top1_agreement
    lines = [
        "# Performance: EfficientNet-Lite0", "",
        f"Measured {datetime.date.today()} by `python benchmarks/real_models.py` on {facts.get('cpu')} "
        f"({facts.get('cores')} cores, {facts.get('arch')}), batch 1, {job.bench_settings()['threads']} thread(s), "
        f"every row timed in a fresh process by the same harness, rows interleaved over {args.rounds} rounds "
        "(the median of their p50s). Agreement and cosine compare each artifact's logits with PyTorch fp32 on "
        f"{chosen.verify['samples']} held-out 224x224 crops of scikit-learn's sample photos that calibration "
        "never saw.", "",
        "| model | p50 (ms) | speedup vs eager | cosine | top-1 agreement | meets 0.99 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        v = row["verify"]
        top1 = v.get("top1_agreement")
        meets = "—" if row["artifact"] is None else ("yes" if top1 is not None and top1 >= budget else "no")
        name = f"**{row['name']}**" if row.get("chosen") else row["name"]
        lines.append(f"| {name} | {row['p50_ms']:.3f} | {eager / row['p50_ms']:.2f}x | {v['cosine']:.6f} | "
                     f"{top1:.4f} | {meets} |")
    layers = chosen.float_layers
    lines += ["", f"edgeport searched {len(search.candidates)} candidates (targets x precisions x calibration "
              f"methods x accuracy-aware fallback) with `min_top1_agreement = {budget}`; the choice keeps "
              f"{len(layers)} layer(s) in float{': ' + ', '.join(f'`{t}`' for t in layers) if layers else ''}. "
              "The full candidate table and the Pareto plots are in the run's report.md "
              f"(`{job.run_dir / 'report.md'}`).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

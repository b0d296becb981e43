"""Low rank (activation-aware vs plain SVD) and clustering on EfficientNet-Lite0 (ImageNet weights,
offline): parameters, MACs, top-1 agreement and cosine with fp32 on the held-out photo crops, and
PyTorch eager latency at batch 1, the models timed in turn over --rounds rounds (median of p50s)
so the ratios are side by side on a noisy machine. Prints a Markdown table.

    edgeport crops                                   (once: the calibration / evaluation crops)
    python benchmarks/compress_efficientnet.py [--rounds 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def p50_ms(model: torch.nn.Module, x: torch.Tensor, iterations: int) -> float:
    times = []
    with torch.no_grad():
        for i in range(iterations + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "efficientnet-lite0.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="where the data sets are cached")
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.05, 0.1, 0.2], help="low-rank max_layer_error")
    parser.add_argument("--clusters", type=cluster_spec, nargs="*", default=[(16, "channel"), (64, "layer")],
                        help="clustering runs as CLUSTERS:GRANULARITY (layer | channel)")
    args = parser.parse_args()

    from edgeport.examples.efficientnet import efficientnet_lite0
    from edgeport.pipeline.compress import Cluster, CompressContext, LowRank, compress
    from edgeport.pipeline.compress.measure import macs, parameters
    from edgeport.pipeline.config import load_config
    from edgeport.pipeline.data import load_data
    from edgeport.pipeline.workspace import Workspace

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, {"runs_dir": str(args.runs_dir)})
    sets = load_data(Workspace.open(config))  # the run's own calibration / evaluation sets, cached there
    calibration, evaluation, specs = sets.calibration, sets.evaluation, config.model.inputs
    held_out = torch.from_numpy(evaluation.inputs[specs[0].name])
    original = efficientnet_lite0()
    with torch.no_grad():
        reference = torch.cat([original(b) for b in held_out.split(50)])
    context = CompressContext(inputs=specs, calibration=calibration, teacher=original, base_dir=config.base_dir)

    steps = {"fp32": None, **{f"low-rank activation-aware, max_layer_error {e}": LowRank(max_layer_error=e)
                              for e in args.budgets}}
    rows = []
    example = (torch.zeros(1, *held_out.shape[1:]),)
    for name, step in steps.items():
        start = time.perf_counter()
        model, notes = (original, {}) if step is None else compress(efficientnet_lite0(), step, context)
        seconds = time.perf_counter() - start
        rows.append({"name": name, "model": model.eval(), "seconds": seconds, "notes": notes})
        if isinstance(step, LowRank) and notes["factorised"]:  # plain SVD, the same rank per layer: same parameters
            ranks = {layer: row["rank"] for layer, row in notes["factorised"].items()}
            rows.append({"name": name.replace("activation-aware", "plain SVD, same ranks"),
                         "model": svd_with_ranks(ranks), "seconds": None, "notes": {}})
    for clusters, granularity in args.clusters:
        start = time.perf_counter()
        model, notes = compress(efficientnet_lite0(), Cluster(clusters=clusters, granularity=granularity), context)
        rows.append({"name": f"cluster {clusters} per {granularity} (int8 grid)", "model": model,
                     "seconds": time.perf_counter() - start, "notes": notes})
    for row in rows:
        with torch.no_grad():
            out = torch.cat([row["model"](b) for b in held_out.split(50)])
        row["agreement"] = float((out.argmax(-1) == reference.argmax(-1)).float().mean())
        row["cosine"] = float(torch.nn.functional.cosine_similarity(out, reference, dim=1).mean())
        row["params"], row["macs"] = parameters(row["model"]), macs(row["model"], example)
    x = held_out[:1]
    for round_ in range(args.rounds):
        for row in rows:
            row.setdefault("p50s", []).append(p50_ms(row["model"], x, args.iterations))
            print(f"round {round_ + 1}/{args.rounds} {row['name']:<56} {row['p50s'][-1]:.2f} ms", file=sys.stderr)
    print(f"EfficientNet-Lite0, {len(held_out)} held-out crops, {calibration.inputs[specs[0].name].shape[0]} "
          f"calibration crops, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | params | MACs | top-1 agreement | cosine | eager p50 (ms) | compress (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        seconds = f"{row['seconds']:.1f}" if row["seconds"] else ""
        print(f"| {row['name']} | {row['params']:,} | {row['macs'] / 1e6:.0f}M | {row['agreement']:.3f} | "
              f"{row['cosine']:.4f} | {statistics.median(row['p50s']):.2f} | {seconds} |")
    for row in rows:
        if "factorised" in row["notes"]:
            print(f"\n{row['name']}: {len(row['notes']['factorised'])} layers factorised, "
                  f"{len(row['notes']['kept_whole'])} kept whole (no saving)")
        if "weights_zip_bytes" in row["notes"]:
            folded = row["notes"]["folded_batchnorms"]
            print(f"\n{row['name']}: {row['notes']['note']}; "
                  f"{f'{len(folded)} batch norms folded' if isinstance(folded, list) else folded}")


def cluster_spec(text: str) -> tuple[int, str]:
    clusters, _, granularity = text.partition(":")
    return int(clusters), granularity or "layer"


def svd_with_ranks(ranks: dict[str, int]) -> torch.nn.Module:
    """EfficientNet-Lite0 with the given layers replaced by their plain truncated SVD of that rank."""
    from edgeport.examples.efficientnet import efficientnet_lite0
    from edgeport.pipeline.compress import lowrank

    model = efficientnet_lite0()
    for name, rank in ranks.items():
        parent, _, attribute = name.rpartition(".")
        layer = model.get_submodule(name)
        first, second, _ = lowrank.factors(layer.weight.detach().flatten(1).double(), rank, None)
        setattr(model.get_submodule(parent), attribute, lowrank.two_layers(layer, first, second))
    return model.eval()


if __name__ == "__main__":
    main()

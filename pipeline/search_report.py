"""The search's part of the report: every candidate with its verdict, and the Pareto fronts of
latency vs accuracy and size vs accuracy as PNG plots."""

from __future__ import annotations

from pathlib import Path

from edgeport.metrics import CONFIDENT_PROBABILITY
from edgeport.pipeline.plots import fmt, new_figure, save_figure, share

PLOTS = {"latency": "pareto_latency.png", "size": "pareto_size.png"}


def quality(candidate: dict, budget: dict) -> tuple[str, float | None]:
    """The budget's own metric for the y axis: top-1 agreement, accuracy, or cosine."""
    v = candidate.get("verify") or {}
    if "min_top1_agreement" in budget:
        return "top-1 agreement with PyTorch fp32 (held-out)", v.get("top1_agreement")
    if "min_confident_top1_agreement" in budget:
        return f"top-1 agreement where PyTorch's p >= {CONFIDENT_PROBABILITY} (held-out)", v.get("confident_top1_agreement")
    if "max_accuracy_drop" in budget and v.get("accuracy") is not None:
        return "held-out accuracy", v.get("accuracy")
    return "cosine with PyTorch fp32 (held-out)", v.get("cosine")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better, y higher)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def x_value(candidate: dict, axis: str) -> float | None:
    return candidate.get("p50_ms") if axis == "latency" else (candidate.get("size_bytes") or 0) / 1024 or None


def pareto_plot(search: dict, axis: str, path: Path) -> bool:
    budget = search["budget"]
    shown = [c for c in search["candidates"] if x_value(c, axis) is not None and quality(c, budget)[1] is not None]
    if not shown:
        return False
    ylabel = quality(shown[0], budget)[0]
    points = [(x_value(c, axis), quality(c, budget)[1]) for c in shown]
    fig, ax = new_figure(4.4)
    colours = {"chosen": "#2ca02c", "kept": "#1f77b4", "rejected": "#d62728"}
    for c, (x, y) in zip(shown, points):
        ax.scatter(x, y, s=60 if c["status"] == "chosen" else 30, color=colours.get(c["status"], "grey"),
                   marker="*" if c["status"] == "chosen" else "o", zorder=3)
        ax.annotate(c["label"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="#555", lw=1, label="Pareto front")
    limit = next((budget[k] for k in ("min_top1_agreement", "min_confident_top1_agreement", "min_cosine") if k in budget),
                 None)
    if limit is not None:
        ax.axhline(limit, color="#d62728", lw=0.8, ls=":", label="budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency on {search['device']} (ms, log)" if axis == "latency" else "file size (KB, log)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{axis} vs accuracy: green star = chosen, blue = within budget, red = outside", fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def search_md(search: dict, run_dir: Path, baseline_p50: float | None) -> list[str]:
    budget = ", ".join(f"`{k} = {v}`" for k, v in search["budget"].items())
    chosen = search["chosen"]
    lines = ["", "## Search", "",
             f"Budget {budget} on held-out data the calibration never saw; objective: "
             f"{'smallest file' if search['objective'] == 'size' else 'lowest p50 on `' + search['device'] + '`'}; "
             f"{len(search['candidates'])} candidates on {search['executor']}; "
             f"{search['built']} stage(s) built in this run, the rest from the cache.", ""]
    if chosen:
        lines += [f"**Chosen: {chosen['label']}** — " + ", ".join(filter(None, [
            f"p50 {chosen['p50_ms']:.4f} ms" if chosen["p50_ms"] else None,
            f"{baseline_p50 / chosen['p50_ms']:.2f}x PyTorch eager" if baseline_p50 and chosen["p50_ms"] else None,
            f"top-1 agreement {share(chosen['verify']['top1_agreement'], chosen['verify'].get('top1_interval'))} (95% interval)"
            if chosen["verify"].get("top1_agreement") is not None else None,
            f"{share(chosen['verify']['confident_top1_agreement'], chosen['verify'].get('confident_top1_interval'))} "
            f"on the {chosen['verify'].get('confident_samples')} samples where PyTorch's p >= {CONFIDENT_PROBABILITY}"
            if chosen["verify"].get("confident_top1_agreement") is not None else None,
            f"cosine {chosen['verify']['cosine']:.6f}", f"{chosen['size_bytes'] / 1024:.1f} KB",
            f"{len(chosen['float_layers'])} layer(s) kept in float" if chosen["float_layers"] else None])) + ".", ""]
    lines += [f"| candidate | verdict | why | top-1 agree | top-1 where p >= {CONFIDENT_PROBABILITY} | accuracy (%) | cosine | float layers | "
              "size (KB) | p50 (ms) | speedup |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {"chosen": 0, "kept": 1, "rejected": 2, "failed": 3, "pruned": 4}
    for c in sorted(search["candidates"], key=lambda c: (order.get(c["status"], 5), c["p50_ms"] or 1e9)):
        v = c["verify"] or {}
        speedup = baseline_p50 / c["p50_ms"] if baseline_p50 and c["p50_ms"] else None
        lines.append(f"| {c['label']} | {c['status']} | {c['reason']} | {share(v.get('top1_agreement'), v.get('top1_interval'))} | "
                     f"{share(v.get('confident_top1_agreement'), v.get('confident_top1_interval'))} | {fmt(v.get('accuracy') and v['accuracy'] * 100, '.2f')} | {fmt(v.get('cosine'), '.6f')} | "
                     f"{len(c['float_layers']) if c['verify'] else '—'} | {fmt(c['size_bytes'] and c['size_bytes'] / 1024, '.1f')} | "
                     f"{fmt(c['p50_ms'], '.4f')} | {fmt(speedup, '.2f', '')}{'x' if speedup else ''} |")
    for axis, name in PLOTS.items():
        if (run_dir / name).exists():
            lines += ["", f"![{axis} vs accuracy]({name})"]
    return lines


def write_search_plots(search: dict, run_dir: Path) -> None:
    for axis, name in PLOTS.items():
        pareto_plot(search, axis, run_dir / name)

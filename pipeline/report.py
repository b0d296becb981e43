"""report.json (a public interface), report.md, results.csv and a latency-vs-accuracy plot."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from pathlib import Path

from edgeport.pipeline import report_html
from edgeport.pipeline.plots import fmt, new_figure, save_figure, share
from edgeport.types import write_text_atomic, zip_bytes

SCHEMA_VERSION = 1


def bench_dict(b) -> dict:
    return b.model_dump()


def zipped_bytes(artifact) -> int:
    """The artifact's model files deflated into one zip: what shared (clustered) or zeroed weights
    save, which the raw size does not show."""
    return zip_files(tuple((artifact.root / f.path, f.sha256) for f in artifact.files))


@functools.cache  # by content: table rows and report.json ask for the same artifacts
def zip_files(files: tuple[tuple[Path, str], ...]) -> int:
    return zip_bytes(*(path for path, _ in files))


def table_rows(result) -> list[dict]:
    """One row per (artifact, benchmark variant), baseline first: what the CLI table and results.csv show."""
    base_p50 = result.baseline_bench[0].p50_ms if result.baseline_bench else None
    rows = []
    for b in result.baseline_bench or [None]:
        if b is None and not result.config.bench.baseline:
            break
        rows.append({
            "target": "pytorch", "precision": "fp32", "variant": "eager", "size_kb": (b.model_size_bytes / 1024) if b else None,
            "zip_kb": None,
            "accuracy_pct": result.reference_accuracy * 100 if result.reference_accuracy is not None else None,
            "cosine": 1.0, "worst_output": None, "top1_agreement": 1.0, "verified": "reference",
            "p50_ms": b.p50_ms if b else None, "p90_ms": b.p90_ms if b else None,
            "speedup": 1.0 if b else None, "device": b.device if b else "local",
            "device_accuracy_pct": None, "device_cosine": None, "error": None,
        })
    for r in result.artifacts:
        v = r.verify
        verified = "error" if r.error else (("pass" if v.passed else "FAIL") if v else "not run")
        for b in r.bench or [None]:
            rows.append({
                "target": r.target, "precision": r.precision,
                "variant": " ".join(filter(None, [r.variant,
                                                  f"hint={b.options.get('hint')}" if b and "hint" in b.options else ""])),
                "size_kb": r.artifact.size_bytes / 1024 if r.artifact else None,
                "zip_kb": zipped_bytes(r.artifact) / 1024 if r.artifact else None,
                "accuracy_pct": v.accuracy * 100 if v and v.accuracy is not None else None,
                "cosine": v.cosine if v else None,
                "worst_output": v.summary()["worst_output"] if v else None,
                "top1_agreement": v.top1_agreement if v else None,
                "verified": verified,
                "p50_ms": b.p50_ms if b else None, "p90_ms": b.p90_ms if b else None,
                # against PyTorch eager on this machine: a ratio only means something on the same device
                "speedup": (base_p50 / b.p50_ms) if b and base_p50 and b.p50_ms and b.device == "local" else None,
                "device": b.device if b else "local",
                "device_accuracy_pct": (b.device_verify["accuracy"] * 100
                                        if b and b.device_verify and b.device_verify.get("accuracy") is not None else None),
                "device_cosine": b.device_verify["cosine"] if b and b.device_verify else None,
                "error": r.error or "; ".join(r.bench_errors) or None,
            })
    return rows


def artifact_json(r, result_dir: Path) -> dict:
    """One artifact's entry; one that could not be built has its error (and log) instead of files."""
    if r.artifact is None:
        return {"id": None, "target": r.target, "precision": r.precision, "variant": r.variant, "error": r.error,
                "log": r.log, "verify": None, "bench": []}
    return {
        "id": r.artifact.id, "target": r.artifact.target, "precision": r.artifact.precision,
        "variant": r.artifact.variant,
        "converter": r.artifact.converter, "format": r.artifact.format, "size_bytes": r.artifact.size_bytes,
        "zip_bytes": zipped_bytes(r.artifact),
        "path": os.path.relpath(r.artifact.root, result_dir),  # relative to the run folder (a recipe's are below it)
        "files": [{"path": f"{r.artifact.root.name}/{f.path}", "sha256": f.sha256, "size_bytes": f.size_bytes}
                  for f in r.artifact.files],
        "inputs": [s.model_dump() for s in r.artifact.inputs],
        "outputs": [s.model_dump() for s in r.artifact.outputs],
        "options": r.artifact.options,
        "verify": r.verify.summary() if r.verify else None,
        "sensitivity": r.sensitivity[:10],
        "bench": [bench_dict(b) for b in r.bench],
        "error": r.error, "log": r.log, "bench_errors": r.bench_errors, "warnings": r.warnings,
    }


def report_json(result) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run": result.config.name,
        "model": result.model_info,
        "baseline": {
            "target": "pytorch", "precision": "fp32",
            "verify": {"accuracy": result.reference_accuracy},
            "bench": [bench_dict(b) for b in result.baseline_bench],
        },
        "artifacts": [artifact_json(r, result.run_dir) for r in result.artifacts],
        "compression": result.compression,
        **({"search": result.search} if result.search else {}),
    }


def metrics_note(result) -> str:
    """How to read the cosine and top-1 columns, for this model's outputs."""
    outputs = next((r.artifact.outputs for r in result.artifacts if r.artifact), [])
    scored = next((o.name for r in result.artifacts if r.verify for o in r.verify.outputs
                   if o.top1_agreement is not None), None)
    note = ("Cosine is the mean over held-out samples of each sample's cosine with PyTorch's output"
            + (f"; with {len(outputs)} outputs the worst one is shown, named in brackets (each output's figures are "
               "below)" if len(outputs) > 1 else "") + ". ")
    if scored is None:
        return note + ("No output is taken as class scores (no labels fit one, and model.class_scores is not set), "
                       "so there is no top-1 agreement or accuracy.")
    why = "as model.class_scores declares" if result.config.model.class_scores else "[batch, classes] with labels that fit"
    return note + f"Top-1 agreement and accuracy are measured on the class-score output `{scored}` ({why})."


def worst(row: dict, result) -> str:
    """` (name)` of the worst output, for models with several."""
    several = any(r.artifact and len(r.artifact.outputs) > 1 for r in result.artifacts)
    return f" ({row['worst_output']})" if several and row.get("worst_output") else ""


def outputs_md(result) -> list[str]:
    """Each output's figures per artifact, for models with several outputs or an input-insensitive one."""
    verified = [r for r in result.artifacts if r.verify]
    if not verified or (len(verified[0].verify.outputs) < 2 and not any(o.centred for r in verified for o in r.verify.outputs)):
        return []
    lines = ["", "## Outputs", "",
             "Per output, on the held-out samples: cosine per sample (mean, worst), SQNR, max abs error, top-1 "
             "agreement where the output holds class scores. \"centred\" marks an output that hardly varies with the "
             "input, judged on its input-dependent part.", "",
             "| artifact | output | cosine (mean) | cosine (worst sample) | SQNR (dB) | max abs | top-1 agree [95%] | note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in verified:
        for o in r.verify.outputs:
            note = f"centred ({o.input_dependence:.2%} varies)" if o.centred else ""
            lines.append(f"| {r.label} | {o.name} | {o.cosine:.6f} | {fmt(o.cosine_min, '.6f')} | {o.sqnr_db:.1f} | "
                         f"{o.max_abs:.3g} | {share(o.top1_agreement, o.top1_interval)} | {note} |")
    return lines


def report_md(result, rows: list[dict]) -> str:
    cfg = result.config
    lines = [f"# edgeport run `{cfg.name}`", "",
             f"Model `{cfg.model.source}`; evaluation on held-out `{cfg.data.source}` data; "
             f"latency on device(s) {', '.join(f'`{d}`' for d in dict.fromkeys(r['device'] for r in rows)) or '`local`'}, "
             f"batch 1. Accuracy and cosine are the host's verification; \"on device\" columns rerun held-out "
             "samples on that device. " + metrics_note(result), "",
             "| target | precision | variant | device | size (KB) | zip (KB) | accuracy (%) | cosine | top-1 agree | "
             "verified | p50 (ms) | p90 (ms) | speedup | on device: accuracy (%) | on device: cosine |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['target']} | {row['precision']} | {row['variant']} | {row['device']} | {fmt(row['size_kb'], '.1f')} | "
            f"{fmt(row['zip_kb'], '.1f')} | {fmt(row['accuracy_pct'], '.2f')} | {fmt(row['cosine'], '.6f')}{worst(row, result)} | "
            f"{fmt(row['top1_agreement'], '.4f')} | "
            f"{row['verified']} | {fmt(row['p50_ms'], '.4f')} | {fmt(row['p90_ms'], '.4f')} | "
            f"{fmt(row['speedup'], '.2f', '')}{'x' if row['speedup'] else ''} | {fmt(row['device_accuracy_pct'], '.2f')} | "
            f"{fmt(row['device_cosine'], '.6f')} |"
        )
    lines += outputs_md(result)
    failures = result.failures
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    warnings = [f"{r.label}: {w}" for r in result.artifacts for w in [*(r.verify.warnings if r.verify else []), *r.warnings]]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in dict.fromkeys(warnings)]
    if result.compression:
        lines += ["", "## Compression", "",
                  "Each step measured before and after on the held-out data; latency is PyTorch eager on the saved "
                  "program (.pt2) of each step, same harness.", "",
                  "| step | params | MACs | size (KB) | zip (KB) | accuracy (%) | eager p50 (ms) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in result.compression:
            def pair(key, scale=1.0, spec=",.0f"):
                before, after = row[key + "_before"], row[key + "_after"]
                return f"{fmt(before and before * scale, spec)} → {fmt(after and after * scale, spec)}"

            lines.append(f"| {row['step']} | {pair('params')} | {pair('macs')} | {pair('size_bytes', 1 / 1024, '.1f')} | "
                         f"{pair('zip_bytes', 1 / 1024, '.1f')} | {pair('accuracy', 100, '.2f')} | {pair('p50_ms', 1, '.4f')} |")
        notes = [row["notes"]["note"] for row in result.compression if "note" in row["notes"]]
        from edgeport.pipeline.reference import judged_against  # imports torch: not for `targets`

        if judged_against(cfg) == "original":
            notes.insert(0, "Every artifact (fp32 too) is compared with the original model, not with these steps' "
                            "float output (verify.against; steps that only prepare for int8 imply it).")
        lines += [f"- {n}" for n in dict.fromkeys(notes)]
        ranges = [f"{r.label}: {r.artifact.options['quantization']['ranges']}" for r in result.artifacts
                  if r.artifact is not None and "ranges" in r.artifact.options.get("quantization", {})]
        if ranges:
            lines += ["", "int8 ranges of each artifact: " + "; ".join(ranges) + "."]
    facts = (result.baseline_bench[0].device_facts if result.baseline_bench else
             next((b.device_facts for r in result.artifacts for b in r.bench), {}))
    if facts:
        lines += ["", "## Machine", "", f"{facts.get('cpu')}, {facts.get('cores')} cores, {facts.get('arch')}, {facts.get('os')}"]
    lines += ["", "Speedup is PyTorch eager fp32's p50 divided by the row's p50, both timed by the same harness "
              "in a fresh process each, inputs bound once. OpenVINO rows use OpenVINO's own per-request clock "
              "(as benchmark_app reports); the others a wall clock around the runtime call, which includes a few "
              "microseconds of Python binding.", ""]
    processes = result.config.bench.processes
    if processes > 1:
        spread = [(b.p50_per_process_ms, r.artifact.label) for r in result.artifacts for b in r.bench
                  if len(b.p50_per_process_ms) > 1 and None not in b.p50_per_process_ms]
        widest = max(spread, key=lambda s: max(s[0]) / min(s[0]), default=None)
        lines += [f"Each row is the median of {processes} fresh processes' p50s" + (
            f"; the widest spread was {widest[1]}'s, {' / '.join(f'{v:.4f}' for v in widest[0])} ms." if widest else "."), ""]
    for r in result.artifacts:
        if r.sensitivity:
            lines += ["", f"## int8 sensitivity: {r.label}", "",
                      "Output SQNR when only that tensor is quantized with its calibrated scale (lower = the layer "
                      "costs more; keep the worst in float with `min_cosine` in the target's options).", "",
                      "| tensor | op | output SQNR (dB) |", "|---|---|---:|"]
            lines += [f"| {s['tensor']} | {s['op']} | {s['output_sqnr_db']:.1f} |" for s in r.sensitivity[:10]]
            aware = r.artifact.options.get("quantization", {}).get("accuracy_aware")
            if aware:
                first, last = aware["steps"][0], aware["steps"][-1]
                accuracy = (f"; calibration-data accuracy {first['accuracy']:.2%} → {last['accuracy']:.2%} "
                            f"(float {last['reference_accuracy']:.2%})" if "accuracy" in last else "")
                lines += ["", f"Accuracy-aware ({'met' if aware['met'] else 'NOT met'}: "
                          f"{json.dumps({k: v for k, v in aware['budget'].items() if v is not None})}): kept "
                          f"{', '.join(aware['float_tensors']) or 'nothing'} in float (nodes "
                          f"{', '.join(aware['nodes_excluded']) or '—'}); calibration-data cosine "
                          f"{first['cosine']:.5f} → {last['cosine']:.5f}{accuracy}; size "
                          f"{aware['size_bytes_all_int8'] / 1024:.1f} → {aware['size_bytes'] / 1024:.1f} KB; p50 "
                          f"{aware['p50_ms_all_int8']:.4f} → {aware['p50_ms']:.4f} ms (one thread, in-process, side by side)."]
            png = f"sensitivity-{r.artifact.slug}.png"
            if (result.run_dir / png).exists():
                lines += ["", f"![sensitivity]({png})"]
    if (result.run_dir / "latency_vs_accuracy.png").exists():
        lines += ["![latency vs accuracy](latency_vs_accuracy.png)", ""]
    if result.search:
        from edgeport.pipeline.search_report import search_md

        base = result.baseline_bench[0].p50_ms if result.baseline_bench else None
        lines += search_md(result.search, result.run_dir, base if result.search["device"] == "local" else None)
    return "\n".join(lines)


def results_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["target"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot(rows: list[dict], path: Path) -> bool:
    # One device per plot: latencies of different devices are not comparable on one axis.
    points = [r for r in rows if r["p50_ms"] is not None and r["accuracy_pct"] is not None and r["device"] == "local"]
    if not points:
        return False
    fig, ax = new_figure(4.2)
    for r in points:
        label = f"{r['target']} {r['precision']} {r['variant']}".strip()
        ax.scatter(r["p50_ms"], r["accuracy_pct"], s=40)
        ax.annotate(label, (r["p50_ms"], r["accuracy_pct"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"latency vs accuracy ({points[0]['device']})")
    ax.grid(True, alpha=0.3)
    save_figure(fig, path)
    return True


def sensitivity_chart(layers: list[dict], title: str, path: Path) -> None:
    worst = layers[:10][::-1]
    fig, ax = new_figure(0.35 * len(worst) + 1.2)
    ax.barh([s["tensor"] for s in worst], [s["output_sqnr_db"] for s in worst], color="#c0504d")
    ax.set_xlabel("output SQNR with only this tensor in int8 (dB, lower = more sensitive)")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def write_reports(result) -> dict[str, Path]:
    rows = table_rows(result)
    for r in result.artifacts:
        if r.sensitivity:
            sensitivity_chart(r.sensitivity, f"int8 sensitivity, {r.artifact.label}",
                              result.run_dir / f"sensitivity-{r.artifact.slug}.png")
    paths = {name: result.run_dir / name for name in ("report.json", "report.md", "report.html", "results.csv")}
    png = result.run_dir / "latency_vs_accuracy.png"
    if plot(rows, png):
        paths["plot"] = png
    if result.search:
        from edgeport.pipeline.search_report import write_search_plots

        write_search_plots(result.search, result.run_dir)
    write_text_atomic(paths["report.json"], json.dumps(report_json(result), indent=2))
    markdown = report_md(result, rows)
    write_text_atomic(paths["report.md"], markdown)
    write_text_atomic(paths["report.html"], report_html.render(markdown, result.run_dir))  # the same text, shareable
    write_text_atomic(paths["results.csv"], results_csv(rows))
    return paths

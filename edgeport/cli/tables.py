"""Rich tables for results a person reads at a glance."""

from __future__ import annotations

from rich.table import Table

from edgeport.pipeline.plots import fmt
from edgeport.pipeline.report import table_rows


def results_table(result) -> Table:
    outputs = max((len(r.artifact.outputs) for r in result.artifacts if r.artifact), default=1)
    cosine = f"cosine (worst of {outputs} outputs)" if outputs > 1 else "cosine"  # each output: report.md
    table = Table(title=f"edgeport run '{result.config.name}'", title_justify="left")
    for col in ("target", "precision", "variant", "device", "size (KB)", "accuracy (%)", cosine, "p50 (ms)", "p90 (ms)",
                "speedup", "verified"):
        table.add_column(col, justify="left" if col in ("target", "precision", "variant", "device", "verified") else "right")
    for row in table_rows(result):
        verdict = {"pass": "[green]pass[/green]", "FAIL": "[red]FAIL[/red]", "error": "[red]error[/red]"}.get(row["verified"], row["verified"])
        table.add_row(row["target"], row["precision"], row["variant"], row["device"], fmt(row["size_kb"], ".1f"),
                      fmt(row["accuracy_pct"], ".2f"), fmt(row["cosine"], ".6f"), fmt(row["p50_ms"], ".4f"),
                      fmt(row["p90_ms"], ".4f"), f"{row['speedup']:.2f}x" if row["speedup"] else "—", verdict)
    return table


def verify_table(reports) -> Table:
    table = Table("target", "precision", "samples", "accuracy (%)", "cosine", "SQNR (dB)", "max abs", "top-1 agree", "verdict")
    for r in reports:
        s = r.summary()
        table.add_row(r.target, r.precision, str(r.samples), fmt(s["accuracy"] and s["accuracy"] * 100, ".2f"),
                      f"{s['cosine']:.6f}", f"{s['sqnr_db']:.1f}", f"{s['max_abs']:.3g}", fmt(s["top1_agreement"], ".4f"),
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    return table


def bench_table(results) -> Table:
    table = Table("artifact", "device", "arch", "runtime", "threads", "iterations", "p50 (ms)", "p90 (ms)", "p99 (ms)",
                  "mean ± std (ms)", "load (ms)", "peak RSS (MB)")
    for a, b in results:
        table.add_row(a.label + (f" hint={b.options['hint']}" if "hint" in b.options else ""), b.device,
                      str(b.device_facts.get("arch")), f"{b.runtime} {b.runtime_version}",
                      str(b.threads), str(b.iterations), fmt(b.p50_ms, ".4f"), fmt(b.p90_ms, ".4f"), fmt(b.p99_ms, ".4f"),
                      f"{b.mean_ms:.4f} ± {b.std_ms:.4f}", f"{b.load_ms:.1f}", f"{b.peak_rss_mb:.0f}")
    return table


def compression_table(rows) -> Table:
    table = Table("step", "params", "MACs", "zip (KB)", "accuracy (%)", "eager p50 (ms)", title="compression")
    for r in rows:
        table.add_row(r["step"], f"{r['params_before']:,} → {r['params_after']:,}", f"{r['macs_before']:,} → {r['macs_after']:,}",
                      f"{r['zip_bytes_before'] / 1024:.1f} → {r['zip_bytes_after'] / 1024:.1f}",
                      f"{fmt(r['accuracy_before'] and r['accuracy_before'] * 100, '.2f')} → "
                      f"{fmt(r['accuracy_after'] and r['accuracy_after'] * 100, '.2f')}",
                      f"{r['p50_ms_before']:.4f} → {r['p50_ms_after']:.4f}")
    return table


def search_table(result) -> Table:
    search = result.run.config.search
    table = Table("candidate", "verdict", "why", "top-1 agree", "top-1 where p >= 0.5", "cosine", "size (KB)",
                  f"p50 on {search.device} (ms)",
                  title=f"edgeport tune '{result.run.config.name}'", title_justify="left")
    colour = {"chosen": "green", "kept": "cyan", "rejected": "red", "failed": "red", "pruned": "dim"}
    for c in result.candidates:
        v = c.verify or {}
        table.add_row(c.label, f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", c.reason,
                      fmt(v.get("top1_agreement"), ".4f"), fmt(v.get("confident_top1_agreement"), ".4f"),
                      fmt(v.get("cosine"), ".6f"),
                      fmt(c.size_bytes and c.size_bytes / 1024, ".1f"), fmt(c.p50_ms, ".4f"))
    return table


def sensitivity_table(entry) -> Table:
    table = Table("rank", "tensor", "op", "output SQNR (dB)", title=f"{entry.target}/{entry.precision}: worst layers")
    for i, s in enumerate(entry.sensitivity[:10], 1):
        table.add_row(str(i), s["tensor"], s["op"], f"{s['output_sqnr_db']:.1f}")
    return table


def profiles_table(profiles) -> Table:
    from rich.markup import escape

    table = Table("name", "transport", "address", "arch", "threads", "runtimes", "profile")
    for p in profiles:
        table.add_row(p.name, p.transport, escape(p.address), p.arch or "—", str(p.threads or "all"),
                      ", ".join(p.runtimes) or "—", escape(p.source))
    return table


def targets_table(rows: list[dict]) -> Table:
    from rich.markup import escape

    table = Table("target", "installed", "precisions", "install with", "runtime")
    for r in rows:
        table.add_row(r["name"], "[green]yes[/green]" if r["installed"] else "[red]no[/red]", ", ".join(r["precisions"]),
                      escape(f"pip install 'edgeport[{r['extra']}]'"), r["description"])
    return table


def device_report(console, report: dict) -> None:
    """What `devices check` found, a few lines."""
    from rich.markup import escape

    facts = report["facts"]
    console.print(f"[bold]{report['device']}[/bold] ({escape(report['address'])}): {facts.get('os')}", highlight=False)
    temperature = facts.get("temperature_c")
    console.print(f"  arch    {facts.get('arch')}  cpu {facts.get('cpu')}  cores {facts.get('cores')}"
                  f"  governor {facts.get('governor') or 'unreadable'}"
                  f"  temperature {f'{temperature:.1f} °C' if temperature is not None else 'unreadable'}", highlight=False)
    console.print(f"  python  {facts.get('python')}  numpy {facts.get('numpy') or '[red]missing[/red]'}", highlight=False)
    for runtime, found in report["runtimes"].items():
        shown = f"{found['version']} ({found['module']})" if found else "[red]missing[/red]"
        console.print(f"  {runtime:<12} {shown}", highlight=False)

"""Commands over a run config: run, demo, export, verify, compress, tune, calibrate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

import edgeport
from edgeport.cli.common import (
    ConfigArg, JsonOpt, PrecisionOpt, TargetOpt, VerboseOpt, err, handles_errors, listening, load, out, print_json,
    setup_logging, show_paths,
)
from edgeport.errors import ConfigError

RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="ignore cached stages and redo everything")]


def register(app: typer.Typer, calibrate: typer.Typer) -> None:
    for command in (run, demo, export, verify, tune):
        app.command()(handles_errors(command))
    app.command("compress")(handles_errors(compress_command))
    calibrate.command("run")(handles_errors(calibrate_run))
    calibrate.command("report")(handles_errors(calibrate_report))


def run(
    config: ConfigArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the config and print it resolved, then stop")] = False,
    name: Annotated[Optional[str], typer.Option(help="run name (overrides the file)")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="folder for run folders (default runs/)")] = None,
    threads: Annotated[Optional[int], typer.Option(min=0, help="benchmark threads (overrides [bench]; 0 = every core)")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="allow loading a pickled model (runs its code)")] = False,
    rebuild: RebuildOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole pipeline from one config: export, quantize, verify, benchmark, report."""
    setup_logging(verbose)
    cfg = load(config, name=name, runs_dir=str(runs_dir) if runs_dir else None, **{"bench.threads": threads},
               **{"model.trust_model": True if trust_model else None})
    if dry_run:
        from edgeport.pipeline.config import to_toml
        from edgeport.pipeline.preflight import preflight

        preflight(cfg)
        out.print(to_toml(cfg), highlight=False, markup=False)
        return
    with listening(cfg, verbose) as listener:  # third-party output goes to the run's log meanwhile
        result = edgeport.run(cfg, listener, rebuild=rebuild)
    show_result(result, as_json)


def demo(
    runs_dir: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
    rebuild: RebuildOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train (once) a small CNN on scikit-learn's digits and take it through every installed runtime."""
    setup_logging(verbose)
    from importlib.resources import files

    from edgeport import targets

    cfg = load(Path(str(files("edgeport.examples") / "digits.toml")), runs_dir=str(runs_dir))
    for t in targets.available():  # every runtime the table knows: the file's options, else the target's defaults
        if not targets.is_installed(t):
            err.print(f"[yellow]skipping {t}[/yellow]: not installed " + escape(f"(pip install 'edgeport[{targets.info(t).extra}]')"))
            cfg.targets.pop(t, None)
        else:
            cfg.targets.setdefault(t, {})
    with listening(cfg, verbose) as listener:  # third-party output goes to the run's log meanwhile
        result = edgeport.run(cfg, listener, rebuild=rebuild)
    show_result(result, as_json)


def show_result(result, as_json: bool) -> None:
    """The table (or report.json with --json), then failures as a VerificationError (exit 3)."""
    if as_json:
        print_json(json.loads(result.reports["report.json"].read_text()))
    else:
        from edgeport.cli.tables import results_table

        out.print(results_table(result))
        show_paths(result.run_dir, result.reports["report.md"], result.bundles)
    result.raise_for_failures()


def export(config: ConfigArg, target: TargetOpt = None, precision: PrecisionOpt = None, as_json: JsonOpt = False,
           verbose: VerboseOpt = False) -> None:
    """Export (and quantize) the configured model; prints the artifact folders."""
    setup_logging(verbose)
    cfg = load(config)
    with listening(cfg, verbose) as listener:
        artifacts = edgeport.export(cfg, target, precision, listener)
    if as_json:
        print_json([{"target": a.target, "precision": a.precision, "path": str(a.root), "size_bytes": a.size_bytes,
                     "id": a.id} for a in artifacts])
        return
    for a in artifacts:
        out.print(f"{a.label:<22} {a.size_bytes / 1024:9.1f} KB  {a.root}", highlight=False)


def verify(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact folders (holding artifact.json)", show_default=False)],
    config: Annotated[Path, typer.Option("--config", "-c", help="the run config: reference model and evaluation data")],
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check artifacts against the PyTorch model on held-out data (hashes first); exit 3 on a failure."""
    setup_logging(verbose)
    from edgeport.errors import VerificationError

    cfg = load(config)
    with listening(cfg, verbose) as listener:
        reports = edgeport.verify(cfg, artifacts, listener)
    show_reports(reports, as_json)
    failed = [f"{r.target}/{r.precision}: {f}" for r in reports for f in r.failures]
    if failed:
        raise VerificationError(failed)


def show_reports(reports, as_json: bool) -> None:
    if as_json:
        print_json([r.model_dump() for r in reports])
    else:
        from edgeport.cli.tables import verify_table

        out.print(verify_table(reports))


def compress_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="run config with [[compress]] steps")],
    model: Annotated[Optional[str], typer.Argument(help="model source (overrides [model] source)")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="where to copy the compressed model (.pt2)")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the [[compress]] steps alone; writes the compressed model as a torch.export .pt2."""
    setup_logging(verbose)
    cfg = load(config, **{"model.source": model})
    with listening(cfg, verbose) as listener:
        compressed = edgeport.compress(cfg, listener)
    final = compressed.path
    if output:
        try:
            shutil.copyfile(final, output)
        except OSError as e:
            raise ConfigError(f"--out {output}: cannot write the compressed model there ({e.strerror})") from e
        final = output
    if as_json:
        print_json({"model": str(final), "steps": compressed.rows})
        return
    from edgeport.cli.tables import compression_table

    out.print(compression_table(compressed.rows))
    out.print(f"compressed model: {final}\nuse it with:      source = \"{final}\"", highlight=False)


def tune(
    config: ConfigArg,
    executor: Annotated[Optional[str], typer.Option(help="local (process pool) or ray (overrides [search])")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="local pool size (0 = every core)")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help='"local", "auto" or "ray://host:port"')] = None,
    rebuild: RebuildOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Find the fastest (or smallest) artifact that meets the [search] accuracy budget on held-out
    data: builds, verifies and benchmarks every candidate through the cached stages, reports the
    Pareto fronts and packs the chosen one. Exit 2 when nothing meets the budget (naming the closest)."""
    setup_logging(verbose)
    cfg = load(config, **{"search.executor": executor, "search.workers": workers, "search.ray_address": ray_address})
    with listening(cfg, verbose) as listener:
        result = edgeport.tune(cfg, listener, rebuild=rebuild)
    if as_json:
        print_json(result.summary())
        return
    from edgeport.cli.tables import search_table

    out.print(search_table(result))
    out.print(f"chosen:     {result.chosen.label} ({result.chosen.path})\nbuilt:      {len(result.built)} stage(s) new, "
              "the rest from the cache", highlight=False)
    show_paths(result.run.run_dir, result.run.reports["report.md"], result.run.bundles)


def calibrate_run(config: ConfigArg, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Calibrate and quantize alone, and show each artifact's verification against PyTorch."""
    setup_logging(verbose)
    cfg = load(config)
    with listening(cfg, verbose) as listener:
        result = edgeport.run(cfg, listener, until="verify")
    show_reports([r.verify for r in result.artifacts if r.verify], as_json)


def calibrate_report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="a finished run folder", show_default=False)],
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The ten most sensitive layers of each int8 artifact of a finished run."""
    setup_logging(verbose)
    shown = [a for a in edgeport.report(run_dir).artifacts if a.sensitivity]
    if as_json:
        print_json([{"target": a.target, "precision": a.precision, "sensitivity": a.sensitivity} for a in shown])
        return
    from edgeport.cli.tables import sensitivity_table

    if not shown:
        out.print("no per-layer sensitivity in this run (int8 artifacts of targets that rank layers have it)")
    for a in shown:
        out.print(sensitivity_table(a))

"""The edgeport command line. Commands parse options, call the library and print; heavy
imports happen inside commands so that `edgeport --help` is instant."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as usage
except ImportError:  # pragma: no cover
    from click import exceptions as usage

from edgeport.errors import EdgeportError

# Off a terminal rich would wrap tables at 80 columns; results are wider.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="run config (TOML)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show log messages")]


def fail(error: EdgeportError | str, as_json: bool = False, code: int | None = None, **extra) -> typer.Exit:
    """One red line on stderr, or with --json one JSON object on stdout; the Exit to raise."""
    code = code if code is not None else getattr(error, "exit_code", 2)
    message = " | ".join(line.strip() for line in str(error).strip().splitlines()) or error.__class__.__name__
    if as_json:
        out.print_json(json.dumps({"error": message, "code": code, **extra}, default=str))
    else:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handles_errors(command):
    """Every command's error handler: an EdgeportError ends as one line (or the JSON error object
    with --json) and its exit code. Anything else is a bug: traceback, exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeportError as e:
            raise fail(e, kwargs.get("as_json", False)) from None

    return wrapper


class OneLineUsageErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument, an unknown command) are one line and
    exit code 2 like every other user error, not click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except usage.NoArgsIsHelpError as e:
            e.show()
            code = e.exit_code
        except usage.UsageError as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            code = fail(f"{e.format_message()}{where}", "--json" in args, code=e.exit_code).exit_code
        except usage.ClickException as e:
            code = fail(e.format_message(), "--json" in args, code=e.exit_code).exit_code
        except typer.Abort:
            err.print("Aborted!")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    help="Take a trained PyTorch model to the edge: export per runtime, calibrate int8, verify, benchmark.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=OneLineUsageErrors,
    rich_markup_mode=None,  # help texts name TOML sections such as [search]: plain text, not markup
)


def setup_logging(verbose: bool) -> None:
    from edgeport import logs

    logs.setup(verbose)


def load(config: Path, **overrides):
    from edgeport.pipeline.config import load_config

    return load_config(config, {k: v for k, v in overrides.items() if v is not None})


@app.command()
@handles_errors
def run(
    config: ConfigArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the resolved config and stop")] = False,
    name: Annotated[Optional[str], typer.Option(help="run name (overrides the file)")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="folder for run folders (default runs/)")] = None,
    threads: Annotated[Optional[int], typer.Option(min=0, help="benchmark threads (overrides [bench]; 0 = every core)")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="allow loading a pickled model (runs its code)")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="ignore cached stages and redo everything")] = False,
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
    finish(execute(cfg, rebuild, verbose), as_json)


@app.command()
@handles_errors
def demo(
    runs_dir: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
    rebuild: Annotated[bool, typer.Option("--rebuild", help="redo every stage")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train (once) a small CNN on scikit-learn's digits and take it through every installed runtime."""
    setup_logging(verbose)
    from importlib.resources import files

    from edgeport import targets
    from edgeport.pipeline.config import load_config

    path = Path(str(files("edgeport.examples") / "digits.toml"))
    cfg = load_config(path, {"runs_dir": str(runs_dir)})
    missing = [t for t in cfg.targets if not targets.is_installed(t)]
    for t in missing:
        err.print(f"[yellow]skipping {t}[/yellow]: not installed " + escape(f"(pip install 'edgeport[{targets.info(t).extra}]')"))
    cfg.targets = {k: v for k, v in cfg.targets.items() if k not in missing}
    finish(execute(cfg, rebuild, verbose), as_json)


def execute(cfg, rebuild: bool, verbose: bool):
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.run import run as run_pipeline

    with progress_listener(err, verbose, cfg.run_dir) as listener:
        return run_pipeline(cfg, listener, rebuild=rebuild)


def finish(result, as_json: bool) -> None:
    """Print the result table (or JSON) and exit 3 when an artifact failed verification."""
    if as_json:
        out.print_json(json.dumps(json.loads(result.reports["report.json"].read_text())))
    else:
        from edgeport.cli_tables import results_table

        out.print(results_table(result))
        out.print(f"run folder: {result.run_dir}\nreport:     {result.reports['report.md']}", highlight=False)
        show_logs(result.run_dir)
        for bundle in result.bundles:
            out.print(f"bundle:     {bundle}", highlight=False)
    if result.failures:
        for failure in result.failures:
            err.print(f"[red]verification failed:[/red] {escape(failure)}", highlight=False)
        raise typer.Exit(3)


def show_logs(run_dir: Path) -> None:
    if (run_dir / "logs").is_dir():
        out.print(f"logs:       {run_dir / 'logs'} (what the libraries printed)", highlight=False)


@app.command()
@handles_errors
def tune(
    config: ConfigArg,
    executor: Annotated[Optional[str], typer.Option(help="local (process pool) or ray (overrides [search])")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="local pool size (0 = every core)")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help='"local", "auto" or "ray://host:port"')] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="ignore cached stages and redo everything")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Find the fastest (or smallest) artifact that meets the [search] accuracy budget on held-out
    data: builds, verifies and benchmarks every candidate through the cached stages, reports the
    Pareto fronts and packs the chosen one. Exit 2 when nothing meets the budget (naming the closest)."""
    setup_logging(verbose)
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.search import tune as run_search

    cfg = load(config, **{"search.executor": executor, "search.workers": workers, "search.ray_address": ray_address})
    with progress_listener(err, verbose, cfg.run_dir) as listener:
        result = run_search(cfg, listener, rebuild=rebuild)
    if as_json:
        out.print_json(json.dumps(result.summary(), default=str))
        return
    from edgeport.cli_tables import search_table

    out.print(search_table(result))
    chosen = result.chosen
    out.print(f"chosen:     {chosen.label} ({chosen.path})\nbuilt:      {len(result.built)} stage(s) new, "
              f"the rest from the cache\nreport:     {result.run.reports['report.md']}", highlight=False)
    show_logs(result.run.run_dir)
    for bundle in result.run.bundles:
        out.print(f"bundle:     {bundle}", highlight=False)


@app.command()
@handles_errors
def export(
    config: ConfigArg,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="only this target (repeatable)")] = None,
    precision: Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="only this precision (repeatable)")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export (and quantize) the configured model; prints the artifact folders."""
    setup_logging(verbose)
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.run import Run

    cfg = load(config)
    with progress_listener(err, verbose, cfg.run_dir) as listener, Run(cfg, listener) as job:
        artifacts = job.artifacts(target, precision)
    if as_json:
        out.print_json(json.dumps([{"target": a.target, "precision": a.precision, "path": str(a.root),
                                    "size_bytes": a.size_bytes, "id": a.id} for a in artifacts]))
    else:
        for a in artifacts:
            out.print(f"{a.label:<22} {a.size_bytes / 1024:9.1f} KB  {a.root}", highlight=False)


@app.command("compress")
@handles_errors
def compress_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="run config with [[compress]] steps")],
    model: Annotated[Optional[str], typer.Argument(help="model source (overrides [model] source)")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="where to copy the compressed model (.pt2)")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the [[compress]] steps alone; writes the compressed model as a torch.export .pt2."""
    setup_logging(verbose)
    import shutil

    from edgeport.cli_progress import progress_listener
    from edgeport.errors import ConfigError
    from edgeport.pipeline.run import Run

    cfg = load(config, **{"model.source": model})
    if not cfg.compress:
        raise ConfigError(f"{config}: no [[compress]] steps to run")
    with progress_listener(err, verbose, cfg.run_dir) as listener, Run(cfg, listener) as job:
        job.model  # runs the chain
        final = job.compressed_path
    if output:
        try:
            shutil.copyfile(final, output)
        except OSError as e:
            raise ConfigError(f"--out {output}: cannot write the compressed model there ({e.strerror})") from e
        final = output
    if as_json:
        out.print_json(json.dumps({"model": str(final), "steps": job.compression}, default=str))
        return
    from edgeport.cli_tables import compression_table

    out.print(compression_table(job.compression))
    out.print(f"compressed model: {final}\nuse it with:      source = \"{final}\"", highlight=False)


@app.command()
@handles_errors
def verify(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact folders (holding artifact.json)", show_default=False)],
    config: Annotated[Path, typer.Option("--config", "-c", help="the run config: reference model and evaluation data")],
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check artifacts against the PyTorch model on held-out data (hashes first)."""
    setup_logging(verbose)
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.run import Run
    from edgeport.types import Artifact

    cfg = load(config)
    loaded = [Artifact.load(p) for p in artifacts]
    with progress_listener(err, verbose, cfg.run_dir) as listener:
        job = Run(cfg, listener)
        reports = [job.verify(a) for a in loaded]
    if as_json:
        out.print_json(json.dumps([r.model_dump() for r in reports]))
    else:
        from edgeport.cli_tables import verify_table

        out.print(verify_table(reports))
    failed = [f"{r.target}/{r.precision}: {f}" for r in reports for f in r.failures]
    for failure in failed:
        err.print(f"[red]verification failed:[/red] {escape(failure)}", highlight=False)
    if failed:
        raise typer.Exit(3)


class Hint(str, Enum):
    f32 = "f32"
    bf16 = "bf16"
    default = "default"


DevicesDirOpt = Annotated[Optional[Path], typer.Option("--devices-dir", help="folder of device profiles (*.toml); "
                                                      "default $EDGEPORT_DEVICES_DIR, plus the built-ins")]


@app.command()
@handles_errors
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact folders (holding artifact.json)", show_default=False)],
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="device profile (repeatable; default local)")] = None,
    devices_dir: DevicesDirOpt = None,
    threads: Annotated[Optional[int], typer.Option(min=0, help="inference threads (0 = every core; default: the profile's)")] = None,
    iterations: Annotated[int, typer.Option(min=1, help="at least this many timed runs")] = 100,
    min_seconds: Annotated[float, typer.Option(min=0, help="and at least this long")] = 2.0,
    warmup: Annotated[int, typer.Option(min=0, help="untimed runs first")] = 10,
    hint: Annotated[Hint, typer.Option(help="OpenVINO INFERENCE_PRECISION_HINT")] = Hint.f32,
    output: Annotated[Optional[Path], typer.Option("--out", help="results so far, rewritten after every measurement "
                                                   "[default: runs/bench/<UTC time>.json]", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="samples to feed (.npz, one array per input name); "
                                                 "default: the held-out set of the run the artifact belongs to")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Time artifacts on one or more devices (this machine, a board over SSH, a phone over adb),
    each in a fresh process, with the same harness as `run`."""
    setup_logging(verbose)
    from edgeport.cli_progress import progress_listener
    from edgeport.devices.remote import bench_many
    from edgeport.pipeline.stages import Event

    from edgeport.devices.remote import check_output

    if output is not None:
        check_output(output)  # before the log folder beside it is made
    output = output or bench_output()
    results = []
    try:
        settings = {"iterations": iterations, "min_seconds": min_seconds, "warmup": warmup, "threads": threads}
        total = len(artifacts) * len(device or ["local"])
        # The log folder beside the results makes their folder, and removes it again if nothing was measured.
        with progress_listener(err, verbose, output.parent) as listener:
            listener(Event("progress", "bench", "artifacts", total=total))
            for a, b in bench_many(artifacts, device or ["local"], devices_dir, settings, {"hint": hint.value}, output,
                                   data):
                results.append((a, b))
                listener(Event("progress", "bench", "artifacts", f"{a.label} on {b.device}: p50 {b.p50_ms} ms",
                               total=total, done=len(results)))
    except EdgeportError as e:
        if not results:
            raise
        if as_json:  # one JSON document: the error and what was measured before it
            raise fail(e, as_json, results=bench_rows(results)) from None
        show_bench(results, as_json)
        raise
    show_bench(results, as_json)
    if not as_json:
        out.print(f"results:    {output}", highlight=False)


def bench_output() -> Path:
    """Where `edgeport bench` writes without --out: beside the runs, named by the time (UTC)."""
    from datetime import datetime, timezone

    return Path("runs") / "bench" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"


def bench_rows(results) -> list[dict]:
    return [{"artifact": str(a.root), **b.model_dump()} for a, b in results]


def show_bench(results, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(bench_rows(results)))
    else:
        from edgeport.cli_tables import bench_table

        out.print(bench_table(results))


devices_app = typer.Typer(help="Device profiles: list them, check one (connects, reports what it has).",
                          no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
@handles_errors
def devices_list(devices_dir: DevicesDirOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Built-in and user device profiles (connects to none)."""
    setup_logging(verbose)
    from edgeport.devices.profiles import all_profiles

    profiles = all_profiles(devices_dir)
    if as_json:
        out.print_json(json.dumps([{**p.model_dump(), "source": p.source} for p in profiles.values()]))
        return
    from rich.table import Table

    table = Table("name", "transport", "address", "arch", "threads", "runtimes", "profile")
    for p in profiles.values():
        table.add_row(p.name, p.transport, escape(p.address), p.arch or "—", str(p.threads or "all"),
                      ", ".join(p.runtimes) or "—", escape(p.source))
    out.print(table)


@devices_app.command("check")
@handles_errors
def devices_check(
    name: Annotated[str, typer.Argument(help="device profile name")],
    devices_dir: DevicesDirOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Connect, and report the device's OS, arch, CPU, Python, numpy and runtimes; exit 2 naming
    what is missing (and the pip line that installs it)."""
    setup_logging(verbose)
    from edgeport.devices.check import check_device

    with err.status(f"connecting to {name}"):
        report = check_device(name, devices_dir)
    if as_json:  # a missing runtime makes it an error object too: {"error": ..., "code": 2, ...}
        problem = {"error": report["problem"], "code": 2} if report["problem"] else {}
        out.print_json(json.dumps({**problem, **report}))
    else:
        facts = report["facts"]
        out.print(f"[bold]{name}[/bold] ({escape(report['address'])}): {facts.get('os')}", highlight=False)
        temperature = facts.get("temperature_c")
        out.print(f"  arch    {facts.get('arch')}  cpu {facts.get('cpu')}  cores {facts.get('cores')}"
                  f"  governor {facts.get('governor') or 'unreadable'}"
                  f"  temperature {f'{temperature:.1f} °C' if temperature is not None else 'unreadable'}", highlight=False)
        out.print(f"  python  {facts.get('python')}  numpy {facts.get('numpy') or '[red]missing[/red]'}", highlight=False)
        for runtime, found in report["runtimes"].items():
            shown = f"{found['version']} ({found['module']})" if found else "[red]missing[/red]"
            out.print(f"  {runtime:<12} {shown}", highlight=False)
        for warning in report["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if report["problem"]:
        if not as_json:
            err.print(f"[red]error:[/red] {escape(report['problem'])}", highlight=False)
        raise typer.Exit(2)


@app.command("package")
@handles_errors
def package_command(
    run_dir: Annotated[str, typer.Argument(metavar="RUN | verify", help="a finished run folder, or `verify`")],
    bundle: Annotated[Optional[Path], typer.Argument(help="with `verify`: the bundle folder or archive")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="only this target (repeatable)")] = None,
    precision: Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="these precisions")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="a folder, or FILE.tar.gz / FILE.zip")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="with `verify`: fail on files the "
                                                   "manifest does not list and on links (default: on for archives, "
                                                   "whose unlisted entries are never unpacked)")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Bundle verified artifacts for an app (`package RUN`), or check one (`package verify BUNDLE`)."""
    setup_logging(verbose)
    from edgeport.errors import ConfigError
    from edgeport.pipeline.bundle_io import verify_bundle
    from edgeport.pipeline.package import package

    if run_dir == "verify":
        if bundle is None:
            raise ConfigError("usage: edgeport package verify BUNDLE (a bundle folder, .tar.gz or .zip)")
        manifest, warnings = verify_bundle(bundle, strict)
        if as_json:
            out.print_json(json.dumps({"bundle": str(bundle), "target": manifest["target"], "precision":
                                       manifest["precision"], "files": manifest["files"], "warnings": warnings}))
            return
        for warning in warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
        out.print(f"[green]ok[/green] {bundle}: {manifest['target']} {manifest['precision']}, "
                  f"{len(manifest['files'])} files match the manifest; the model loads and takes the recorded inputs",
                  highlight=False)
        return
    made = package(Path(run_dir), target, precision, output)
    if as_json:
        out.print_json(json.dumps([str(path) for path in made]))
        return
    for path in made:
        out.print(f"bundle: {path}", highlight=False)


@app.command("calibrate")
@handles_errors
def calibrate_command(
    what: Annotated[str, typer.Argument(metavar="CONFIG | report", help="a run config, or `report`")],
    run_dir: Annotated[Optional[Path], typer.Argument(help="with `report`: a finished run folder")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Calibrate and quantize alone and show each int8 artifact's error (`calibrate CONFIG`), or the
    ten most sensitive layers of a run (`calibrate report RUN`)."""
    setup_logging(verbose)
    from rich.table import Table

    if what == "report":
        from edgeport.pipeline.package import read_report

        if run_dir is None:
            raise EdgeportError("usage: edgeport calibrate report RUN (a finished run folder)")
        report = read_report(run_dir)
        shown = [a for a in report["artifacts"] if a.get("sensitivity")]
        if as_json:
            out.print_json(json.dumps([{k: a[k] for k in ("target", "precision", "sensitivity")} for a in shown]))
            return
        if not shown:
            out.print("no per-layer sensitivity in this run (ONNX Runtime and OpenVINO int8 artifacts have it)")
        for a in shown:
            table = Table("rank", "tensor", "op", "output SQNR (dB)", title=f"{a['target']}/{a['precision']}: worst layers")
            for i, s in enumerate(a["sensitivity"][:10], 1):
                table.add_row(str(i), s["tensor"], s["op"], f"{s['output_sqnr_db']:.1f}")
            out.print(table)
        return
    from edgeport.cli_progress import progress_listener
    from edgeport.cli_tables import verify_table
    from edgeport.pipeline.run import run as run_pipeline

    cfg = load(Path(what))
    with progress_listener(err, verbose, cfg.run_dir) as listener:
        result = run_pipeline(cfg, listener, until="verify")
    reports = [r.verify for r in result.artifacts if r.verify]
    if as_json:
        out.print_json(json.dumps([r.model_dump() for r in reports]))
        return
    out.print(verify_table(reports))


@app.command()
@handles_errors
def crops(
    folder: Annotated[Path, typer.Argument(metavar="OUT", help="folder to write calibration/ and evaluation/ into")] = Path(
        "~/.cache/edgeport/sample-crops"),
    calibration: Annotated[int, typer.Option(min=1, help="calibration crops")] = 128,
    evaluation: Annotated[int, typer.Option(min=1, help="evaluation crops (a separate random draw)")] = 300,
    size: Annotated[int, typer.Option(min=8, help="crop side in pixels")] = 224,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write random crops of scikit-learn's two sample photos as image folders: real calibration
    and evaluation data for image models, offline (examples/efficientnet-lite0.toml uses them)."""
    setup_logging(verbose)
    from edgeport.calibration.crops import write_crops

    done = write_crops(folder, calibration, evaluation, size, seed)
    if as_json:
        out.print_json(json.dumps(done, default=str))
        return
    what = f"wrote {done['written']} crops" if done["written"] else "already there"
    out_path = done["folder"]
    err.print(f"{what}: {out_path}/calibration ({calibration}), {out_path}/evaluation ({evaluation})", highlight=False)


@app.command("targets")
@handles_errors
def list_targets(as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List the targets and whether each runtime is installed (imports no backend)."""
    setup_logging(verbose)
    from edgeport import targets

    rows = [{"name": t.name, "installed": targets.is_installed(t.name), "precisions": list(t.precisions),
             "extra": t.extra, "description": t.description} for t in targets.available().values()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("target", "installed", "precisions", "install with", "runtime")
    for r in rows:
        table.add_row(r["name"], "[green]yes[/green]" if r["installed"] else "[red]no[/red]", ", ".join(r["precisions"]),
                      escape(f"pip install 'edgeport[{r['extra']}]'"), r["description"])
    out.print(table)


@app.command()
@handles_errors
def env(as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Versions of Python, PyTorch and every backend, and this machine's CPU."""
    setup_logging(verbose)
    from edgeport.devices.runner import device_facts
    from edgeport.pipeline.stages import TOOLS
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in TOOLS:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    facts = device_facts()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0] if Path("/proc/cpuinfo").exists() else ""
    facts["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "asimd") if f" {f}" in flags]
    data = {"python": sys.version.split()[0], "packages": packages, "machine": facts}
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"python {data['python']}")
    for name, ver in packages.items():
        out.print(f"  {name:<16} {ver or '[dim]not installed[/dim]'}", highlight=False)
    out.print(f"cpu    {facts['cpu']} ({facts['cores']} cores, {facts['arch']}; {', '.join(facts['isa']) or 'no SIMD flags read'})", highlight=False)
    out.print(f"os     {facts['os']}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

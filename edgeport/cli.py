"""The edgeport command line. Commands parse options, call the library and print; heavy
imports happen inside commands so that `edgeport --help` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgeport.errors import EdgeportError

app = typer.Typer(
    help="Take a trained PyTorch model to the edge: export per runtime, calibrate int8, verify, benchmark.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML sections such as [search]: plain text, not markup
)
# Off a terminal rich would wrap tables at 80 columns; results are wider.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="run config (TOML)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show log messages")]


def fail(error: EdgeportError) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("nncf", "torch", "onnxscript"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def load(config: Path, **overrides):
    from edgeport.pipeline.config import load_config

    return load_config(config, {k: v for k, v in overrides.items() if v is not None})


@app.command()
def run(
    config: ConfigArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the resolved config and stop")] = False,
    name: Annotated[Optional[str], typer.Option(help="run name (overrides the file)")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="folder for run folders (default runs/)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="benchmark threads (overrides [bench])")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="allow loading a pickled model (runs its code)")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="ignore cached stages and redo everything")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole pipeline from one config: export, quantize, verify, benchmark, report."""
    setup_logging(verbose)
    try:
        cfg = load(config, name=name, runs_dir=str(runs_dir) if runs_dir else None, **{"bench.threads": threads},
                   **{"model.trust_model": True if trust_model else None})
        if dry_run:
            from edgeport.pipeline.config import to_toml

            out.print(to_toml(cfg), highlight=False, markup=False)
            return
        finish(execute(cfg, rebuild, verbose), as_json)
    except EdgeportError as e:
        raise fail(e) from None


@app.command()
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

    try:
        path = Path(str(files("edgeport.examples") / "digits.toml"))
        cfg = load_config(path, {"runs_dir": str(runs_dir)})
        missing = [t for t in cfg.targets if not targets.is_installed(t)]
        for t in missing:
            err.print(f"[yellow]skipping {t}[/yellow]: not installed " + escape(f"(pip install 'edgeport[{targets.info(t).extra}]')"))
        cfg.targets = {k: v for k, v in cfg.targets.items() if k not in missing}
        finish(execute(cfg, rebuild, verbose), as_json)
    except EdgeportError as e:
        raise fail(e) from None


def execute(cfg, rebuild: bool, verbose: bool):
    from edgeport.cli_progress import progress_listener
    from edgeport.pipeline.run import run as run_pipeline

    with progress_listener(err, verbose) as listener:
        return run_pipeline(cfg, listener, rebuild=rebuild)


def finish(result, as_json: bool) -> None:
    """Print the result table (or JSON) and exit 3 when an artifact failed verification."""
    if as_json:
        out.print_json(json.dumps(json.loads(result.reports["report.json"].read_text())))
    else:
        from edgeport.cli_tables import results_table

        out.print(results_table(result))
        out.print(f"run folder: {result.run_dir}\nreport:     {result.reports['report.md']}", highlight=False)
        for bundle in result.bundles:
            out.print(f"bundle:     {bundle}", highlight=False)
    if result.failures:
        for failure in result.failures:
            err.print(f"[red]verification failed:[/red] {escape(failure)}", highlight=False)
        raise typer.Exit(3)


@app.command()
def tune(
    config: ConfigArg,
    executor: Annotated[Optional[str], typer.Option(help="local (process pool) or ray (overrides [search])")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local pool size (0 = every core)")] = None,
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

    try:
        cfg = load(config, **{"search.executor": executor, "search.workers": workers, "search.ray_address": ray_address})
        with progress_listener(err, verbose) as listener:
            result = run_search(cfg, listener, rebuild=rebuild)
    except EdgeportError as e:
        raise fail(e) from None
    if as_json:
        out.print_json(json.dumps(result.summary(), default=str))
        return
    from edgeport.cli_tables import search_table

    out.print(search_table(result))
    chosen = result.chosen
    out.print(f"chosen:     {chosen.label} ({chosen.path})\nbuilt:      {len(result.built)} stage(s) new, "
              f"the rest from the cache\nreport:     {result.run.reports['report.md']}", highlight=False)
    for bundle in result.run.bundles:
        out.print(f"bundle:     {bundle}", highlight=False)


@app.command()
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

    try:
        cfg = load(config)
        with progress_listener(err, verbose) as listener:
            artifacts = Run(cfg, listener).artifacts(target, precision)
    except EdgeportError as e:
        raise fail(e) from None
    if as_json:
        out.print_json(json.dumps([{"target": a.target, "precision": a.precision, "path": str(a.root),
                                    "size_bytes": a.size_bytes, "id": a.id} for a in artifacts]))
    else:
        for a in artifacts:
            out.print(f"{a.label:<22} {a.size_bytes / 1024:9.1f} KB  {a.root}", highlight=False)


@app.command("compress")
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

    try:
        cfg = load(config, **{"model.source": model})
        if not cfg.compress:
            raise ConfigError(f"{config}: no [[compress]] steps to run")
        with progress_listener(err, verbose) as listener:
            job = Run(cfg, listener)
            job.model  # runs the chain
            final = job.compressed_path
        if output:
            shutil.copyfile(final, output)
            final = output
    except EdgeportError as e:
        raise fail(e) from None
    if as_json:
        out.print_json(json.dumps({"model": str(final), "steps": job.compression}, default=str))
        return
    from edgeport.cli_tables import compression_table

    out.print(compression_table(job.compression))
    out.print(f"compressed model: {final}\nuse it with:      source = \"{final}\"", highlight=False)


@app.command()
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

    try:
        cfg = load(config)
        loaded = [Artifact.load(p) for p in artifacts]
        with progress_listener(err, verbose) as listener:
            job = Run(cfg, listener)
            reports = [job.verify(a) for a in loaded]
    except EdgeportError as e:
        raise fail(e) from None
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


DevicesDirOpt = Annotated[Optional[Path], typer.Option("--devices-dir", help="folder of device profiles (*.toml); "
                                                      "default $EDGEPORT_DEVICES_DIR, plus the built-ins")]


@app.command()
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact folders (holding artifact.json)", show_default=False)],
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="device profile (repeatable; default local)")] = None,
    devices_dir: DevicesDirOpt = None,
    threads: Annotated[Optional[int], typer.Option(help="inference threads (0 = every core; default: the profile's)")] = None,
    iterations: Annotated[int, typer.Option(help="at least this many timed runs")] = 100,
    min_seconds: Annotated[float, typer.Option(help="and at least this long")] = 2.0,
    warmup: Annotated[int, typer.Option(help="untimed runs first")] = 10,
    hint: Annotated[str, typer.Option(help="OpenVINO INFERENCE_PRECISION_HINT: f32, bf16 or default")] = "f32",
    output: Annotated[Path, typer.Option("--out", help="results so far, rewritten after every measurement")] = Path("bench.json"),
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Time artifacts on one or more devices (this machine, a board over SSH, a phone over adb),
    each in a fresh process, with the same harness as `run`."""
    setup_logging(verbose)
    from edgeport.devices.remote import bench_many

    results = []
    try:
        settings = {"iterations": iterations, "min_seconds": min_seconds, "warmup": warmup, "threads": threads}
        for a, b in bench_many(artifacts, device or ["local"], devices_dir, settings, {"hint": hint}, output):
            results.append((a, b))
            err.print(f"measured {a.label} on {b.device}: p50 {b.p50_ms} ms", highlight=False)
    except EdgeportError as e:
        if results:
            show_bench(results, as_json)
        raise fail(e) from None
    show_bench(results, as_json)


def show_bench(results, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps([{"artifact": str(a.root), **b.model_dump()} for a, b in results]))
    else:
        from edgeport.cli_tables import bench_table

        out.print(bench_table(results))


devices_app = typer.Typer(help="Device profiles: list them, check one (connects, reports what it has).",
                          no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def devices_list(devices_dir: DevicesDirOpt = None, as_json: JsonOpt = False) -> None:
    """Built-in and user device profiles (connects to none)."""
    from edgeport.devices.profiles import all_profiles

    try:
        profiles = all_profiles(devices_dir)
    except EdgeportError as e:
        raise fail(e) from None
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
def devices_check(
    name: Annotated[str, typer.Argument(help="device profile name")],
    devices_dir: DevicesDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Connect, and report the device's OS, arch, CPU, Python, numpy and runtimes; exit 2 naming
    what is missing (and the pip line that installs it)."""
    from edgeport.devices.check import check_device

    try:
        with err.status(f"connecting to {name}"):
            report = check_device(name, devices_dir)
    except EdgeportError as e:
        raise fail(e) from None
    if as_json:
        out.print_json(json.dumps(report))
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
        err.print(f"[red]error:[/red] {escape(report['problem'])}", highlight=False)
        raise typer.Exit(2)


@app.command("package")
def package_command(
    run_dir: Annotated[str, typer.Argument(metavar="RUN | verify", help="a finished run folder, or `verify`")],
    bundle: Annotated[Optional[Path], typer.Argument(help="with `verify`: the bundle folder or archive")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="only this target (repeatable)")] = None,
    precision: Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="these precisions")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="a folder, or FILE.tar.gz / FILE.zip")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="with `verify`: fail on files the "
                                                   "manifest does not list and on links (default: on for archives, "
                                                   "whose unlisted entries are never unpacked)")] = None,
) -> None:
    """Bundle verified artifacts for an app (`package RUN`), or check one (`package verify BUNDLE`)."""
    from edgeport.pipeline.bundle_io import verify_bundle
    from edgeport.pipeline.package import package

    try:
        if run_dir == "verify":
            if bundle is None:
                raise EdgeportError("usage: edgeport package verify BUNDLE")
            manifest, warnings = verify_bundle(bundle, strict)
            for warning in warnings:
                err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
            out.print(f"[green]ok[/green] {bundle}: {manifest['target']} {manifest['precision']}, "
                      f"{len(manifest['files'])} files match the manifest; the model loads and takes the recorded inputs",
                      highlight=False)
            return
        for path in package(Path(run_dir), target, precision, output):
            out.print(f"bundle: {path}", highlight=False)
    except EdgeportError as e:
        raise fail(e) from None


@app.command("calibrate")
def calibrate_command(
    what: Annotated[str, typer.Argument(metavar="CONFIG | report", help="a run config, or `report`")],
    run_dir: Annotated[Optional[Path], typer.Argument(help="with `report`: a finished run folder")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Calibrate and quantize alone and show each int8 artifact's error (`calibrate CONFIG`), or the
    ten most sensitive layers of a run (`calibrate report RUN`)."""
    setup_logging(verbose)
    from rich.table import Table

    try:
        if what == "report":
            if run_dir is None or not (run_dir / "report.json").is_file():
                raise EdgeportError(f"usage: edgeport calibrate report RUN (no report.json in {run_dir})")
            report = json.loads((run_dir / "report.json").read_text())
            shown = [a for a in report["artifacts"] if a.get("sensitivity")]
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
        with progress_listener(err, verbose) as listener:
            result = run_pipeline(cfg, listener, until="verify")
        out.print(verify_table([r.verify for r in result.artifacts if r.verify]))
    except EdgeportError as e:
        raise fail(e) from None


@app.command()
def crops(
    out: Annotated[Path, typer.Argument(help="folder to write calibration/ and evaluation/ into")] = Path(
        "~/.cache/edgeport/sample-crops"),
    calibration: Annotated[int, typer.Option(help="calibration crops")] = 128,
    evaluation: Annotated[int, typer.Option(help="evaluation crops (a separate random draw)")] = 300,
    size: Annotated[int, typer.Option(help="crop side in pixels")] = 224,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write random crops of scikit-learn's two sample photos as image folders: real calibration
    and evaluation data for image models, offline (examples/efficientnet-lite0.toml uses them)."""
    from edgeport.calibration.crops import write_crops

    try:
        done = write_crops(out, calibration, evaluation, size, seed)
    except EdgeportError as e:
        raise fail(e) from None
    what = f"wrote {done['written']} crops" if done["written"] else "already there"
    out_path = done["folder"]
    err.print(f"{what}: {out_path}/calibration ({calibration}), {out_path}/evaluation ({evaluation})", highlight=False)


@app.command("targets")
def list_targets(as_json: JsonOpt = False) -> None:
    """List the targets and whether each runtime is installed (imports no backend)."""
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
def env(as_json: JsonOpt = False) -> None:
    """Versions of Python, PyTorch and every backend, and this machine's CPU."""
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

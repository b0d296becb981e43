"""`edgeport package build RUN` (also `edgeport package RUN`) and `edgeport package verify BUNDLE`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

import edgeport
from edgeport.cli.common import JsonOpt, PrecisionOpt, TargetOpt, VerboseOpt, err, handles_errors, out, print_json
from edgeport.cli.common import setup_logging


def register(package: typer.Typer) -> None:
    package.command("build")(handles_errors(build))
    package.command("verify")(handles_errors(verify))


def build(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="a finished run folder", show_default=False)],
    target: TargetOpt = None,
    precision: PrecisionOpt = None,
    output: Annotated[Optional[Path], typer.Option("--out", help="a folder, or FILE.tar.gz / FILE.zip")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Bundle a run's verified artifacts for an app (default: the fastest verified per target)."""
    setup_logging(verbose)
    made = edgeport.package(run_dir, target, precision, output)
    if as_json:
        print_json([str(path) for path in made])
        return
    for path in made:
        out.print(f"bundle: {path}", highlight=False)


def verify(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="a bundle folder, .tar.gz or .zip",
                                           show_default=False)],
    strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="fail on files the manifest does "
                                                   "not list and on links (default: on for archives, whose "
                                                   "unlisted entries are never unpacked)")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check a bundle: manifest schema, every sha256 and size, the manifest against what the model
    file declares, and the bundle's own example run on its samples against PyTorch's outputs."""
    setup_logging(verbose)
    manifest, warnings = edgeport.verify_bundle(bundle, strict)
    if as_json:
        print_json({"bundle": str(bundle), "target": manifest["target"], "precision": manifest["precision"],
                    "files": manifest["files"], "warnings": warnings})
        return
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    out.print(f"[green]ok[/green] {bundle}: {manifest['target']} {manifest['precision']}, "
              f"{len(manifest['files'])} files match the manifest; the model file declares what it says; its example "
              "reproduces PyTorch on the bundled samples", highlight=False)

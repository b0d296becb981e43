"""What every command shares: the two consoles, the common options, the one error handler."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgeport.errors import EdgeportError, VerificationError

# Off a terminal rich would wrap tables at 80 columns; results are wider.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="run config (TOML)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show what the libraries log, and an error's causes")]
DevicesDirOpt = Annotated[Optional[Path], typer.Option("--devices-dir", help="folder of device profiles (*.toml); "
                                                      "default $EDGEPORT_DEVICES_DIR, plus the built-ins")]
TargetOpt = Annotated[Optional[list[str]], typer.Option("--target", "-t", help="only this target (repeatable)")]
PrecisionOpt = Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="only this precision (repeatable)")]


def fail(error: EdgeportError | str, as_json: bool = False, code: int | None = None, **extra) -> typer.Exit:
    """One red line on stderr, or with --json one JSON object on stdout; the Exit to raise."""
    code = code if code is not None else getattr(error, "exit_code", 2)
    message = " | ".join(line.strip() for line in str(error).strip().splitlines()) or error.__class__.__name__
    if as_json:
        out.print_json(json.dumps({"error": message, "code": code, **extra}, default=str))
    else:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def causes(error: BaseException) -> list[str]:
    """The chain of causes under an error, one line each (shown with -v)."""
    found, seen = [], error.__cause__ or error.__context__
    while seen is not None and len(found) < 10:
        found.append(f"{seen.__class__.__name__}: {str(seen).strip().splitlines()[0] if str(seen).strip() else ''}")
        seen = seen.__cause__ or seen.__context__
    return found


def handles_errors(command):
    """Every command's one error handler, the only place errors become exit codes: a
    VerificationError lists each failure (exit 3), any other EdgeportError is one line (or the
    JSON error object with --json) and its exit code; with -v the causes follow. Anything else is
    a bug: traceback, exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VerificationError as e:
            for failure in e.failures:
                err.print(f"[red]verification failed:[/red] {escape(failure)}", highlight=False)
            raise typer.Exit(e.exit_code) from None
        except EdgeportError as e:
            if kwargs.get("verbose"):
                for cause in causes(e):
                    err.print(f"[dim]caused by {escape(cause)}[/dim]", highlight=False)
            raise fail(e, kwargs.get("as_json", False)) from None

    return wrapper


def setup_logging(verbose: bool) -> None:
    from edgeport import logs

    logs.setup(verbose)


def load(config: Path, **overrides):
    """The config file with the command line's options winning."""
    from edgeport import load_config

    return load_config(config, {k: v for k, v in overrides.items() if v is not None})


def listening(cfg, verbose: bool):
    """Progress for a run folder's command: a live display in a terminal, plain lines off one."""
    from edgeport.cli.progress import progress_listener

    return progress_listener(err, verbose, cfg.run_dir)


def show_paths(run_dir: Path, report: Path | None = None, bundles=()) -> None:
    if report:
        out.print(f"run folder: {run_dir}\nreport:     {report}", highlight=False)
    if (run_dir / "logs").is_dir():
        out.print(f"logs:       {run_dir / 'logs'} (what the libraries printed)", highlight=False)
    for bundle in bundles:
        out.print(f"bundle:     {bundle}", highlight=False)


def print_json(data) -> None:
    out.print_json(json.dumps(data, default=str))

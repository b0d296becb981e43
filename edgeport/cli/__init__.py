"""The edgeport command line: a thin skin over the Python API (edgeport/__init__.py). Commands
parse options, call the API and print; heavy imports happen inside commands so that `edgeport
--help` is instant; errors become exit codes in one handler (cli/common.py)."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from edgeport.cli.common import err, fail

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as usage
except ImportError:  # pragma: no cover
    from click import exceptions as usage


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


class DefaultCommand(TyperGroup):
    """A group whose first subcommand is taken when none is named: `edgeport package RUN` is
    `edgeport package build RUN`, `edgeport calibrate CONFIG` is `edgeport calibrate run CONFIG`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    help="Take a trained PyTorch model to the edge: export per runtime, calibrate int8, verify, benchmark.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=OneLineUsageErrors,
    rich_markup_mode=None,  # help texts name TOML sections such as [search]: plain text, not markup
)
devices = typer.Typer(help="Device profiles: list them, check one (connects, reports what it has).",
                      no_args_is_help=True, rich_markup_mode=None)
package = typer.Typer(help="Bundle a run's verified artifacts (`package RUN` = `package build RUN`), or check "
                           "a bundle (`package verify BUNDLE`).", no_args_is_help=True, cls=DefaultCommand,
                      rich_markup_mode=None)
calibrate = typer.Typer(help="Calibrate and quantize alone (`calibrate CONFIG` = `calibrate run CONFIG`), or show a "
                             "run's most sensitive int8 layers (`calibrate report RUN`).", no_args_is_help=True,
                        cls=DefaultCommand, rich_markup_mode=None)


def build() -> typer.Typer:
    from edgeport.cli import device_commands, info_commands, package_commands, pipeline_commands

    pipeline_commands.register(app, calibrate)
    device_commands.register(app, devices)
    package_commands.register(package)
    info_commands.register(app)
    app.add_typer(devices, name="devices")
    app.add_typer(package, name="package")
    app.add_typer(calibrate, name="calibrate")
    return app


build()


def main() -> None:
    app()


__all__ = ["app", "main"]

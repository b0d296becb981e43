"""Commands about devices: bench artifacts on them, list profiles, check one."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

import edgeport
from edgeport.cli.common import (
    DevicesDirOpt, JsonOpt, VerboseOpt, err, fail, handles_errors, out, print_json, setup_logging,
)
from edgeport.errors import EdgeportError


class Hint(str, Enum):
    f32 = "f32"
    bf16 = "bf16"
    default = "default"


def register(app: typer.Typer, devices: typer.Typer) -> None:
    app.command()(handles_errors(bench))
    devices.command("list")(handles_errors(devices_list))
    devices.command("check")(handles_errors(devices_check))


def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact folders (holding artifact.json)", show_default=False)],
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="device profile (repeatable; default local)")] = None,
    devices_dir: DevicesDirOpt = None,
    threads: Annotated[Optional[int], typer.Option(min=0, help="inference threads (0 = every core; default: the profile's)")] = None,
    iterations: Annotated[int, typer.Option(min=1, help="at least this many timed runs")] = 100,
    min_seconds: Annotated[float, typer.Option(min=0, help="and at least this long")] = 2.0,
    warmup: Annotated[int, typer.Option(min=0, help="untimed runs first")] = 10,
    processes: Annotated[int, typer.Option(min=1, max=15, help="fresh processes per artifact; the median one is "
                                           "reported (a VM can run one process 1.5x slower than the next)")] = 1,
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
    from edgeport.cli.progress import progress_listener
    from edgeport.devices.remote import check_output
    from edgeport.pipeline.stages import Event
    from edgeport.types import write_text_atomic

    if output is not None:
        check_output(output)  # before the log folder beside it is made
    output = output or bench_output()
    devices, results = device or ["local"], []
    try:
        # The log folder beside the results makes their folder, and removes it again if nothing was measured.
        with progress_listener(err, verbose, output.parent) as listener:
            listener(Event("progress", "bench", "artifacts", total=len(artifacts) * len(devices)))
            for a, b in edgeport.bench(artifacts, devices, threads=threads, iterations=iterations,
                                       min_seconds=min_seconds, warmup=warmup, processes=processes, hint=hint.value,
                                       devices_dir=devices_dir, data=data):
                results.append((a, b))
                write_text_atomic(output, json.dumps(bench_rows(results), indent=2))  # nothing lost
                listener(Event("progress", "bench", "artifacts", f"{a.label} on {b.device}: p50 {b.p50_ms} ms",
                               total=len(artifacts) * len(devices), done=len(results)))
    except EdgeportError as e:
        if not results:
            raise
        kept = f"{e}. {len(results)} result(s) already measured are kept in {output}"
        if as_json:  # one JSON document: the error and what was measured before it
            raise fail(kept, as_json, code=e.exit_code, results=bench_rows(results)) from None
        show_bench(results, as_json)
        raise type(e)(kept) from e
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
        print_json(bench_rows(results))
    else:
        from edgeport.cli.tables import bench_table

        out.print(bench_table(results))


def devices_list(devices_dir: DevicesDirOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Built-in and user device profiles (connects to none)."""
    setup_logging(verbose)
    from edgeport.devices.profiles import all_profiles

    profiles = all_profiles(devices_dir)
    if as_json:
        print_json([{**p.model_dump(), "source": p.source} for p in profiles.values()])
        return
    from edgeport.cli.tables import profiles_table

    out.print(profiles_table(profiles.values()))


def devices_check(
    name: Annotated[str, typer.Argument(help="device profile name")],
    devices_dir: DevicesDirOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Connect, and report the device's OS, arch, CPU, Python, numpy and runtimes; exit 2 naming
    what is missing (and the pip line that installs it)."""
    setup_logging(verbose)
    with err.status(f"connecting to {name}"):
        report = edgeport.check_device(name, devices_dir)
    if as_json:  # a missing runtime makes it an error object too: {"error": ..., "code": 2, ...}
        problem = {"error": report["problem"], "code": 2} if report["problem"] else {}
        print_json({**problem, **report})
    else:
        from edgeport.cli.tables import device_report

        device_report(out, report)
        for warning in report["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if report["problem"]:
        if not as_json:
            err.print(f"[red]error:[/red] {escape(report['problem'])}", highlight=False)
        raise typer.Exit(2)

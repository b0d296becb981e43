"""Commands that look things up: targets, env, and crops (sample photo data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import edgeport
from edgeport.cli.common import JsonOpt, VerboseOpt, err, handles_errors, out, print_json, setup_logging


def register(app: typer.Typer) -> None:
    app.command("targets")(handles_errors(list_targets))
    app.command()(handles_errors(env))
    app.command()(handles_errors(crops))


def list_targets(as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List the targets and whether each runtime is installed (imports no backend)."""
    setup_logging(verbose)
    from edgeport import targets

    rows = [{"name": t.name, "installed": targets.is_installed(t.name), "precisions": list(t.precisions),
             "extra": t.extra, "description": t.description} for t in targets.available().values()]
    if as_json:
        print_json(rows)
        return
    from edgeport.cli.tables import targets_table

    out.print(targets_table(rows))


def env(as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Versions of Python, PyTorch and every backend, and this machine's CPU."""
    setup_logging(verbose)
    data = edgeport.environment()
    if as_json:
        print_json(data)
        return
    facts = data["machine"]
    out.print(f"python {data['python']}")
    for name, ver in data["packages"].items():
        out.print(f"  {name:<18} {ver or '[dim]not installed[/dim]'}", highlight=False)
    out.print(f"cpu    {facts['cpu']} ({facts['cores']} cores, {facts['arch']}; "
              f"{', '.join(facts['isa']) or 'no SIMD flags read'})", highlight=False)
    out.print(f"os     {facts['os']}", highlight=False)


def crops(
    folder: Annotated[Path, typer.Argument(metavar="OUT", help="folder to write calibration/ and evaluation/ into")] = Path(
        "~/.cache/edgeport/scene-crops"),
    calibration: Annotated[int, typer.Option(min=1, help="crops of the calibration scenes")] = 512,
    per_scene: Annotated[int, typer.Option(min=1, help="crops of each of the 4 evaluation scenes")] = 300,
    size: Annotated[int, typer.Option(min=8, help="crop side in pixels")] = 224,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write random crops of the photos scikit-image and scikit-learn ship as image folders: real
    calibration and evaluation data for image models, offline, from disjoint scenes (evaluation:
    astronaut, chelsea, coffee, rocket; calibration: every other photo). examples/efficientnet-lite0.toml
    uses them."""
    setup_logging(verbose)
    from edgeport.calibration.crops import write_crops

    done = write_crops(folder, calibration, per_scene, size, seed)
    if as_json:
        print_json(done)
        return
    what = f"wrote {done['written']} crops" if done["written"] else "already there"
    err.print(f"{what}: {done['folder']}/calibration ({calibration}), {done['folder']}/evaluation "
              f"({per_scene} x 4 scenes)", highlight=False)

"""Shared fixtures: the trained digits CNN (cached once per session), configs written to tmp folders."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")  # the CLI's stage lines when stderr is not a terminal


def invoke(*args) -> tuple[int, str]:
    """`edgeport ARGS` in this process: the exit code and everything it printed."""
    from typer.testing import CliRunner

    from edgeport.cli import app

    out = CliRunner().invoke(app, [str(a) for a in args])
    return out.exit_code, out.output


def message_lines(output: str) -> list[str]:
    """CLI output without blank lines and the timestamped stage lines shown before an error."""
    return [ln for ln in output.splitlines() if ln.strip() and not PROGRESS_LINE.match(ln)]


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Train the demo model once per session into a private cache (a few seconds)."""
    path = tmp_path_factory.mktemp("edgeport-cache")
    os.environ["EDGEPORT_CACHE_DIR"] = str(path)
    from edgeport.examples.digits import trained_cnn

    trained_cnn()
    return path


def write_config(folder: Path, body: str = "", *, targets: str | None = None, model: str | None = None,
                 data: str | None = None, bench: str | None = None, name: str = "t") -> Path:
    """A run config for the digits CNN with fast benchmark settings; sections can be replaced."""
    model = model if model is not None else textwrap.dedent("""
        [model]
        source = "edgeport.examples.digits:trained_cnn"
        inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32", layout = "NCHW" }]
        output_names = ["logits"]
        """)
    data = data if data is not None else '[data]\nsource = "digits"\ncalibration_samples = 128\n'
    targets = targets if targets is not None else '[targets.onnxruntime]\nprecisions = ["fp32", "int8"]\n'
    bench = bench if bench is not None else "[bench]\niterations = 20\nmin_seconds = 0.0\nwarmup = 2\nthreads = 1\n"
    text = f'name = "{name}"\nruns_dir = "{folder / "runs"}"\n{model}\n{data}\n{targets}\n{bench}\n{body}'
    path = folder / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path)


FAST_TARGETS = '[targets.onnxruntime]\nprecisions = ["fp32"]\n'
FAST_BENCH = "[bench]\niterations = 5\nmin_seconds = 0.0\nwarmup = 1\nthreads = 1\nbaseline = false\n"


def fast_config(folder: Path, body: str = "", **sections) -> Path:
    """The config of `finished_run` (ONNX Runtime fp32 only, a short benchmark) in `folder`."""
    sections.setdefault("targets", FAST_TARGETS)
    sections.setdefault("bench", FAST_BENCH)
    return write_config(folder, body, **sections)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, model_cache):
    """One finished run of the digits CNN (ONNX Runtime fp32: artifact, report, bundle), shared by
    the error tests; copy its run folder before changing anything in it."""
    from edgeport import load_config, run

    folder = tmp_path_factory.mktemp("finished")
    return run(load_config(fast_config(folder)))


def copy_run(finished, folder: Path, body: str = "", **sections) -> Path:
    """A config in `folder` whose run folder starts as a copy of `finished`'s (every stage cached)."""
    import shutil

    shutil.copytree(finished.run_dir, folder / "runs" / finished.run_dir.name, symlinks=True)
    return fast_config(folder, body, **sections)

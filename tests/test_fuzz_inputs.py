"""Fuzz-style: random bytes, truncations and bit flips of a config, a model file, a data .npz, an
artifact record and bundle archives, fed through the CLI with a fixed seed. Whatever comes in:
never exit code 1, never a traceback, nothing written outside the run folder, and every
temporary folder cleaned up. EDGEPORT_FUZZ_COUNT=200 runs more variants of each (default 8)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeport.cli import app
from tests.conftest import copy_run, fast_config

pytestmark = pytest.mark.onnxruntime

cli = CliRunner()
SEED = 14
COUNT = int(os.environ.get("EDGEPORT_FUZZ_COUNT", 8))


def variants(valid: bytes, rng: np.random.Generator, count: int = COUNT) -> list[tuple[str, bytes]]:
    """Random bytes, truncations of a valid file and bit flips in it."""
    out = [("empty", b"")]
    for i in range(max(2, count // 5)):
        out.append((f"random{i}", rng.bytes(int(rng.integers(1, 4096)))))
    for i in range(max(3, count // 3)):
        out.append((f"truncated{i}", valid[: int(rng.integers(1, len(valid)))]))
    for i in range(count - len(out)):
        flipped = bytearray(valid)
        for at in rng.integers(0, len(valid), size=int(rng.integers(1, 8))):
            flipped[at] ^= 1 << int(rng.integers(0, 8))
        out.append((f"flipped{i}", bytes(flipped)))
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def feed(tmp_path: Path, args: list, allowed: str = "runs/") -> int:
    """Run the CLI; check the exit code, the output and what it wrote."""
    before = snapshot(tmp_path)
    result = cli.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2, 3), result.output
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output
    after = snapshot(tmp_path)
    written = [name for name, stat in after.items() if before.get(name) != stat and not name.startswith(allowed)]
    assert not written, f"written outside {allowed}: {written}"
    assert not any((tmp_path / "tmp").iterdir()), "a temporary folder was left behind"
    return result.exit_code


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def test_fuzzed_config(sandbox, finished_run):
    rng = np.random.default_rng(SEED)
    valid = fast_config(sandbox).read_bytes()
    for name, data in variants(valid, rng, COUNT + 4):
        (sandbox / "config.toml").write_bytes(data)
        feed(sandbox, ["run", sandbox / "config.toml", "--dry-run"], allowed="config.toml")


def test_fuzzed_model_file(sandbox, finished_run):
    from edgeport.examples.digits import trained_cnn

    rng = np.random.default_rng(SEED + 1)
    model = sandbox / "model.pt"
    torch.jit.save(torch.jit.trace(trained_cnn().eval(), torch.zeros(1, 1, 8, 8)), str(model))
    valid = model.read_bytes()
    config = copy_run(finished_run, sandbox, model='[model]\nsource = "model.pt"\n'
                      'inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32" }]\n')
    for name, data in variants(valid, rng):
        model.write_bytes(data)
        feed(sandbox, ["export", config, "-p", "fp32"])


def test_fuzzed_data(sandbox, finished_run):
    from edgeport.calibration.digits import digits_split

    rng = np.random.default_rng(SEED + 2)
    _, _, x, y = digits_split()
    np.savez(sandbox / "data.npz", image=x[:100], labels=y[:100])
    valid = (sandbox / "data.npz").read_bytes()
    config = copy_run(finished_run, sandbox, data='[data]\nsource = "npy"\npath = "data.npz"\ncalibration_samples = 32\n')
    for name, data in variants(valid, rng):
        (sandbox / "data.npz").write_bytes(data)
        feed(sandbox, ["export", config, "-p", "fp32"])


def test_fuzzed_artifact_record(sandbox, finished_run):
    rng = np.random.default_rng(SEED + 3)
    artifact = Path(shutil.copytree(finished_run.artifacts[0].artifact.root, sandbox / "runs" / "artifact"))
    valid = (artifact / "artifact.json").read_bytes()
    for name, data in variants(valid, rng):
        (artifact / "artifact.json").write_bytes(data)
        feed(sandbox, ["bench", artifact, "--out", sandbox / "runs" / "bench.json", "--iterations", "1",
                       "--min-seconds", "0", "--warmup", "0"])


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_fuzzed_bundle_archive(sandbox, finished_run, suffix):
    from edgeport.pipeline.bundle_io import write_archive

    rng = np.random.default_rng(SEED + 4)
    bundle = sandbox / f"bundle{suffix}"
    valid = write_archive(finished_run.bundles[0], bundle).read_bytes()
    for name, data in variants(valid, rng):
        bundle.write_bytes(data)
        feed(sandbox, ["package", "verify", bundle], allowed=bundle.name)

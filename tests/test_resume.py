"""A run killed mid-stage leaves nothing half-written under a final name and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeport.types import Artifact
from tests.conftest import write_config

pytestmark = [pytest.mark.onnxruntime, pytest.mark.slow]


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeport", "run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its benchmark subprocesses
    proc.wait()


def stamps(run_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob(".stage.json")}


def files_by_hash(run_dir: Path) -> dict[str, str]:
    return {p.name: json.dumps([f.sha256 for f in Artifact.load(p).files]) for p in (run_dir / "artifacts").iterdir()
            if not p.name.startswith(".")}


def test_killed_run_resumes_and_reuses_finished_stages(tmp_path):
    bench = "[bench]\niterations = 20\nmin_seconds = 3.0\nwarmup = 2\nthreads = 1\n"
    config = write_config(tmp_path, bench=bench)
    run_dir = tmp_path / "runs" / "t"

    # 1. Killed while the ONNX interchange file is being written.
    proc = start(config)
    kill_when(proc, lambda: any(run_dir.glob(".interchange.partial-*")))
    assert not (run_dir / "interchange").exists()

    # 2. Killed while benchmarking: export, calibration, quantization and verification are done.
    proc = start(config)
    kill_when(proc, lambda: (run_dir / "verify" / "onnxruntime-int8.json").exists())
    finished = stamps(run_dir)
    assert {"interchange/.stage.json", "calibration/.stage.json", "artifacts/onnxruntime-int8/.stage.json"} <= set(finished)
    for folder in (run_dir / "artifacts").iterdir():  # a final name only ever holds a finished stage
        assert folder.name.startswith(".") or (folder / ".stage.json").is_file()
    assert not (run_dir / "report.json").exists()

    # 3. Resumed: finishes, rebuilds nothing that was finished, same artifacts as an undisturbed run.
    proc = subprocess.run([sys.executable, "-m", "edgeport", "run", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert stamps(run_dir) == finished
    assert (run_dir / "report.json").is_file()
    assert not list(run_dir.rglob("*.partial*"))

    (tmp_path / "clean").mkdir()
    clean = write_config(tmp_path / "clean", bench=bench.replace("3.0", "0.0"))
    proc = subprocess.run([sys.executable, "-m", "edgeport", "run", str(clean)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert files_by_hash(run_dir) == files_by_hash(tmp_path / "clean" / "runs" / "t")

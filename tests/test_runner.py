"""The benchmark harness and the self-contained on-device runner."""

from __future__ import annotations

import ast
import sys
import time

import pytest

from edgeport.devices import local, runner
from tests.conftest import REPO


def test_measure_honours_iterations_and_seconds():
    calls = []
    stats = runner.measure(lambda: calls.append(1), warmup=3, iterations=50, min_seconds=0.0)
    assert stats["iterations"] == 50 and len(calls) == 53
    started = time.perf_counter()
    stats = runner.measure(lambda: time.sleep(0.001), warmup=0, iterations=5, min_seconds=0.2)
    assert time.perf_counter() - started >= 0.2 and stats["iterations"] > 5
    assert 1.0 <= stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_runner_imports_only_stdlib_numpy_and_runtimes():
    tree = ast.parse((REPO / "devices" / "runner.py").read_text())
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # no runtime either: each target's loader is pushed beside it
    allowed = {"__future__", "json", "os", "platform", "resource", "sys", "time", "numpy", "importlib"}
    assert imported <= allowed, imported - allowed


def test_samples_are_cycled_outside_the_timing():
    """Each timed call gets the next sample, bound before the clock starts."""
    seen, bound = [], iter(range(1000))
    current = {"i": None}

    def bind():
        current["i"] = next(bound)

    runner.measure(lambda: seen.append(current["i"]), warmup=2, iterations=10, min_seconds=0.0, next_inputs=bind)
    assert seen == list(range(12))  # one fresh sample per call, warm-up included


@pytest.mark.onnxruntime
def test_runner_in_a_fresh_process(tmp_path):
    import numpy as np
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Flatten(), torch.nn.Linear(32, 8)).eval()
    torch.onnx.export(model, (torch.zeros(1, 4, dtype=torch.int64),), str(tmp_path / "m.onnx"), dynamo=True,
                      external_data=False, input_names=["ids"])
    # token ids a random int64 feed would break: only 0..9 exist
    np.savez(tmp_path / "feeds.npz", in0=np.random.default_rng(0).integers(0, 10, (5, 4)))
    from edgeport.targets.onnxruntime import OnnxRuntimeTarget

    runtime = OnnxRuntimeTarget().device_runtime()  # the target's loader, shipped beside the runner
    (tmp_path / "loader.py").write_text(runtime.loader)
    result = local.run_json([sys.executable, str(local.RUNNER)], {
        "runtime": "onnxruntime", "model": str(tmp_path / "m.onnx"), "loader": str(tmp_path / "loader.py"),
        "feeds": {"file": str(tmp_path / "feeds.npz"), "names": ["ids"]},
        "iterations": 30, "min_seconds": 0, "warmup": 2, "threads": 1}, timeout=120)
    assert result["iterations"] >= 30 and result["runtime"] == "onnxruntime"
    assert result["options"]["inputs"] == "5 held-out sample(s), cycled"
    assert result["runtime_version"].count(".") >= 2
    # A fresh process: its peak memory is its own, far below a torch-importing parent's.
    assert 0 < result["peak_rss_mb"] < 400
    assert result["device_facts"]["arch"] and result["device_facts"]["cores"] >= 1


def test_runner_failure_is_one_line(tmp_path):
    from edgeport.errors import DeviceError

    with pytest.raises(DeviceError, match="benchmark runner failed"):
        local.run_json([sys.executable, str(local.RUNNER)], {
            "runtime": "onnxruntime", "model": str(tmp_path / "missing.onnx"), "inputs": [],
            "iterations": 1, "min_seconds": 0, "warmup": 0, "threads": 1}, timeout=120)

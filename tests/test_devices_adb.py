"""Android over adb. No phone exists here, so:
- the benchmark_model parser is tested on real benchmark_model output kept as a fixture
  (tests/fixtures/benchmark_model_am62x.txt names its source);
- the adb transport runs against a FAKE `adb` and a FAKE `benchmark_model` (tests/fake_adb.py):
  this is the one place the tests imitate what we integrate with, because no Android device or
  emulator can be had on these machines. The fake executes the commands edgeport sends through
  a real shell, so quoting and cleanup are still checked for real;
- a live test runs only when EDGEPORT_ADB_SERIAL names an attached phone."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeport import load_config
from edgeport.cli import app
from edgeport.devices.adb import parse_benchmark_model
from edgeport.errors import DeviceError
import edgeport
from tests.conftest import REPO, write_config

FIXTURE = REPO / "tests" / "fixtures" / "benchmark_model_am62x.txt"
cli = CliRunner()


def test_parse_real_benchmark_model_output():
    parsed = parse_benchmark_model(FIXTURE.read_text())
    assert parsed["iterations"] == 50  # the measured run, not the 1-run warm-up line before it
    assert parsed["min_ms"] == pytest.approx(1238.588)
    assert parsed["p50_ms"] == pytest.approx(1239.807)
    assert parsed["mean_ms"] == pytest.approx(1240.27)
    assert parsed["std_ms"] == pytest.approx(2.565)
    assert parsed["p5_ms"] == pytest.approx(1238.753) and parsed["p95_ms"] == pytest.approx(1247.415)
    assert parsed["load_ms"] == pytest.approx(5.579) and parsed["first_ms"] == pytest.approx(1357.602)
    assert parsed["peak_rss_mb"] == pytest.approx(109.832)
    assert parsed["throughput_per_s"] == pytest.approx(1e6 / 1.24027e6)
    assert parsed["p90_ms"] is None and parsed["p99_ms"] is None  # not reported: not made up


def test_output_without_statistics_is_one_clear_error():
    with pytest.raises(DeviceError, match="benchmark_model printed no timing statistics: .*Failed to load model"):
        parse_benchmark_model("INFO: STARTING!\nERROR: Failed to load model /data/local/tmp/x.tflite\n")


@pytest.fixture
def fake_phone(tmp_path, monkeypatch):
    """A fake `adb` on PATH and a fake benchmark_model that prints the real fixture output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!{sys.executable}\n" + (REPO / "tests" / "fake_adb.py").read_text())
    tool = tmp_path / "phone" / "benchmark_model"
    tool.parent.mkdir()
    log = tmp_path / "benchmark_model.argv"
    tool.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{log}'\n"
                    'for a in "$@"; do case "$a" in --graph=*) test -f "${a#--graph=}" || exit 1;; esac; done\n'
                    f"grep -v '^#' '{FIXTURE}'\n")
    for path in (adb, tool):
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    devices = tmp_path / "devices"
    devices.mkdir()
    workdir = tmp_path / "phone" / "work; echo pwned"
    (devices / "phone.toml").write_text(
        f'transport = "adb"\nserial = "FAKE123"\nbenchmark_model = "{tool}"\nworkdir = "{workdir}"\nthreads = 4\n'
        'arch = "aarch64"\nruntimes = ["tflite"]\n')
    return devices, log, workdir


@pytest.mark.tflite
def test_bench_tflite_through_adb_and_benchmark_model(tmp_path, fake_phone, model_cache):
    devices, log, workdir = fake_phone
    targets = '[targets.tflite]\nprecisions = ["fp32"]\n'
    (artifact,) = edgeport.export(load_config(write_config(tmp_path, targets=targets)))
    out = tmp_path / "bench.json"
    result = cli.invoke(app, ["bench", str(artifact.root), "--device", "phone", "--devices-dir", str(devices),
                              "--iterations", "50", "--warmup", "3", "--min-seconds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    assert row["device"] == "phone" and row["options"]["tool"] == "benchmark_model"
    assert row["p50_ms"] == pytest.approx(1239.807) and row["iterations"] == 50
    argv = log.read_text().splitlines()  # one argument a line: the work dir's `; echo pwned` stayed in it
    assert argv[0].startswith(f"--graph={workdir}/job-") and argv[0].endswith("/model.tflite")
    assert {"--num_threads=4", "--warmup_runs=3", "--num_runs=50", "--min_secs=1.0", "--use_xnnpack=true"} <= set(argv[1:])
    assert not list(Path(workdir).glob("job-*"))  # pushed files removed
    assert not (tmp_path / "pwned").exists()


def test_adb_device_that_is_not_attached(tmp_path, fake_phone, monkeypatch):
    devices, _, _ = fake_phone
    monkeypatch.setenv("FAKE_ADB_STATE", "unauthorized")
    result = cli.invoke(app, ["devices", "check", "phone", "--devices-dir", str(devices)])
    assert result.exit_code == 2
    assert "error: device phone: adb FAKE123 is not attached or not authorised" in result.output


@pytest.mark.adb
@pytest.mark.skipif(not os.environ.get("EDGEPORT_ADB_SERIAL"), reason="needs a real phone: set EDGEPORT_ADB_SERIAL")
@pytest.mark.tflite
def test_live_phone(tmp_path, model_cache):
    """On a real phone with benchmark_model pushed to /data/local/tmp (android_aarch64 build)."""
    assert shutil.which("adb"), "adb is not installed"
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "phone.toml").write_text(f'transport = "adb"\nserial = "{os.environ["EDGEPORT_ADB_SERIAL"]}"\n'
                                        'runtimes = ["tflite"]\n')
    check = cli.invoke(app, ["devices", "check", "phone", "--devices-dir", str(devices), "--json"])
    assert check.exit_code == 0, check.output
    (artifact,) = edgeport.export(load_config(write_config(tmp_path, targets='[targets.tflite]\nprecisions = ["fp32"]\n')))
    out = tmp_path / "bench.json"
    result = cli.invoke(app, ["bench", str(artifact.root), "--device", "phone", "--devices-dir", str(devices),
                              "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    assert row["device_facts"]["arch"] in ("aarch64", "armv8l") and row["p50_ms"] > 0


def test_builtin_profiles_are_valid_templates():
    from edgeport.devices.profiles import all_profiles

    profiles = all_profiles()
    assert {"local", "raspberry-pi-4", "raspberry-pi-5", "android-arm64"} <= set(profiles)
    for name in ("raspberry-pi-4", "raspberry-pi-5", "android-arm64"):
        assert profiles[name].arch == "aarch64" and profiles[name].threads == 4 and "tflite" in profiles[name].runtimes
    assert profiles["android-arm64"].transport == "adb" and profiles["raspberry-pi-4"].transport == "ssh"
    assert profiles["local"].source.startswith("built-in")

"""An emulated Raspberry Pi (aarch64 Debian under qemu-user, devices/emulated_pi/pi.sh) reached
over SSH: `devices check` and benchmarks of ONNX Runtime int8 and TFLite int8 on it, with the
accuracy measured on the device compared with the host's. Latency from here is emulated
(100-450x slower than real hardware) and is never quoted.

`make test-pi` builds the root file system (cached) and runs these with EDGEPORT_REQUIRE_PI=1,
so that a missing Pi fails instead of skipping."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.cli import app
from tests import sshd
from tests.conftest import REPO, write_config

pytestmark = [pytest.mark.pi_emulated, pytest.mark.ssh, pytest.mark.slow]
PI = REPO / "devices" / "emulated_pi" / "pi.sh"


def unavailable(reason: str):
    if os.environ.get("EDGEPORT_REQUIRE_PI"):
        pytest.fail(f"emulated Pi required but unavailable: {reason}")
    pytest.skip(f"emulated Pi unavailable ({reason}); `make test-pi` builds it")


@pytest.fixture(scope="module")
def pi_devices(tmp_path_factory):
    """A devices folder whose profile `pi` reaches the emulated Pi's own aarch64 sshd."""
    if os.geteuid() != 0:
        unavailable("needs root for chroot and mounts")
    root = subprocess.run(["bash", str(PI), "root"], capture_output=True, text=True).stdout.strip()
    if not (Path(root) / ".edgeport-built").is_file():
        unavailable(f"not built at {root}")
    folder = tmp_path_factory.mktemp("pi")
    sshd.keygen(folder / "key")
    port = sshd.free_port()
    subprocess.run(["bash", str(PI), "start", str(port), str(folder / "key.pub")], check=True)
    profile = sshd.Server(port, "pi", folder / "key", folder).profile(
        "pi", python="/opt/edgeport-venv/bin/python", workdir="/tmp/edgeport", arch="aarch64",
        runtimes=["onnxruntime", "tflite"], threads=2, connect_timeout=20, options=sshd.CLIENT_OPTIONS)
    (folder / "pi.toml").write_text(profile)
    yield folder
    subprocess.run(["bash", str(PI), "stop"], check=False)


def test_devices_check_on_the_emulated_pi(pi_devices):
    result = CliRunner().invoke(app, ["devices", "check", "pi", "--devices-dir", str(pi_devices), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["facts"]["arch"] == "aarch64" and report["facts"]["python"].startswith("3.11")
    assert report["runtimes"]["onnxruntime"]["version"] == "1.32.0"
    assert report["runtimes"]["tflite"]["module"] == "ai_edge_litert"
    assert report["missing"] == [] and report["warnings"] == []


@pytest.mark.onnxruntime
@pytest.mark.tflite
def test_ort_int8_and_tflite_int8_on_the_emulated_pi(tmp_path, pi_devices, model_cache):
    targets = '[targets.onnxruntime]\nprecisions = ["int8"]\n\n[targets.tflite]\nprecisions = ["int8"]\n'
    bench = ("[bench]\niterations = 10\nmin_seconds = 0.0\nwarmup = 2\nthreads = 1\nbaseline = false\n"
             "device_verify_samples = 540\n")  # the whole held-out split, as on the host
    body = f'[devices]\ndir = "{pi_devices}"\n\n[[bench.devices]]\nname = "pi"\n'
    result = run(load_config(write_config(tmp_path, body, targets=targets, bench=bench)))
    assert {r.artifact.label for r in result.artifacts} == {"onnxruntime/int8", "tflite/int8"}
    for r in result.artifacts:
        (b,) = r.bench
        assert b.device == "pi" and b.device_facts["arch"] == "aarch64"
        assert b.device_facts["python"].startswith("3.11") and b.iterations >= 10
        on_device, host = b.device_verify, r.verify
        assert on_device["samples"] == host.samples == 540
        # The same artifact computes the same classes on the Pi (aarch64 kernels) as on the host:
        assert abs(on_device["accuracy"] - host.accuracy) <= 1 / 540, (on_device, host.accuracy)
        assert on_device["top1_agreement"] >= 0.99 and on_device["cosine"] >= 0.99

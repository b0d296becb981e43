"""Defects found by feeding edgeport what an attacker or a hurried user would (issue 14): each
test here failed before its fix."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.types import Artifact
from tests.conftest import copy_run, fast_config

cli = CliRunner()


def invoke(*args):
    result = cli.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def error_line(output: str) -> str:
    """The one `error:` line, and no traceback."""
    assert "Traceback" not in output, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


# --- 1. a device profile must not run a local command


@pytest.mark.skipif(not shutil.which("ssh"), reason="needs the OpenSSH client")
@pytest.mark.parametrize("field", ["host", "ssh_alias"])
def test_ssh_profile_cannot_inject_an_option(tmp_path, field):
    marker = tmp_path / "pwned"
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "evil.toml").write_text(f'transport = "ssh"\n{field} = "-oProxyCommand=touch {marker}"\n'
                                       "connect_timeout = 2\n")
    code, output = invoke("devices", "check", "evil", "--devices-dir", devices)
    assert not marker.exists(), "the profile ran a local command"
    assert code == 2
    assert f"{field}: " in error_line(output) and "must not start with '-'" in error_line(output)


@pytest.mark.skipif(not shutil.which("ssh"), reason="needs the OpenSSH client")
def test_ssh_destination_is_never_parsed_as_an_option(tmp_path):
    """Even a profile that skipped validation puts the destination after `--`."""
    from edgeport.devices.profiles import SshProfile
    from edgeport.devices.ssh import SshDevice
    from edgeport.errors import DeviceError

    marker = tmp_path / "pwned"
    profile = SshProfile.model_construct(name="evil", transport="ssh", host=f"-oProxyCommand=touch {marker}",
                                         connect_timeout=2)
    with pytest.raises(DeviceError, match="cannot connect"):
        SshDevice(profile).connect()
    assert not marker.exists(), "ssh read the destination as an option"


@pytest.mark.parametrize("field, value, message", [
    ("user", "-oProxyCommand=x", "must not start with '-'"),
    ("host", "box\tname", "whitespace or control characters"),
    ("host", "box\nProxyCommand x", "whitespace or control characters"),
])
def test_ssh_profile_fields_are_validated(tmp_path, field, value, message):
    devices = tmp_path / "devices"
    devices.mkdir()
    fields = {"host": "box", field: value}
    (devices / "bad.toml").write_text('transport = "ssh"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    code, output = invoke("devices", "check", "bad", "--devices-dir", devices)
    assert code == 2 and message in error_line(output)


def test_adb_serial_cannot_be_an_option(tmp_path):
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "phone.toml").write_text('transport = "adb"\nserial = "-H evil.example"\n')
    code, output = invoke("devices", "check", "phone", "--devices-dir", devices)
    assert code == 2 and "serial: " in error_line(output) and "must not start with '-'" in error_line(output)


# --- 2. a bundle archive cannot fill the disk

BOMB = 256 << 20  # bytes of zeros (about 250 KB compressed)


def zip_with_extra(bundle: Path, out: Path, name: str, size: int) -> Path:
    from edgeport.pipeline.bundle_io import write_archive

    write_archive(bundle, out)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open(f"{bundle.name}/{name}", "w", force_zip64=True) as entry:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            entry.write(block)
    return out


def tar_with_extra(bundle: Path, out: Path, name: str, size: int) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
        info = tarfile.TarInfo(f"{bundle.name}/{name}")
        info.size = size
        tar.addfile(info, io.BufferedReader(ZeroReader(size)))
    return out


class ZeroReader(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.mark.onnxruntime
@pytest.mark.parametrize("pack", [zip_with_extra, tar_with_extra], ids=["zip", "tar.gz"])
def test_an_unlisted_entry_is_refused_before_extracting(finished_run, tmp_path, pack):
    from edgeport.errors import BundleError
    from edgeport.pipeline.bundle_io import safe_extract

    bundle = finished_run.bundles[0]
    archive = pack(bundle, tmp_path / ("bomb.zip" if pack is zip_with_extra else "bomb.tar.gz"), "zeros.bin", BOMB)
    assert archive.stat().st_size < BOMB // 50
    code, output = invoke("package", "verify", archive)
    # a zip's directory comes first: the entry is named as unlisted; a tar.gz's header is refused
    # for its size against the archive's before its data is read
    expected = "zeros.bin is not listed in manifest.json" if pack is zip_with_extra else "zeros.bin compresses"
    assert code == 2 and expected in error_line(output)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BundleError):
        safe_extract(archive, dest)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) == 0, "extracted before refusing"


@pytest.mark.onnxruntime
def test_a_listed_entry_that_compresses_like_a_bomb_is_refused(finished_run, tmp_path):
    """A manifest edited to list the bomb: its size is capped by the manifest, the ratio refuses it."""
    bundle = Path(shutil.copytree(finished_run.bundles[0], tmp_path / finished_run.bundles[0].name))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"].append({"path": "zeros.bin", "sha256": "0" * 64, "size_bytes": BOMB})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    archive = zip_with_extra(bundle, tmp_path / "listed.zip", "zeros.bin", BOMB)
    code, output = invoke("package", "verify", archive)
    assert code == 2 and "zeros.bin" in error_line(output) and "compresses" in error_line(output)


@pytest.mark.onnxruntime
def test_an_entry_larger_than_the_manifest_says_is_refused(finished_run, tmp_path):
    bundle = Path(shutil.copytree(finished_run.bundles[0], tmp_path / finished_run.bundles[0].name))
    (bundle / "README.md").write_text((bundle / "README.md").read_text() + "x" * 5000)
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    code, output = invoke("package", "verify", archive)
    assert code == 2 and "README.md" in error_line(output) and "the manifest says" in error_line(output)


# --- 4. --rebuild repairs what failed its hashes


@pytest.mark.onnxruntime
def test_rebuild_repairs_a_tampered_artifact(finished_run, tmp_path):
    config = copy_run(finished_run, tmp_path)
    folder = tmp_path / "runs" / "t" / "artifacts" / "onnxruntime-fp32"
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    code, output = invoke("run", config)
    assert code == 2 and "sha256 mismatch" in error_line(output) and "--rebuild" in error_line(output)
    code, output = invoke("run", config, "--rebuild")
    assert code == 0, output
    assert Artifact.load(folder).files[0].sha256 == Artifact.load(finished_run.artifacts[0].artifact.root).files[0].sha256


# --- 5. tolerances name known precisions and stay in range


@pytest.mark.parametrize("body, message", [
    ("[verify.tolerances.in8]\nmin_cosine = 0.5\n", "unknown precision 'in8' (did you mean \"int8\"?)"),
    ("[verify.tolerances.int8]\nmin_cosine = 7.0\n", "min_cosine: Input should be less than or equal to 1"),
    ("[verify.tolerances.fp32]\nmax_abs = -1\n", "max_abs: Input should be greater than or equal to 0"),
    ("[verify.tolerances.int8]\nmin_top1_agreement = 1.5\n", "min_top1_agreement: Input should be less than or equal to 1"),
    ("[verify.tolerances.int8]\nmax_accuracy_drop = 101\n", "max_accuracy_drop: Input should be less than or equal to 100"),
])
def test_tolerances_are_checked_in_dry_run(tmp_path, body, message):
    code, output = invoke("run", fast_config(tmp_path, body), "--dry-run")
    assert code == 2 and message in error_line(output)


# --- 6. string labels never give a silent 0 % accuracy


@pytest.mark.onnxruntime
def test_string_labels_are_refused(finished_run, tmp_path):
    from edgeport.calibration.digits import digits_split

    _, _, x, y = digits_split()
    np.savez(tmp_path / "digits.npz", image=x, labels=np.array([f"digit {i}" for i in y]))
    config = copy_run(finished_run, tmp_path,
                      data='[data]\nsource = "npy"\npath = "digits.npz"\ncalibration_samples = 64\n')
    code, output = invoke("run", config)
    line = error_line(output)
    assert code == 2 and "labels" in line and "strings" in line and "class indices" in line


# --- two runs of one run folder


@pytest.mark.onnxruntime
def test_a_second_run_of_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken_over(finished_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = copy_run(finished_run, tmp_path)
    slow = tmp_path / "slow.toml"  # the same run folder, benchmarking for a minute
    slow.write_text(config.read_text().replace("min_seconds = 0.0", "min_seconds = 60.0"))
    lock = tmp_path / "runs" / "t" / ".lock"
    first = subprocess.Popen([sys.executable, "-m", "edgeport", "run", str(slow)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        code, output = invoke("run", config)
        assert code == 2 and f"in use by another edgeport process (pid {first.pid})" in error_line(output)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert lock.read_text().strip() == str(first.pid)  # a killed run leaves its pid behind
    code, output = invoke("run", config)
    assert code == 0, output

"""The local machine as a device: the runner runs in a fresh Python process, so load time,
peak memory and latency are those of a process that does only this."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeport.devices.profiles import LocalProfile
from edgeport.devices.transport import Completed, Device, run_local
from edgeport.errors import DeviceError

RUNNER = Path(__file__).with_name("runner.py")


class LocalDevice(Device):
    """Commands run here without a shell; the work dir is a fresh temporary folder unless the
    profile names one."""

    def __init__(self, profile: LocalProfile | None = None):
        super().__init__(profile or LocalProfile(name="local"))
        self._tmp = None if self.profile.workdir else tempfile.mkdtemp(prefix="edgeport-local-")

    @property
    def python(self) -> str:
        return self.profile.python or sys.executable

    @property
    def workdir(self) -> str:
        return self.profile.workdir or self._tmp

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        return run_local(argv, timeout, stdin, f"device {self.name}")

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def run_json(argv: list[str], request: dict, timeout: float) -> dict:
    """Run `argv request.json result.json` here and return the parsed result (the PyTorch baseline)."""
    with tempfile.TemporaryDirectory(prefix="edgeport-bench-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = subprocess.run([*argv, str(req), str(res)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"local: benchmark did not finish within {timeout:.0f} s") from e
        if proc.returncode != 0 or not res.is_file():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit code {proc.returncode}"
            raise DeviceError(f"local: benchmark runner failed: {tail}")
        return json.loads(res.read_text())

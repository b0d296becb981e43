"""The local machine as a device: the runner runs in a fresh Python process, so load time,
peak memory and latency are those of a process that does only this."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeport.errors import DeviceError

RUNNER = Path(__file__).with_name("runner.py")


def run_json(argv: list[str], request: dict, timeout: float) -> dict:
    """Run `argv request.json result.json` and return the parsed result."""
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


def bench(request: dict, timeout: float = 600) -> dict:
    """Run the self-contained runner on this machine with this interpreter."""
    return run_json([sys.executable, str(RUNNER)], {**request, "device": "local"}, timeout)

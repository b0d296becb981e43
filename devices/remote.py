"""Benchmark an artifact on a device, and check what a device has.

The host pushes the runner, the target's loader, the artifact's files, the samples to feed and
request.json into a fresh job folder under the profile's work dir, runs the runner there, reads
result.json back and removes the job folder, whatever happened. Nothing here names a runtime:
what a runtime needs arrives as a DeviceRuntime record.
"""

from __future__ import annotations

import io
import json
import shlex
import tempfile
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgeport.devices.local import RUNNER
from edgeport.devices.transport import Device
from edgeport.errors import DeviceError
from edgeport.types import Artifact, DeviceRuntime

MISSING_MODULE = 3  # the runner's exit code when numpy or the runtime does not import


def pip_line(device: Device, packages: list[str]) -> str:
    """The command that installs `packages` on the device, pinned to the host's versions when the
    host has them (artifacts are built for those)."""
    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pinned.append(package)
    return shlex.join([device.python, "-m", "pip", "install", *pinned])


def measure(device: Device, artifact: Artifact, runtime: DeviceRuntime, settings: dict, samples: dict[str, np.ndarray],
            verify_inputs: dict[str, np.ndarray] | None = None, phone_inputs: dict[str, bytes] | None = None) -> dict:
    """Benchmark one artifact on a device: the runtime's native benchmark tool on a phone without
    Python (fed `phone_inputs`, raw tensors by the tool's tensor names), else edgeport's runner.
    `samples` are real inputs (by the user's input names, source layout) that the runner cycles
    through; never random values."""
    from edgeport.devices.adb import bench_with_phone_tool, uses_phone_tool

    if uses_phone_tool(device, runtime):
        return bench_with_phone_tool(device, artifact, settings, phone_inputs or {})
    if device.profile.transport == "adb" and not device.profile.python:
        raise DeviceError(f"device {device.name}: {artifact.label} needs edgeport's runner, and the profile names no "
                          "python on the phone; only runtimes with a native benchmark tool run there")
    return bench_artifact(device, artifact, runtime, settings, samples, verify_inputs)


def save_inputs(artifact: Artifact, arrays: dict[str, np.ndarray], path: Path) -> list[str]:
    """Inputs by the user's names (source layout) -> an .npz in the runtime's layout and dtype
    (in0, in1, ...); returns the runtime's names of those inputs, in that order."""
    np.savez(path, **{f"in{k}": a.from_source(arrays[a.name]) for k, a in enumerate(artifact.inputs)})
    return [a.key for a in artifact.inputs]


def bench_artifact(device: Device, artifact: Artifact, runtime: DeviceRuntime, settings: dict,
                   samples: dict[str, np.ndarray], verify_inputs: dict[str, np.ndarray] | None = None,
                   timeout: float | None = None) -> dict:
    """Run the runner on `device` for one artifact; the result dict has the BenchResult fields
    (and, with `verify_inputs`, the device's outputs for them as `verify_outputs`: one array per
    artifact output, in the artifact's order, in the source layout)."""
    job = f"{device.workdir.rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="edgeport-job-") as tmp:
        names = save_inputs(artifact, samples, Path(tmp) / "bench_inputs.npz")
        (Path(tmp) / "loader.py").write_text(runtime.loader)
        request = {**settings, "runtime": runtime.name, "model": artifact.files[0].path, "loader": "loader.py",
                   "modules": runtime.modules, "feeds": {"file": "bench_inputs.npz", "names": names},
                   "model_size_bytes": artifact.size_bytes, "device": device.name}
        files = {"runner.py": RUNNER, "loader.py": Path(tmp) / "loader.py",
                 "bench_inputs.npz": Path(tmp) / "bench_inputs.npz",
                 **{f.path: artifact.root / f.path for f in artifact.files}}
        if verify_inputs is not None:
            save_inputs(artifact, verify_inputs, Path(tmp) / "verify_inputs.npz")
            files["verify_inputs.npz"] = Path(tmp) / "verify_inputs.npz"
            request["verify"] = "verify_inputs.npz"
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        files["request.json"] = Path(tmp) / "request.json"
        try:
            device.push(files, job)
            done = device.run([device.python, f"{job}/runner.py", f"{job}/request.json", f"{job}/result.json"],
                              timeout or device.profile.timeout)
            result = read_result(device, artifact, job, done)
            if verify_inputs is not None:
                saved = result.pop("verify_outputs")
                with np.load(io.BytesIO(device.read(f"{job}/{saved['file']}"))) as data:
                    by_name = {n: data[f"out{k}"] for k, n in enumerate(saved["names"])}
                result["verify_outputs"] = [a.to_source(by_name[a.key]) for a in artifact.outputs]
            return result
        finally:
            device.remove(job)


def read_result(device: Device, artifact: Artifact, job: str, done) -> dict:
    """result.json, or one line that says why there is none."""
    where = f"device {device.name}"
    if done.killed:
        raise DeviceError(f"{where}: the runner was killed by a signal while measuring {artifact.label} "
                          "(out of memory, or stopped by someone on the device); nothing was measured for it")
    if done.returncode == MISSING_MODULE:
        missing = json.loads(device.read(f"{job}/result.json"))
        raise DeviceError(f"{where}: {missing['module']} is not installed there (needed for {artifact.label}): "
                          f"run `{pip_line(device, [missing['package']])}` on the device")
    if done.returncode == 127:  # the shell's "command not found"
        raise DeviceError(f"{where}: python {device.python!r} not found there; set `python` in the device profile")
    if done.returncode == 1:  # a Python exception: its last lines say what
        raise DeviceError(f"{where}: the runner failed on {artifact.label}: {done.tail(3)}")
    if done.returncode != 0:
        raise DeviceError(f"{where}: the runner stopped (exit code {done.returncode}) while measuring "
                          f"{artifact.label}: killed or crashed; {done.tail(2)}")
    return json.loads(device.read(f"{job}/result.json"))


def probe(device: Device, wanted: dict[str, list[tuple[str, str]]]) -> dict:
    """Push the runner and ask it for the device's facts and the versions of the runtimes in
    `wanted` (runtime -> its (module, pip package) alternatives)."""
    job = f"{device.workdir.rstrip('/')}/probe-{uuid.uuid4().hex[:12]}"
    try:
        device.push({"runner.py": RUNNER}, job)
        done = device.run([device.python, f"{job}/runner.py", "--probe", json.dumps(wanted)], timeout=120)
        if done.returncode == 127:
            raise DeviceError(f"device {device.name}: python {device.python!r} not found there; set `python` in the profile")
        if done.returncode != 0:
            raise DeviceError(f"device {device.name}: the runner's probe failed: {done.tail()}")
        return json.loads(done.stdout.decode())
    finally:
        device.remove(job)


def missing_runtimes(facts: dict, wanted: dict[str, list[tuple[str, str]]], expected: list[str]) -> list[str]:
    """Runtimes (and numpy) the profile expects but the device lacks, as pip package names."""
    missing = [] if facts.get("numpy") else ["numpy"]
    runtimes = facts.get("runtimes", {})
    missing += [wanted[r][0][1] for r in expected if r in wanted and not runtimes.get(r)]
    return missing


def check_output(output: Path) -> None:
    from edgeport.errors import ConfigError

    if output.is_dir() or not output.parent.is_dir():
        raise ConfigError(f"--out {output}: give a file in an existing folder (results are rewritten there "
                          "after every measurement)")

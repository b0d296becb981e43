"""Benchmark an artifact on a device, and check what a device has.

The host pushes the runner, the artifact's files and request.json into a fresh job folder
under the profile's work dir, runs the runner there, reads result.json back and removes the
job folder, whatever happened.
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
from edgeport.errors import ConfigError, DeviceError
from edgeport.types import Artifact

MISSING_MODULE = 3  # the runner's exit code when numpy or the runtime does not import
PIP_NAMES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert", "numpy": "numpy"}


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


def measure(device: Device, artifact: Artifact, settings: dict, samples: dict[str, np.ndarray],
            verify_inputs: dict[str, np.ndarray] | None = None) -> dict:
    """Benchmark one artifact on a device: TFLite's benchmark_model on a phone without Python,
    else edgeport's runner. `samples` are real inputs (by the user's input names, source layout)
    that the runner cycles through; never random values."""
    from edgeport.devices.adb import bench_with_benchmark_model, uses_benchmark_model

    if uses_benchmark_model(device, artifact):
        return bench_with_benchmark_model(device, artifact, settings, samples)
    if device.profile.transport == "adb" and not device.profile.python:
        raise DeviceError(f"device {device.name}: {artifact.label} needs edgeport's runner, and the profile names no "
                          "python on the phone; only tflite artifacts run there (through benchmark_model)")
    return bench_artifact(device, artifact, settings, samples, verify_inputs)


def save_inputs(artifact: Artifact, arrays: dict[str, np.ndarray], path: Path) -> list[str]:
    """Inputs by the user's names (source layout) -> an .npz in the runtime's layout and dtype
    (in0, in1, ...); returns the runtime's names of those inputs, in that order."""
    np.savez(path, **{f"in{k}": a.from_source(arrays[a.name]) for k, a in enumerate(artifact.inputs)})
    return [a.key for a in artifact.inputs]


def bench_artifact(device: Device, artifact: Artifact, settings: dict, samples: dict[str, np.ndarray],
                   verify_inputs: dict[str, np.ndarray] | None = None, timeout: float | None = None) -> dict:
    """Run the runner on `device` for one artifact; the result dict has the BenchResult fields
    (and, with `verify_inputs`, the device's outputs for them as `verify_outputs`: one array per
    artifact output, in the artifact's order, in the source layout)."""
    job = f"{device.workdir.rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="edgeport-job-") as tmp:
        names = save_inputs(artifact, samples, Path(tmp) / "bench_inputs.npz")
        request = {**settings, "runtime": artifact.target, "model": artifact.files[0].path,
                   "feeds": {"file": "bench_inputs.npz", "names": names}, "model_size_bytes": artifact.size_bytes,
                   "device": device.name}
        files = {"runner.py": RUNNER, "bench_inputs.npz": Path(tmp) / "bench_inputs.npz",
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
        runtime = artifact.target if missing["module"] != "numpy" else "numpy"
        raise DeviceError(f"{where}: {missing['module']} is not installed there (needed for {artifact.label}): "
                          f"run `{pip_line(device, [PIP_NAMES.get(runtime, missing['package'])])}` on the device")
    if done.returncode == 127:  # the shell's "command not found"
        raise DeviceError(f"{where}: python {device.python!r} not found there; set `python` in the device profile")
    if done.returncode == 1:  # a Python exception: its last lines say what
        raise DeviceError(f"{where}: the runner failed on {artifact.label}: {done.tail(3)}")
    if done.returncode != 0:
        raise DeviceError(f"{where}: the runner stopped (exit code {done.returncode}) while measuring "
                          f"{artifact.label}: killed or crashed; {done.tail(2)}")
    return json.loads(device.read(f"{job}/result.json"))


def probe(device: Device) -> dict:
    """Push the runner and ask it for the device's facts and runtime versions."""
    job = f"{device.workdir.rstrip('/')}/probe-{uuid.uuid4().hex[:12]}"
    try:
        device.push({"runner.py": RUNNER}, job)
        done = device.run([device.python, f"{job}/runner.py", "--probe"], timeout=120)
        if done.returncode == 127:
            raise DeviceError(f"device {device.name}: python {device.python!r} not found there; set `python` in the profile")
        if done.returncode != 0:
            raise DeviceError(f"device {device.name}: the runner's probe failed: {done.tail()}")
        return json.loads(done.stdout.decode())
    finally:
        device.remove(job)


def missing_runtimes(device: Device, facts: dict, wanted: list[str]) -> list[str]:
    """Runtimes (and numpy) the profile expects but the device lacks, as pip package names."""
    missing = [] if facts.get("numpy") else ["numpy"]
    runtimes = facts.get("runtimes", {})
    missing += [PIP_NAMES[r] for r in wanted if not runtimes.get(r)]
    return missing


def run_samples_for(artifact: Artifact, data: Path | None, count: int = 32) -> dict[str, np.ndarray]:
    """Held-out samples to time `artifact` on: from `data` (an .npz of arrays named by input), or
    else from the run the artifact belongs to (runs/NAME/calibration/evaluation.npz)."""
    from edgeport.errors import ConfigError

    path = data or artifact.root.resolve().parent.parent / "calibration" / "evaluation.npz"
    if not path.is_file():
        raise ConfigError(f"{artifact.label}: no samples to feed it ({path} not found): pass --data FILE.npz with "
                          "one array per input name (random values would time a token model on garbage ids)")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k.removeprefix("input:"): f[k] for k in f.files if k != "labels" and not k.startswith("_")}
    missing = [a.name for a in artifact.inputs if a.name not in arrays]
    if missing:
        raise ConfigError(f"{path}: no array for input(s) {', '.join(missing)} (found {', '.join(arrays)})")
    return {a.name: arrays[a.name][:count] for a in artifact.inputs}


def check_output(output: Path) -> None:
    if output.is_dir() or not output.parent.is_dir():
        raise ConfigError(f"--out {output}: give a file in an existing folder (results are rewritten there "
                          "after every measurement)")


def bench_many(artifact_paths: list[Path], device_names: list[str], devices_dir, settings: dict, runtime_options: dict,
               output: Path, data: Path | None = None):
    """`edgeport bench`: every artifact on every device, yielding (artifact, BenchResult) as each is
    measured and rewriting `output` after each, so a failure keeps what was already measured."""
    from edgeport.devices.profiles import get_profile
    from edgeport.devices.transport import open_device
    from edgeport.types import BenchResult, write_text_atomic

    check_output(output)
    artifacts = [Artifact.load(p) for p in artifact_paths]  # hashes checked before any device work
    samples = {a.root: run_samples_for(a, data) for a in artifacts}
    profiles = [get_profile(name, devices_dir) for name in device_names]
    done: list[dict] = []
    for profile in profiles:
        with open_device(profile) as device:
            for artifact in artifacts:
                threads = settings["threads"] if settings["threads"] is not None else profile.threads
                options = {"hint": runtime_options["hint"]} if artifact.target == "openvino" else {}
                try:
                    result = BenchResult.model_validate(measure(device, artifact, {**settings, "threads": threads,
                                                                                   "options": options},
                                                               samples[artifact.root]))
                except DeviceError as e:
                    kept = f"{len(done)} result(s) already measured are kept in {output}" if done else "nothing was measured yet"
                    raise DeviceError(f"{e}. {kept}") from e
                done.append({"artifact": str(artifact.root), **result.model_dump()})
                write_text_atomic(output, json.dumps(done, indent=2))
                yield artifact, result

"""Android over adb: push to /data/local/tmp/edgeport/, then run TFLite's own benchmark_model
binary (tflite artifacts) or edgeport's runner with a Python on the phone, if the profile names one.

benchmark_model prints its statistics as text; `parse_benchmark_model` turns them into the
BenchResult fields. It reports min, avg, std and (since TF 2.13 or so) p5/median/p95, not p90
or p99: those stay empty rather than being made up.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import uuid
from pathlib import Path

from edgeport.devices.profiles import AdbProfile
from edgeport.devices.transport import Completed, Device, run_local
from edgeport.errors import DeviceError, DeviceUnreachableError
from edgeport.types import Artifact, DeviceRuntime

FACTS_SCRIPT = ("echo arch=$(uname -m); echo cores=$(nproc 2>/dev/null); echo model=$(getprop ro.product.model); "
                "echo soc=$(getprop ro.soc.model); echo android=$(getprop ro.build.version.release); "
                "echo abi=$(getprop ro.product.cpu.abi); "
                "echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null); "
                "echo temp=$(cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null)")


class AdbDevice(Device):
    def __init__(self, profile: AdbProfile):
        super().__init__(profile)
        self.base = ["adb", *(["-s", profile.serial] if profile.serial else [])]
        self._connected = False

    def connect(self) -> None:
        if self._connected:
            return
        done = run_local([*self.base, "get-state"], 15, None, f"device {self.name}")
        if done.returncode != 0 or done.stdout.decode().strip() != "device":
            raise DeviceUnreachableError(f"device {self.name}: {self.profile.address} is not attached or not authorised: {done.tail(1)}")
        self._connected = True

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        if stdin is not None:
            raise DeviceError(f"device {self.name}: adb commands take no standard input here")
        self.connect()
        # `adb shell` joins its arguments for the phone's shell: quote each one.
        return run_local([*self.base, "shell", shlex.join(argv)], timeout, None, f"device {self.name}")

    def push(self, files, remote_dir: str) -> None:
        self.check(["mkdir", "-p", remote_dir], what=f"creating {remote_dir}")
        for name, path in files.items():
            target = f"{remote_dir}/{name}"
            if "/" in name:
                self.check(["mkdir", "-p", target.rsplit("/", 1)[0]])
            done = run_local([*self.base, "push", str(path), target], 600, None, f"device {self.name}")
            if done.returncode != 0:
                raise DeviceError(f"device {self.name}: adb push {path.name} failed: {done.tail(1)}")

    def read(self, remote_path: str) -> bytes:
        self.connect()
        done = run_local([*self.base, "exec-out", shlex.join(["cat", remote_path])], 300, None, f"device {self.name}")
        if done.returncode != 0:
            raise DeviceError(f"device {self.name}: reading {remote_path} failed: {done.tail(1)}")
        return done.stdout

    def facts(self) -> dict:
        lines = self.check(["sh", "-c", FACTS_SCRIPT], what="reading device facts").decode(errors="replace")
        raw = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
        temp = raw.get("temp", "").strip()
        return {"arch": raw.get("arch"), "cpu": raw.get("soc") or raw.get("model"), "cores": int(raw["cores"]) if raw.get("cores", "").isdigit() else None,
                "os": f"Android {raw.get('android')} ({raw.get('model')}, {raw.get('abi')})", "python": None, "numpy": None,
                "governor": raw.get("governor") or None,
                "temperature_c": int(temp) / 1000 if temp.lstrip("-").isdigit() else None}


def uses_phone_tool(device: Device, runtime: DeviceRuntime) -> bool:
    """A phone without Python, and a runtime whose native benchmark tool the profile locates."""
    profile = device.profile
    return (isinstance(profile, AdbProfile) and runtime.phone_benchmark == "benchmark_model"
            and bool(profile.benchmark_model) and not profile.python)


def bench_with_phone_tool(device: AdbDevice, artifact: Artifact, settings: dict, inputs: dict[str, bytes]) -> dict:
    """Push the model file and one real sample per input (raw bytes by tensor name, as
    --input_layer_value_files reads them: without them the tool times random values, and random
    token ids are garbage), run TFLite's benchmark_model, parse what it prints."""
    job = f"{device.workdir.rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
    model = artifact.files[0].path
    xnnpack = settings.get("options", {}).get("xnnpack", True)
    tmp = Path(tempfile.mkdtemp(prefix="edgeport-adb-"))
    values = {}
    for k, (name, data) in enumerate(inputs.items()):
        values[name] = tmp / f"input{k}.bin"
        values[name].write_bytes(data)
    argv = [device.profile.benchmark_model, f"--graph={job}/{model}", f"--num_threads={settings['threads']}",
            f"--warmup_runs={settings['warmup']}", f"--num_runs={settings['iterations']}",
            f"--min_secs={settings['min_seconds']}", f"--use_xnnpack={'true' if xnnpack else 'false'}"]
    if values:
        argv.append("--input_layer_value_files=" + ",".join(f"{n}:{job}/{p.name}" for n, p in values.items()))
    try:
        device.push({model: artifact.root / model, **{p.name: p for p in values.values()}}, job)
        done = device.run(argv, device.profile.timeout)
        if done.returncode != 0:
            raise DeviceError(f"device {device.name}: benchmark_model failed on {artifact.label} "
                              f"(exit code {done.returncode}): {done.tail(2) if done.stderr.strip() else done.stdout.decode()[-200:]}")
        parsed = parse_benchmark_model(done.stdout.decode(errors="replace") + done.stderr)
    finally:
        device.remove(job)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"device": device.name, "runtime": artifact.target, "runtime_version": "benchmark_model",
            "threads": settings["threads"], "warmup": settings["warmup"], "batch": 1, **parsed,
            "model_size_bytes": artifact.size_bytes,
            "options": {"tool": "benchmark_model", "xnnpack": xnnpack, "clock": "benchmark_model",
                        "p5_ms": parsed.pop("p5_ms"), "p95_ms": parsed.pop("p95_ms")},
            "device_facts": device.facts()}


STATS = re.compile(r"count=(\d+)\s+first=(\S+)\s+curr=\S+\s+min=(\S+)\s+max=(\S+)\s+avg=(\S+)\s+std=(\S+)"
                   r"(?:\s+p5=(\S+)\s+median=(\S+)\s+p95=(\S+))?")
TIMINGS = re.compile(r"Inference timings in us: Init: (\S+), First inference: (\S+), Warmup \(avg\): (\S+), "
                     r"Inference \(avg\): (\S+)")
MEMORY = re.compile(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                    r"init=(\S+) overall=(\S+)")
PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: (\S+)")


def parse_benchmark_model(text: str) -> dict:
    """BenchResult fields (ms) from benchmark_model's output. The measured run's statistics are
    the last `count=... first=...` line (the warm-up line before it has no `first=`)."""
    runs = STATS.findall(text)
    timings = TIMINGS.search(text)
    if not runs or not timings:
        tail = " | ".join(text.strip().splitlines()[-2:])
        raise DeviceError(f"benchmark_model printed no timing statistics: {tail[:300]}")
    count, first, low, _high, avg, std, p5, median, p95 = runs[-1]
    us = lambda v: float(v) / 1000.0 if v else None  # noqa: E731 (microseconds -> ms)
    peak = PEAK.search(text) or MEMORY.search(text)
    return {
        "iterations": int(count), "min_ms": us(low), "p50_ms": us(median), "p90_ms": None, "p99_ms": None,
        "mean_ms": us(avg), "std_ms": us(std), "throughput_per_s": 1e6 / float(avg),
        "load_ms": us(timings.group(1)), "first_ms": us(timings.group(2)),
        "peak_rss_mb": float(peak.groups()[-1]) if peak else 0.0, "p5_ms": us(p5), "p95_ms": us(p95),
    }

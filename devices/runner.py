"""The on-device benchmark runner: one self-contained file.

It needs only the standard library, numpy and the one runtime it measures, so
the host can copy it to a Raspberry Pi or a phone and run it there:

    python runner.py request.json result.json

request.json names the model file, the loader (loader.py: the target's own
`load` function, pushed beside this file), the samples to feed and how long to
measure; result.json gets the BenchResult fields and the device's facts.
Nothing here imports edgeport or names a runtime.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

try:
    import numpy as np
except ImportError:  # the probe still answers, saying numpy is missing
    np = None

MISSING_RUNTIME = 3  # exit code: the runtime (or numpy) is not installed here


def measure(run_once, warmup: int, iterations: int, min_seconds: float, runtime_clock=None, next_inputs=None) -> dict:
    """Time `run_once`: `warmup` calls untimed, then at least `iterations` calls and `min_seconds`.

    With `runtime_clock` (a function returning the runtime's own latency of the last call, in
    ms), the statistics come from it and the wall-clock median is kept as `wall_p50_ms`.
    `next_inputs()`, when given, binds the next sample before each call, outside the timing.
    """
    for _ in range(warmup):
        if next_inputs is not None:
            next_inputs()
        run_once()
    times_ns, runtime_ms = [], []
    started = time.perf_counter()
    while len(times_ns) < iterations or time.perf_counter() - started < min_seconds:
        if next_inputs is not None:
            next_inputs()
        t0 = time.perf_counter_ns()
        run_once()
        times_ns.append(time.perf_counter_ns() - t0)
        if runtime_clock is not None:
            runtime_ms.append(runtime_clock())
    wall = np.asarray(times_ns, dtype=np.float64) / 1e6
    ms = np.asarray(runtime_ms) if runtime_clock is not None else wall
    return {
        "clock": "runtime" if runtime_clock is not None else "wall",
        "wall_p50_ms": float(np.percentile(wall, 50)),
        "iterations": len(ms),
        "min_ms": float(ms.min()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "throughput_per_s": float(1000.0 / ms.mean()),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, because ru_maxrss survives exec and
    would report the parent's peak."""
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_samples(path: str, names: list[str]) -> list[dict]:
    """The samples to feed, one dict per sample (batch of one), from an .npz holding one array per
    input (`in0`, `in1`, ... in the order of `names`, the runtime's tensor names), sample axis first."""
    with np.load(path) as data:
        arrays = [data[f"in{k}"] for k in range(len(names))]
    return [{name: np.ascontiguousarray(a[i : i + 1]) for name, a in zip(names, arrays)} for i in range(len(arrays[0]))]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def device_facts() -> dict:
    cpu = None
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            cpu = line.split(":", 1)[1].strip()
            break
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    return {
        "arch": platform.machine(),
        "cpu": cpu or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__ if np is not None else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": float(temp) / 1000.0 if temp and temp.lstrip("-").isdigit() else None,
    }


# --- the runtime: loader.py (from the target) defines load(path, threads, options, shapes) -> dict.
# Inputs are bound before each timed call, as an app reuses its input buffers (and as benchmark_app
# and benchmark_model measure): the timed call is the inference, not copying numpy arrays in.


class Loaded:
    def __init__(self, version, ran: dict, set_inputs, invoke, clock=None):
        self.version, self.ran, self.set_inputs, self.invoke, self.clock = version, ran, set_inputs, invoke, clock


def import_loader(path: str):
    """The `load` function of the target's loader.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgeport_runtime_loader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load


def bench(request: dict, folder: str = ".") -> dict:
    """Load the model, time it on the samples the host sent (cycled, each bound before its call,
    outside the timing), and return the BenchResult fields. With request["verify"], also run
    every sample of that .npz (inputs already in the artifact's layout and dtype) and save the
    outputs beside the result for the host to compare with PyTorch."""
    runtime = request["runtime"]
    threads = int(request.get("threads") or 0) or os.cpu_count() or 1  # 0 = every core of this device
    model = os.path.join(folder, request["model"])
    names = request["feeds"]["names"]
    samples = load_samples(os.path.join(folder, request["feeds"]["file"]), names)
    t0 = time.perf_counter()
    load = import_loader(os.path.join(folder, request["loader"]))
    loaded = Loaded(**load(model, threads, request.get("options", {}), {k: v.shape for k, v in samples[0].items()}))
    loaded.set_inputs(samples[0])
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    loaded.invoke()
    first_ms = (time.perf_counter() - t0) * 1e3
    order = iter(range(1 << 62))
    cycle = (lambda: loaded.set_inputs(samples[next(order) % len(samples)])) if len(samples) > 1 else None
    stats = measure(loaded.invoke, int(request["warmup"]), int(request["iterations"]), float(request["min_seconds"]),
                    loaded.clock, cycle)
    ran = dict(loaded.ran)
    ran["clock"], ran["wall_p50_ms"] = stats.pop("clock"), stats.pop("wall_p50_ms")
    ran["inputs"] = f"{len(samples)} held-out sample(s), cycled"
    result = {
        "device": request.get("device", "local"),
        "runtime": runtime,
        "runtime_version": str(loaded.version),
        "threads": threads,
        "warmup": int(request["warmup"]),
        "batch": 1,
        **stats,
        "load_ms": load_ms,
        "first_ms": first_ms,
        "peak_rss_mb": peak_rss_mb(),
        "model_size_bytes": int(request.get("model_size_bytes") or os.path.getsize(model)),
        "options": ran,
        "device_facts": device_facts(),
    }
    if request.get("verify"):
        result["verify_outputs"] = run_samples(loaded, os.path.join(folder, request["verify"]), names, folder)
    return result


def run_samples(loaded: Loaded, path: str, names: list[str], folder: str) -> dict:
    """Run each sample of an .npz of inputs (in0, in1, ... for `names`) one at a time; write the
    outputs to verify_outputs.npz (out0, out1, ...) and return its name with the output names."""
    outputs: dict[str, list] = {}
    for feeds in load_samples(path, names):
        loaded.set_inputs(feeds)
        for name, out in loaded.invoke().items():
            outputs.setdefault(name, []).append(np.array(out.numpy() if hasattr(out, "numpy") else out))  # a copy
    keys = list(outputs)
    file = "verify_outputs.npz"
    np.savez(os.path.join(folder, file), **{f"out{k}": np.concatenate(outputs[n]) for k, n in enumerate(keys)})
    return {"file": file, "names": keys}


def runtime_versions(wanted: dict) -> dict:
    """Each runtime's version here, or None when it does not import (with why). `wanted` maps a
    runtime to its (module, pip package) alternatives, the first that imports wins."""
    found = {}
    for runtime, candidates in wanted.items():
        found[runtime] = None
        for module, package in candidates:
            try:
                lib = __import__(module)
            except ModuleNotFoundError:
                continue
            except Exception as e:  # installed but broken, e.g. tflite_runtime under numpy 2
                found.setdefault("problems", {})[module] = f"{e.__class__.__name__}: {e}"[:200]
                continue
            version = getattr(lib, "__version__", None) or (lib.get_version() if hasattr(lib, "get_version") else "?")
            found[runtime] = {"module": module, "package": package, "version": str(version)}
            break
    return found


def probe(wanted: dict) -> dict:
    """What `edgeport devices check` reports: facts, Python, numpy and each runtime."""
    if np is None:
        return {"arch": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
                "numpy": None, "runtimes": {}}
    return {**device_facts(), "runtimes": runtime_versions(wanted)}


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--probe":
        print(json.dumps(probe(json.loads(argv[2]))))
        return 0
    if len(argv) != 3:
        print("usage: runner.py request.json result.json | runner.py --probe RUNTIMES_JSON", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        request = json.load(f)
    folder = os.path.dirname(os.path.abspath(argv[1]))
    try:
        if np is None:
            raise ImportError("No module named 'numpy'", name="numpy")
        result = bench(request, folder)
    except ImportError as e:
        # Tell the host exactly what is missing, so it can print the pip line.
        missing = e.name or str(e)
        packages = dict(request.get("modules", []))
        write_json(argv[2], {"error": "missing-module", "module": missing,
                             "package": packages.get(missing, missing), "detail": str(e)[:300]})
        return MISSING_RUNTIME
    write_json(argv[2], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

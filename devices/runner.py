"""The on-device benchmark runner: one self-contained file.

It needs only the standard library, numpy and the one runtime it measures, so
the host can copy it to a Raspberry Pi or a phone and run it there:

    python runner.py request.json result.json

request.json names the model file, the runtime, the input specs and how long
to measure; result.json gets the BenchResult fields and the device's facts.
Nothing here imports edgeport.
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

# The module each runtime is imported as, and the pip package that provides it.
RUNTIME_PACKAGES = {
    "onnxruntime": [("onnxruntime", "onnxruntime")],
    "openvino": [("openvino", "openvino")],
    "tflite": [("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime")],
}
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


# --- one loader per runtime: (path, threads, options, shapes) -> Loaded.
# Inputs are bound once before timing, as an app reuses its input buffers (and as benchmark_app
# and benchmark_model measure): the timed call is the inference, not copying numpy arrays in.


class Loaded:
    def __init__(self, version, ran: dict, set_inputs, invoke, clock=None):
        self.version, self.ran, self.set_inputs, self.invoke, self.clock = version, ran, set_inputs, invoke, clock


def load_onnxruntime(path: str, threads: int, options: dict, shapes: dict) -> Loaded:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    binding = session.io_binding()

    names = [o.name for o in session.get_outputs()]

    def set_inputs(feeds):
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")

    def invoke():
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs()))

    return Loaded(ort.__version__, {"providers": ["CPUExecutionProvider"], "io": "bound once"}, set_inputs, invoke)


def load_openvino(path: str, threads: int, options: dict, shapes: dict) -> Loaded:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    if model.is_dynamic():  # fix the batch as a deployed app would: static shapes get faster kernels
        model.reshape({name: list(shape) for name, shape in shapes.items()})
    hint = options.get("hint", "f32")
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY").upper()}
    if hint != "default":
        config["INFERENCE_PRECISION_HINT"] = hint
    if options.get("streams"):
        config["NUM_STREAMS"] = str(options["streams"])
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    ran = {"io": "bound once",
        "hint": hint,
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
    }

    def set_inputs(feeds):
        for name, value in feeds.items():
            request.set_tensor(name, ov.Tensor(value, shared_memory=True))

    def invoke():
        request.infer()
        return {name: request.get_output_tensor(i).data for i, o in enumerate(compiled.outputs) for name in o.get_names()}

    # OpenVINO times each request itself (what benchmark_app reports); the Python call adds
    # a few microseconds that a C++ app does not pay. The wall-clock median is kept too.
    return Loaded(ov.get_version(), ran, set_inputs, invoke, lambda: request.latency)


def load_tflite(path: str, threads: int, options: dict, shapes: dict) -> Loaded:
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert as lib
    except ImportError:  # older boards: the frozen tflite_runtime wheel
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime as lib
    kwargs = {"num_threads": threads}
    if options.get("xnnpack") is False:
        from ai_edge_litert.interpreter import OpResolverType

        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=path, **kwargs)
    interpreter.allocate_tensors()
    # Tensors are named by the signature's keys (tensor indices follow no useful order).
    signature = interpreter.get_signature_runner()
    ins = {k: d["index"] for k, d in signature.get_input_details().items()}
    outs = {k: d["index"] for k, d in signature.get_output_details().items()}

    def set_inputs(feeds):
        for name, value in feeds.items():
            interpreter.set_tensor(ins[name], value)

    def invoke():
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in outs.items()}

    ran = {"xnnpack": options.get("xnnpack", True), "io": "bound once"}
    return Loaded(getattr(lib, "__version__", "unknown"), ran, set_inputs, invoke)


LOADERS = {"onnxruntime": load_onnxruntime, "openvino": load_openvino, "tflite": load_tflite}


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
    loaded = LOADERS[runtime](model, threads, request.get("options", {}), {k: v.shape for k, v in samples[0].items()})
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


def runtime_versions() -> dict:
    """Each runtime's version here, or None when it does not import (with why)."""
    found = {}
    for runtime, candidates in RUNTIME_PACKAGES.items():
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


def probe() -> dict:
    """What `edgeport devices check` reports: facts, Python, numpy and each runtime."""
    if np is None:
        return {"arch": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
                "numpy": None, "runtimes": {}}
    return {**device_facts(), "runtimes": runtime_versions()}


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] == "--probe":
        print(json.dumps(probe()))
        return 0
    if len(argv) != 3:
        print("usage: runner.py request.json result.json | runner.py --probe", file=sys.stderr)
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
        packages = {m: p for candidates in RUNTIME_PACKAGES.values() for m, p in candidates}
        write_json(argv[2], {"error": "missing-module", "module": missing,
                             "package": packages.get(missing, missing), "detail": str(e)[:300]})
        return MISSING_RUNTIME
    write_json(argv[2], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

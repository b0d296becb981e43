"""edgeport's timing of an OpenVINO IR next to OpenVINO's own benchmark_app, in one run.

For the demo model's int8 IR: same threads, same performance hint, one stream,
f32 inference precision, batch 1, sync API. The two are interleaved for a few
rounds (this machine is shared and noisy) and the medians of their p50s compared.

    .venv/bin/python benchmarks/openvino_vs_benchmark_app.py [--rounds 3] [--seconds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from edgeport.devices.local import LocalDevice
from edgeport.devices.remote import measure
from edgeport.pipeline.config import load_config
from edgeport.pipeline.run import Run


def demo_int8_ir(runs_dir: Path):
    config = load_config(Path(str(files("edgeport.examples") / "digits.toml")), {"runs_dir": str(runs_dir)})
    return Run(config).artifacts(["openvino"], ["int8"])[0]


def benchmark_app_median(xml: Path, shape: list[int], threads: int, seconds: float) -> float:
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    # benchmark_app takes -nthreads/-nstreams only with -hint none; one stream and one request
    # is what edgeport's latency hint with streams = 1 compiles to.
    argv = [tool, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nthreads", str(threads), "-nstreams", "1",
            "-nireq", "1", "-api", "sync", "-infer_precision", "f32", "-shape", str(shape).replace(" ", ""), "-t", str(round(seconds))]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([\d.]+) (ms|us)", out)
    if not match:
        raise RuntimeError(f"no median latency in benchmark_app's output:\n{out[-2000:]}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def edgeport_p50(artifact, threads: int, seconds: float) -> float:
    settings = {"options": {"hint": "f32", "performance_hint": "latency", "streams": 1},
                "iterations": 100, "min_seconds": seconds, "warmup": 10, "threads": threads}
    with LocalDevice() as device:
        result = measure(device, artifact, settings)
    return result["p50_ms"], result["options"]["wall_p50_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()

    artifact = demo_int8_ir(args.runs_dir)
    shape = list(artifact.inputs[0].concrete_shape(1))
    ours, walls, theirs = [], [], []
    for i in range(args.rounds):
        theirs.append(benchmark_app_median(artifact.main_file, shape, args.threads, args.seconds))
        p50, wall = edgeport_p50(artifact, args.threads, args.seconds)
        ours.append(p50)
        walls.append(wall)
        print(f"round {i + 1}: benchmark_app median {theirs[-1]:.4f} ms, edgeport p50 {p50:.4f} ms "
              f"(wall clock around the Python call: {wall:.4f} ms)")
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"\nOpenVINO int8 IR {artifact.main_file} ({args.threads} thread(s), 1 stream, 1 request, f32 precision)")
    print(f"benchmark_app median latency: {b:.4f} ms")
    print(f"edgeport p50 latency:         {a:.4f} ms")
    print(f"ratio edgeport / benchmark_app: {a / b:.3f}")
    print(f"edgeport wall-clock p50 (incl. Python call overhead): {statistics.median(walls):.4f} ms")


if __name__ == "__main__":
    main()

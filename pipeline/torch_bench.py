"""PyTorch eager fp32 timed by the same harness as every runtime, in its own process:

    python -m edgeport.pipeline.torch_bench request.json result.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgeport.devices import runner
from edgeport.pipeline.config import ModelConfig
from edgeport.pipeline.model_loading import as_list, load_model


def bench(request: dict) -> dict:
    threads = int(request["threads"]) or os.cpu_count() or 1  # 0 = every core, as the runner counts
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(ModelConfig.model_validate(request["model"]), Path(request["base_dir"]))
    load_ms = (time.perf_counter() - t0) * 1e3
    # The same held-out samples the runtimes are timed on, cycled (never random values).
    with np.load(request["samples"], allow_pickle=False) as data:
        arrays = [data[f"input:{s.name}"][: int(request["count"])] for s in loaded.inputs]
    samples = [[torch.from_numpy(np.ascontiguousarray(a[i : i + 1])) for a in arrays] for i in range(len(arrays[0]))]
    args, turn = samples[0], 0

    def next_inputs():
        nonlocal args, turn
        turn += 1
        args = samples[turn % len(samples)]

    def run_once():
        with torch.inference_mode():
            return as_list(loaded.module(*args))

    t0 = time.perf_counter()
    run_once()
    first_ms = (time.perf_counter() - t0) * 1e3
    stats = runner.measure(run_once, int(request["warmup"]), int(request["iterations"]), float(request["min_seconds"]),
                           next_inputs=next_inputs)
    stats.pop("clock"), stats.pop("wall_p50_ms")
    size = sum(p.numel() * p.element_size() for p in loaded.module.state_dict().values())
    return {
        "device": "local", "runtime": "pytorch-eager", "runtime_version": torch.__version__, "threads": threads,
        "warmup": int(request["warmup"]), "batch": 1, **stats,
        "load_ms": load_ms, "first_ms": first_ms, "peak_rss_mb": runner.peak_rss_mb(), "model_size_bytes": size,
        "options": {"mode": "eager", "inference_mode": True, "clock": "wall",
                    "inputs": f"{len(samples)} held-out sample(s), cycled"}, "device_facts": runner.device_facts(),
    }


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    result = bench(request)
    tmp = argv[2] + ".tmp"
    Path(tmp).write_text(json.dumps(result, indent=2))
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

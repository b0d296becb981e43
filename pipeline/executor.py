"""Where `edgeport tune` builds and verifies candidates: a local process pool sized to the
cores, or a Ray cluster. Both yield results as they finish. Workers share the run folder (a
local disk here; on a multi-node Ray cluster it must be a shared file system), and the stage
cache lets each worker reuse what another finished. Benchmarks never run here: the search
runs them afterwards, one at a time per device."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from edgeport.errors import ConfigError, require


class LocalPool:
    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        self.description = f"local process pool, {self.workers} worker(s)"

    def run(self, fn: Callable[[dict], dict], tasks: list[dict]) -> Iterator[tuple[dict, dict]]:
        if self.workers == 1 or len(tasks) <= 1:  # no pool for one task: same process, same result
            for task in tasks:
                yield task, fn(task)
            return
        # spawn, not fork: the parent has torch's thread pools running
        with ProcessPoolExecutor(min(self.workers, len(tasks)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, task): task for task in tasks}
            for future in as_completed(futures):
                yield futures[future], outcome(future.result)


    def close(self) -> None:
        """Each run() already ended its processes."""


class RayPool:
    def __init__(self, address: str = "local", workers: int = 0):
        self.ray = require("ray", "ray")
        self.started_here = not self.ray.is_initialized() and address == "local"
        if not self.ray.is_initialized():
            try:
                if address == "local":  # a Ray instance of its own on this machine
                    self.ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                                  configure_logging=False)
                else:
                    self.ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {e}") from e
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        self.description = f"Ray at {address}, {cpus} CPU(s)"

    def close(self) -> None:
        """A Ray started here stops (its workers would share the cores a benchmark times on)."""
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def run(self, fn: Callable[[dict], dict], tasks: list[dict]) -> Iterator[tuple[dict, dict]]:
        remote = self.ray.remote(num_cpus=1)(fn)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), outcome(lambda: self.ray.get(ref))


def outcome(result) -> dict:
    """A task's result, or, when its worker died (killed, out of memory) or raised, an error record:
    one lost candidate never loses the rest of the search."""
    try:
        return result()
    except Exception as e:  # noqa: BLE001 - BrokenProcessPool, Ray's task errors, a bug in the task
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"worker failed: {e.__class__.__name__}{': ' + reason if reason else ''}", "built": []}


def make_pool(executor: str, workers: int = 0, ray_address: str = "local"):
    return RayPool(ray_address, workers) if executor == "ray" else LocalPool(workers)

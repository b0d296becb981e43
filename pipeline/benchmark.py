"""One benchmark service: every timing edgeport makes (an artifact on any device, PyTorch eager,
each compression step) goes through here, with one thread rule and one device connection per
device. The harness itself is the self-contained runner (devices/runner.py) in a fresh process.

The thread rule: a `[[bench.devices]]` entry's `threads` > the command line's `--threads` >
`[bench] threads` > the device profile's `threads`; 0 means every core of that device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeport import targets
from edgeport.devices.profiles import DeviceProfile, get_profile
from edgeport.devices.connect import open_device
from edgeport.devices.transport import Device
from edgeport.types import Artifact, BenchResult


def thread_count(entry: int | None = None, cli: int | None = None, bench: int | None = None, profile: int = 0) -> int:
    """The first of these that is set: device entry, command line, [bench], profile (0 = every core)."""
    return next(value for value in (entry, cli, bench, profile) if value is not None)


@dataclass(frozen=True)
class BenchSettings:
    iterations: int = 100  # at least this many timed runs ...
    min_seconds: float = 2.0  # ... and at least this long, after warm-up
    warmup: int = 10
    processes: int = 1  # fresh processes per measurement; the one with the median p50 is reported

    def __post_init__(self) -> None:
        if self.processes < 1:
            from edgeport.errors import ConfigError

            raise ConfigError(f"processes = {self.processes}: at least one process must time an artifact")

    def request(self, threads: int) -> dict:
        return {"iterations": self.iterations, "min_seconds": self.min_seconds, "warmup": self.warmup,
                "threads": threads, "processes": self.processes}


@dataclass
class BenchService:
    settings: BenchSettings = field(default_factory=BenchSettings)
    threads: int | None = None  # --threads, or [bench] threads (the command line already won over the file)
    devices_dir: Path | None = None
    _open: dict[str, Device] = field(default_factory=dict)
    _profiles: dict[str, DeviceProfile] = field(default_factory=dict)

    @classmethod
    def of(cls, config) -> BenchService:
        """The service a run config describes ([bench], [devices] dir)."""
        b = config.bench
        folder = config.resolve_path(config.devices.dir) if config.devices.dir else None
        return cls(BenchSettings(b.iterations, b.min_seconds, b.warmup, b.processes), b.threads, folder)

    def profile(self, name: str) -> DeviceProfile:
        """A device profile, read once per service (profiles do not change during a run)."""
        if name not in self._profiles:
            self._profiles[name] = get_profile(name, self.devices_dir)
        return self._profiles[name]

    def device(self, profile: DeviceProfile) -> Device:
        """One open connection per device for the service's life (an SSH master is reused)."""
        if profile.name not in self._open:
            self._open[profile.name] = open_device(profile)
        return self._open[profile.name]

    def close(self) -> None:
        for device in self._open.values():
            device.close()
        self._open.clear()

    def __enter__(self) -> BenchService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def threads_on(self, profile: DeviceProfile, entry_threads: int | None = None) -> int:
        return thread_count(entry_threads, self.threads, None, profile.threads)

    def request(self, profile: DeviceProfile, entry_threads: int | None = None) -> dict:
        """The settings one measurement on `profile` runs with: what its cache key holds."""
        return self.settings.request(self.threads_on(profile, entry_threads))

    def measure(self, artifact: Artifact, profile: DeviceProfile, options: dict, samples: dict[str, np.ndarray],
                verify_inputs: dict[str, np.ndarray] | None = None, entry_threads: int | None = None) -> dict:
        """One artifact on one device with one runtime variant: the BenchResult fields (and the
        device's outputs for `verify_inputs` as `verify_outputs`)."""
        from edgeport.devices.adb import uses_phone_tool
        from edgeport.devices.remote import measure

        target = targets.get(artifact.target)
        request = {**self.request(profile, entry_threads), "options": options}
        device, runtime = self.device(profile), target.device_runtime()
        # raw input files for a phone's native benchmark tool: only a phone without Python uses them
        phone = target.phone_inputs(artifact, samples) if uses_phone_tool(device, runtime) else None
        return self.median_process(lambda first: measure(device, artifact, runtime, request, samples,
                                                         verify_inputs if first else None, phone))

    def torch_eager(self, model: dict, base_dir: Path, samples: Path, count: int) -> dict:
        """PyTorch eager on this machine, in a fresh process, the same harness and thread rule."""
        from edgeport.devices import local

        request = {"model": model, "base_dir": str(base_dir), "samples": str(samples), "count": count,
                   **self.request(self.profile("local"))}
        return self.median_process(
            lambda first: local.run_json([sys.executable, "-m", "edgeport.pipeline.torch_bench"], request, 600))

    def median_process(self, run_once) -> dict:
        """`processes` measurements, each in a fresh process, and the one whose p50 is the median,
        with every p50 listed: a virtual machine can place one process in a slow or a fast mode
        for its whole life (an OpenVINO model here: 4.5 or 7.0 ms), so one process is not a figure
        a re-measurement reproduces. `run_once(first)` gets True the first time only (a device's
        outputs are checked once)."""
        runs = [run_once(k == 0) for k in range(self.settings.processes)]
        outputs = runs[0].pop("verify_outputs", None)
        chosen = median_run(runs)
        if outputs is not None:
            chosen["verify_outputs"] = outputs
        return chosen

    def one_process(self) -> BenchService:
        """This service timing in one process per measurement (its devices stay open and shared)."""
        return replace(self, settings=replace(self.settings, processes=1))


def median_result(results: list[BenchResult]) -> BenchResult:
    """median_run over BenchResults (the interleaved rounds of `tune`)."""
    return BenchResult.model_validate(median_run([r.model_dump() for r in results]))


def median_run(runs: list[dict]) -> dict:
    """The run (BenchResult fields) whose p50 is the median, listing every run's p50."""
    ranked = sorted(runs, key=lambda r: r["p50_ms"] if r["p50_ms"] is not None else r["mean_ms"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["p50_per_process_ms"] = [r["p50_ms"] for r in runs]
    return chosen


def bench_artifacts(paths: list[Path], device_names: list[str], service: BenchService, hint: str | None,
                    data: Path | None = None):
    """`edgeport bench`: every artifact on every device, yielding (artifact, BenchResult) as each
    is measured. Inputs are the held-out samples of the run each artifact belongs to (or `data`)."""
    artifacts = [Artifact.load(p) for p in paths]  # hashes checked before any device work
    samples = {a.root: run_samples_for(a, data) for a in artifacts}
    profiles = [service.profile(name) for name in device_names]
    for profile in profiles:
        for artifact in artifacts:
            target = targets.get(artifact.target)
            given = {"hint": [hint]} if hint and "hint" in target.Options.model_fields else {}
            options = target.runtime_variants(target.Options.model_validate(given))[0]
            yield artifact, BenchResult.model_validate(service.measure(artifact, profile, options, samples[artifact.root]))


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

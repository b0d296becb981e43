"""edgeport: take a trained PyTorch model to the edge.

The Python API; the command line is a thin skin over these functions, each returning records:

    import edgeport

    config = edgeport.load_config("examples/digits.toml")
    result = edgeport.run(config)                  # the whole pipeline; RunResult
    for r in result.artifacts:
        print(r.label, r.verify.cosine, r.bench[0].p50_ms)
    result.raise_for_failures()                    # VerificationError (exit code 3) naming each failure

    artifacts = edgeport.export(config)                                 # list[Artifact]
    reports = edgeport.verify(config, artifacts)                       # list[VerifyReport]
    timings = edgeport.bench(artifacts, devices=["local"])            # list[(Artifact, BenchResult)]
    search = edgeport.tune(config)                                     # SearchResult (needs [search])
    bundles = edgeport.package(result.run_dir)                         # list[Path]
    manifest, warnings = edgeport.verify_bundle(bundles[0])

Errors are typed (edgeport.errors): an EdgeportError's `exit_code` says what the CLI exits with.
"""

from __future__ import annotations

__version__ = "0.2.0"

from pathlib import Path

from edgeport.errors import EdgeportError


def load_config(path, overrides=None):
    """Read and validate a run config (TOML); `overrides` are dotted keys that win over the file."""
    from edgeport.pipeline.config import load_config as _load

    return _load(path, overrides)


def run(config, on_event=None, rebuild: bool = False, until: str = "report"):
    """The whole pipeline up to `until`; finished stages are reused. Returns a RunResult (call
    its raise_for_failures() to turn failed artifacts into a VerificationError)."""
    from edgeport.pipeline.run import run as _run

    return _run(config, on_event, rebuild=rebuild, until=until)


def export(config, targets: list[str] | None = None, precisions: list[str] | None = None, on_event=None):
    """Build (or take from the cache) the configured artifacts; returns them."""
    from edgeport.pipeline.run import export as _export

    return _export(config, targets, precisions, on_event)


def verify(config, artifacts, on_event=None):
    """Compare artifacts (folders or Artifact records; hashes checked) with the config's PyTorch
    model on its held-out data; returns one VerifyReport each."""
    from edgeport.pipeline.run import verify_artifacts
    from edgeport.types import Artifact

    loaded = [a if isinstance(a, Artifact) else Artifact.load(a) for a in artifacts]
    return verify_artifacts(config, loaded, on_event)


def bench(artifacts, devices=("local",), *, threads: int | None = None, iterations: int = 100,
          min_seconds: float = 2.0, warmup: int = 10, processes: int = 1, hint: str | None = None, devices_dir=None,
          data=None):
    """Time artifacts (folders or records) on devices, each in `processes` fresh processes (the
    median one is reported), fed the held-out samples of their run (or `data`, an .npz). Yields
    (Artifact, BenchResult) as each is measured."""
    from edgeport.pipeline.benchmark import BenchService, BenchSettings, bench_artifacts

    from edgeport.types import Artifact

    paths = [a.root if isinstance(a, Artifact) else Path(a) for a in artifacts]
    service = BenchService(BenchSettings(iterations, min_seconds, warmup, processes), threads,
                           Path(devices_dir) if devices_dir else None)
    with service:
        yield from bench_artifacts(paths, list(devices), service, hint, Path(data) if data else None)


def tune(config, on_event=None, rebuild: bool = False):
    """Search the config's [search] space for the fastest (or smallest) artifact within its budget."""
    from edgeport.pipeline.search import tune as _tune

    return _tune(config, on_event, rebuild=rebuild)


def compress(config, on_event=None):
    """The [[compress]] steps alone: the compressed model, its .pt2 program and one row per step."""
    from edgeport.pipeline.run import compress_only

    return compress_only(config, on_event)


def package(run_dir, targets: list[str] | None = None, precisions: list[str] | None = None, out=None):
    """Bundles of a finished run's verified artifacts (folders, or one .tar.gz/.zip at `out`)."""
    from edgeport.pipeline.package import package as _package

    return _package(Path(run_dir), targets, precisions, Path(out) if out else None)


def verify_bundle(bundle, strict: bool | None = None):
    """Check a bundle (folder or archive): manifest, hashes, the model file's own IO and its
    example's self-test. Returns (manifest, warnings); raises BundleError on the first problem."""
    from edgeport.pipeline.bundle_io import verify_bundle as _verify

    return _verify(Path(bundle), strict)


def report(run_dir):
    """A finished run's report.json as a Report record."""
    from edgeport.pipeline.report_model import Report

    return Report.load(Path(run_dir))


def check_device(name: str, devices_dir=None) -> dict:
    """Connect to a device profile and report what it has of every target's runtime."""
    from edgeport import targets
    from edgeport.devices.check import check_device as _check

    runtimes = [targets.target_class(n)().device_runtime() for n in targets.available()]
    return _check(name, runtimes, devices_dir)


def environment() -> dict:
    """Versions of Python, PyTorch and every tool, and this machine's CPU and SIMD flags."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from edgeport.devices.runner import device_facts
    from edgeport.pipeline.stages import tool_names

    packages = {}
    for name in tool_names():
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    facts = device_facts()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split("flags", 1)[-1].split("\n", 1)[0] if cpuinfo.exists() else ""
    facts["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "asimd")
                    if f" {f}" in flags]
    return {"python": sys.version.split()[0], "packages": packages, "machine": facts}


__all__ = ["EdgeportError", "load_config", "run", "export", "verify", "bench", "tune", "compress", "package",
           "verify_bundle", "report", "check_device", "environment", "__version__"]

"""edgeport: take a trained PyTorch model to the edge.

Python API (the CLI is a thin layer over these):

    from edgeport import load_config, run
    result = run(load_config("examples/digits.toml"))
    for r in result.artifacts:
        print(r.artifact.label, r.verify.cosine, r.bench[0].p50_ms)
"""

__version__ = "0.1.0"

from edgeport.errors import EdgeportError  # noqa: E402


def load_config(path, overrides=None):
    """Read and validate a run config (TOML)."""
    from edgeport.pipeline.config import load_config as _load

    return _load(path, overrides)


def run(config, on_event=None, rebuild=False, until="report"):
    """Execute the pipeline; finished stages are reused."""
    from edgeport.pipeline.run import run as _run

    return _run(config, on_event, rebuild=rebuild, until=until)


__all__ = ["EdgeportError", "load_config", "run", "__version__"]

"""Small helpers every report part shares: number formatting and PNG figures (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path


def fmt(value, spec: str, none: str = "—") -> str:
    return none if value is None else format(value, spec)


def new_figure(height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.5, height), dpi=110)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def share(value: float | None, interval: list[float] | None = None) -> str:
    """A share with its 95% interval: 0.9900 [0.983, 0.994]."""
    if value is None:
        return "—"
    return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

"""Real photos for calibration and evaluation, offline: random crops of scikit-learn's two sample
photos (china.jpg, flower.jpg), written as PNG files for `source = "images"`.

The calibration and evaluation crops are separate random draws (different positions, sizes and
flips); the data stage still refuses any sample found in both."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeport.errors import DataError, require

DEFAULT_FOLDER = Path("~/.cache/edgeport/sample-crops")


def write_crops(out: Path, calibration: int = 128, evaluation: int = 300, size: int = 224, seed: int = 0) -> dict:
    """OUT/calibration/*.png and OUT/evaluation/*.png; an existing complete set is kept."""
    require("PIL", "examples")
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = out.expanduser()
    stamp = out / ".complete"
    wanted = f"{calibration} {evaluation} {size} {seed}"
    if stamp.is_file() and stamp.read_text() == wanted:
        return {"folder": out, "written": 0}
    photos = load_sample_images().images  # two real 427x640 RGB photos
    rng = np.random.default_rng(seed)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write crops to {out}: {e.strerror}; give a folder you can write") from e
    for split, count in (("calibration", calibration), ("evaluation", evaluation)):
        folder = partial / split
        folder.mkdir(parents=True)
        for i in range(count):
            photo = photos[i % len(photos)]
            height, width = photo.shape[:2]
            side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{split[:5]}-{i:04d}.png")
    (partial / ".complete").write_text(wanted)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, out)
    if not any(out.iterdir()):
        raise DataError(f"{out}: no crops written")
    return {"folder": out, "written": calibration + evaluation}

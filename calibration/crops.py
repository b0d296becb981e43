"""Real photos for calibration and evaluation, offline: random crops of the photos scikit-image
and scikit-learn ship, written as PNG folders for `source = "images"`.

Scenes never cross: evaluation crops come from four natural colour photos (astronaut, the cat
chelsea, coffee, rocket) that calibration, QAT training and every post-training method never see
in any form; calibration crops come from every other photo (china, flower, the stereo motorcycle,
scientific and synthetic colour images, grey photos and textures as RGB; natural colour photos
drawn three times as often). Agreement measured on the evaluation crops is agreement on unseen
scenes, not on other views of the photos the int8 ranges were fitted to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgeport.errors import DataError, require

DEFAULT_FOLDER = Path("~/.cache/edgeport/scene-crops")
EVALUATION_SCENES = ("astronaut", "chelsea", "coffee", "rocket")
# (photo, draw weight): natural colour photos 3, the rest 1. skimage's `cat` is chelsea: left out.
CALIBRATION_SCENES = (
    ("china", 3), ("flower", 3), ("motorcycle_left", 3), ("motorcycle_right", 3),
    ("hubble_deep_field", 1), ("retina", 1), ("immunohistochemistry", 1), ("colorwheel", 1), ("logo", 1),
    ("camera", 1), ("coins", 1), ("moon", 1), ("clock", 1), ("page", 1), ("text", 1),
    ("brick", 1), ("grass", 1), ("gravel", 1), ("cell", 1),
)


def load_photo(name: str) -> np.ndarray:
    """One photo as H x W x 3 uint8 RGB (grey and RGBA ones converted)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        data = require("skimage.data", "examples")
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            image = left if name.endswith("left") else right
        else:
            image = getattr(data, name)()
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:  # logo: RGBA on white
        alpha = image[:, :, 3:4].astype(np.float32) / 255
        image = (image[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def random_crops(photo: np.ndarray, count: int, size: int, rng: np.random.Generator, min_frac: float) -> list:
    """`count` random square crops (side a share of the short edge), resized, flipped half the time."""
    from PIL import Image

    h, w = photo.shape[:2]
    short = min(h, w)
    crops = []
    for _ in range(count):
        side = int(rng.integers(int(min_frac * short), short + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


def write_crops(out: Path, calibration: int = 512, per_scene: int = 300, size: int = 224, seed: int = 0) -> dict:
    """OUT/calibration/*.png (crops of the calibration scenes) and OUT/evaluation/*.png
    (`per_scene` crops of each evaluation scene); an existing complete set is kept."""
    require("PIL", "examples")
    out = out.expanduser()
    stamp = out / ".complete"
    wanted = f"scenes v1 {calibration} {per_scene} {size} {seed}"
    if stamp.is_file() and stamp.read_text() == wanted:
        return {"folder": out, "written": 0}
    rng = np.random.default_rng(seed)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for name in EVALUATION_SCENES:
        folder = partial / "evaluation"
        folder.mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(random_crops(load_photo(name), per_scene, size, rng, 0.35)):
            crop.save(folder / f"{name}-{i:04d}.png")
    names = [n for n, _ in CALIBRATION_SCENES]
    weights = np.array([w for _, w in CALIBRATION_SCENES], float)
    picks = np.bincount(rng.choice(len(names), size=calibration, p=weights / weights.sum()), minlength=len(names))
    (partial / "calibration").mkdir(parents=True)
    for name, count in zip(names, picks):
        for i, crop in enumerate(random_crops(load_photo(name), int(count), size, rng, 0.25)):
            crop.save(partial / "calibration" / f"{name}-{i:04d}.png")
    (partial / ".complete").write_text(wanted)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, out)
    if not any((out / "evaluation").iterdir()):
        raise DataError(f"{out}: no crops written")
    return {"folder": out, "written": calibration + per_scene * len(EVALUATION_SCENES)}

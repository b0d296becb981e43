"""A folder of images (optionally one sub-folder per class) turned into model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeport.errors import DataError

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Image paths in a stable order; labels when every image sits in a class sub-folder."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images (.jpg, .png, .bmp, .webp) found")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    if classes and all(p.parent != folder for p in files):
        index = {name: i for i, name in enumerate(classes)}
        return files, [index[p.parent.name] for p in files], classes
    return files, None, None


def preprocess(path: Path, spec: dict) -> np.ndarray:
    """One image -> float32 array in the model's layout (no batch axis), as the spec says."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as raw:
            image = raw.convert("L" if spec.get("channel_order") == "gray" else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read this image ({e.__class__.__name__})") from None
    if spec.get("resize"):
        height, width = spec["resize"]
        image = image.resize((width, height), Image.BILINEAR)
    if spec.get("center_crop"):
        height, width = spec["center_crop"]
        if image.height < height or image.width < width:
            raise DataError(f"{path}: {image.width}x{image.height} is smaller than center_crop {width}x{height}")
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, dtype=np.float32) * spec.get("scale", 1.0)
    x = x[:, :, None] if x.ndim == 2 else x
    if spec.get("channel_order") == "BGR":
        x = x[:, :, ::-1]
    if spec.get("mean") is not None:
        x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec.get("std") or [1.0], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if spec.get("layout", "NCHW") == "NCHW" else x)


def read_folder(folder: Path, spec: dict) -> tuple[np.ndarray, np.ndarray | None]:
    files, labels, _ = list_images(folder)
    arrays = [preprocess(p, spec) for p in files]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"{folder}: images come in {len(shapes)} sizes ({', '.join(map(str, shapes[:3]))}…); "
                        "set resize (and center_crop) in the preprocessing")
    return np.stack(arrays), (np.asarray(labels, np.int64) if labels is not None else None)

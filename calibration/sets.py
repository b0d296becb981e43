"""Build, check and cache the calibration set and the disjoint evaluation set."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from edgeport.errors import DataError
from edgeport.types import CalibrationSet, TensorSpec

log = logging.getLogger("edgeport")


def digest(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(str(inputs[name].shape).encode() + str(inputs[name].dtype).encode())
        h.update(np.ascontiguousarray(inputs[name]).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def make_set(inputs: dict[str, np.ndarray], labels: np.ndarray | None, source: str, seed: int) -> CalibrationSet:
    return CalibrationSet(inputs=inputs, labels=labels, source=source, seed=seed, digest=digest(inputs, labels))


def check_arrays(inputs: dict[str, np.ndarray], specs: list[TensorSpec], where: str) -> None:
    """Names, per-sample shapes and finiteness must match the model's input specs."""
    for spec in specs:
        if spec.name not in inputs:
            raise DataError(f"{where}: no array for model input {spec.name!r} (found {', '.join(inputs) or 'none'})")
        array = inputs[spec.name]
        want = tuple(spec.concrete_shape()[1:])
        if tuple(array.shape[1:]) != want:
            raise DataError(f"{where}: input {spec.name!r} samples have shape {list(array.shape[1:])}, the model takes {list(want)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise DataError(f"{where}: input {spec.name!r} holds {bad} NaN or Inf value(s); calibration needs finite data")


def read_npy(path: Path, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise DataError(f"{path}: a .npy file feeds one input; the model has {len(specs)}: use .npz keyed by input name")
        return {specs[0].name: loaded}, None
    arrays = {k: loaded[k] for k in loaded.files}
    labels = arrays.pop("labels", None)
    return arrays, labels


def build_sets(
    source: str, specs: list[TensorSpec], calibration_samples: int, eval_samples: int, seed: int,
    path: Path | None = None,
) -> tuple[CalibrationSet, CalibrationSet]:
    """(calibration, evaluation): disjoint, chosen with `seed`, checked against the input specs."""
    rng = np.random.default_rng(seed)
    if source == "digits":
        from edgeport.calibration.digits import digits_split

        x_train, _, x_test, y_test = digits_split()
        check_arrays({specs[0].name: x_train}, specs[:1], "digits data")
        if calibration_samples > len(x_train):
            raise DataError(f"digits data: asked for {calibration_samples} calibration samples, the train split has {len(x_train)}")
        pick = np.sort(rng.choice(len(x_train), calibration_samples, replace=False))
        calib = {specs[0].name: x_train[pick]}
        n_eval = eval_samples or len(x_test)
        evaluation, eval_labels = {specs[0].name: x_test[:n_eval]}, y_test[:n_eval]
        name = "digits"
    elif source == "npy":
        if path is None:
            raise DataError("data.source = 'npy' needs data.path (a .npy or .npz file)")
        arrays, labels = read_npy(path, specs)
        check_arrays(arrays, specs, str(path))
        total = len(next(iter(arrays.values())))
        n_eval = eval_samples or max(total - calibration_samples, 0)
        if calibration_samples + n_eval > total or n_eval == 0:
            raise DataError(
                f"{path}: {total} samples found; asked for {calibration_samples} calibration + "
                f"{n_eval or 'at least 1'} evaluation samples (they must not overlap)"
            )
        order = rng.permutation(total)
        cal_idx, eval_idx = np.sort(order[:calibration_samples]), np.sort(order[calibration_samples : calibration_samples + n_eval])
        calib = {k: v[cal_idx] for k, v in arrays.items()}
        evaluation = {k: v[eval_idx] for k, v in arrays.items()}
        eval_labels = labels[eval_idx] if labels is not None else None
        name = f"npy:{path.name}"
    elif source == "random":
        log.warning("data.source = 'random': int8 scales calibrated on noise are meaningless; use real data")
        calib = {s.name: rng.standard_normal((calibration_samples, *s.concrete_shape()[1:])).astype(s.dtype) for s in specs}
        n_eval = eval_samples or 64
        evaluation = {s.name: rng.standard_normal((n_eval, *s.concrete_shape()[1:])).astype(s.dtype) for s in specs}
        eval_labels = None
        name = "random"
    else:
        raise DataError(f"unknown data source {source!r}; choose digits, npy or random")
    return make_set(calib, None, name, seed), make_set(evaluation, eval_labels, name, seed)


def save_set(dataset: CalibrationSet, path: Path) -> None:
    arrays = {f"input:{k}": v for k, v in dataset.inputs.items()}
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays, _source=np.array(dataset.source), _seed=np.array(dataset.seed))
    os.replace(tmp, path)


def load_set(path: Path) -> CalibrationSet:
    with np.load(path, allow_pickle=False) as f:
        inputs = {k.removeprefix("input:"): f[k] for k in f.files if k.startswith("input:")}
        labels = f["labels"] if "labels" in f.files else None
        return make_set(inputs, labels, str(f["_source"]), int(f["_seed"]))

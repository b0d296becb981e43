"""Build, check and cache the calibration set and the disjoint evaluation set."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from edgeport.errors import DataError, first_line
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
        if array.dtype.kind not in "biuf":
            raise DataError(f"{where}: input {spec.name!r} is stored as {array.dtype}; give numbers ({spec.dtype})")
        if array.ndim != len(spec.shape) or tuple(array.shape[1:]) != want:
            raise DataError(f"{where}: input {spec.name!r} samples have shape {list(array.shape[1:])}, the model takes {list(want)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise DataError(f"{where}: input {spec.name!r} holds {bad} NaN or Inf value(s); calibration needs finite data")
    counts = {name: len(inputs[name]) for name in (s.name for s in specs)}
    if len(set(counts.values())) > 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples "
                        f"({', '.join(f'{k} {v}' for k, v in counts.items())}); give each the same")
    if not any(counts.values()):
        raise DataError(f"{where}: no samples (the arrays are empty)")


def check_labels(labels, total: int, where: str) -> np.ndarray | None:
    """One class index (an integer >= 0) per sample; anything else would give a silent, wrong accuracy."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype.kind in "USO":
        shown = ", ".join(repr(str(v)) for v in labels.ravel()[:2])
        raise DataError(f"{where}: the labels are strings ({shown}, …); store class indices instead "
                        "(integers 0..N-1, in the order of the model's outputs and of model.labels)")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {list(labels.shape)}; give one class index per sample, shape [{total}]")
    if len(labels) != total:
        raise DataError(f"{where}: {len(labels)} labels for {total} samples; give one class index per sample")
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: the labels are {labels.dtype} values that are not whole numbers; "
                        "store class indices (integers 0..N-1)")
    if total and labels.min() < 0:
        raise DataError(f"{where}: the labels hold {int(labels.min())}; class indices start at 0")
    return labels


def read_npy(path: Path, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    arrays = read_arrays(path)
    if not isinstance(arrays, dict):
        if len(specs) != 1:
            raise DataError(f"{path}: a .npy file feeds one input; the model has {len(specs)}: use .npz keyed by input name")
        return {specs[0].name: arrays}, None
    labels = arrays.pop("labels", None)
    return arrays, labels


def read_arrays(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy file's array or a .npz file's arrays, read in full (a truncated file fails here)."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            return {k: loaded[k] for k in loaded.files} if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # what numpy and zipfile raise on damage
        raise DataError(f"{path}: not a readable .npy/.npz file ({first_line(e)}); save it with numpy.save or "
                        "numpy.savez (no pickled objects)") from e


def read_callable(target: str, specs: list[TensorSpec], wanted: int, base_dir: Path):
    """`pkg.module:function` (or file.py:function) yielding one dict of input arrays per sample."""
    import importlib
    import importlib.util
    import itertools

    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise DataError(f"data.function {target!r} is malformed; expected pkg.module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location("edgeport_user_data", base_dir / module_name)
            if spec is None or not (base_dir / module_name).is_file():
                raise DataError(f"data.function file not found: {base_dir / module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        function = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise DataError(f"data.function {target!r}: {e}") from e
    except Exception as e:  # the user's module raised while it was imported: theirs to fix, kept as the cause
        raise DataError(f"data.function {target!r}: importing {module_name} raised {e.__class__.__name__}: "
                        f"{first_line(e)}") from e
    try:
        samples = list(itertools.islice(function(), wanted))
    except Exception as e:  # the user's generator raised: theirs to fix, kept as the cause
        raise DataError(f"data.function {target!r} raised {e.__class__.__name__}: {first_line(e)}") from e
    if not samples or not all(isinstance(s, dict) for s in samples):
        raise DataError(f"data.function {target!r} must yield dicts of input name -> array")
    arrays = {}
    for s in specs:
        if not all(s.name in x for x in samples):
            raise DataError(f"data.function {target!r}: its dicts have no {s.name!r} (found {', '.join(samples[0])})")
        rank = len(s.shape)
        try:
            arrays[s.name] = np.concatenate([np.asarray(x[s.name])[None] if np.ndim(x[s.name]) == rank - 1
                                             else np.asarray(x[s.name]) for x in samples]).astype(s.dtype)
        except (ValueError, TypeError) as e:
            raise DataError(f"data.function {target!r}: its {s.name!r} arrays do not stack into {s.dtype} samples "
                            f"of one shape ({first_line(e)})") from e
    if "labels" in samples[0] and not all("labels" in x for x in samples):
        raise DataError(f"data.function {target!r}: some of its dicts have labels and some do not")
    labels = np.asarray([x["labels"] for x in samples]).reshape(-1) if "labels" in samples[0] else None
    return arrays, labels


def sample_hashes(arrays: dict[str, np.ndarray]) -> list[str]:
    names = sorted(arrays)
    return [hashlib.sha256(b"".join(np.ascontiguousarray(arrays[n][i]).tobytes() for n in names)).hexdigest()
            for i in range(len(arrays[names[0]]))]


def check_disjoint(calib: dict[str, np.ndarray], evaluation: dict[str, np.ndarray]) -> None:
    overlap = set(sample_hashes(calib)) & set(sample_hashes(evaluation))
    if overlap:
        raise DataError(f"{len(overlap)} sample(s) are in both the calibration and the evaluation set; "
                        "evaluation must use data the calibration never saw")


def read_pool(source: str, path: Path | None, specs: list[TensorSpec], preprocessing: dict | None,
              function: str | None, wanted: int, base_dir: Path):
    """(arrays by input name, labels or None) from one of the pooled sources."""
    if source == "npy":
        if path is None:
            raise DataError("data.source = 'npy' needs data.path (a .npy or .npz file)")
        return read_npy(path, specs)
    if source == "images":
        from edgeport.calibration.images import read_folder

        if path is None:
            raise DataError("data.source = 'images' needs data.path (a folder of images)")
        images, labels = read_folder(path, preprocessing or {})
        return {specs[0].name: images.astype(specs[0].dtype)}, labels
    if source == "callable":
        if not function:
            raise DataError("data.source = 'callable' needs data.function (pkg.module:function)")
        return read_callable(function, specs, wanted, base_dir)
    raise DataError(f"unknown data source {source!r}; choose digits, npy, images, callable or random")


def build_sets(
    source: str, specs: list[TensorSpec], calibration_samples: int, eval_samples: int, seed: int,
    path: Path | None = None, preprocessing: dict | None = None, function: str | None = None,
    eval_path: Path | None = None, base_dir: Path = Path("."), eval_function: str | None = None,
) -> tuple[CalibrationSet, CalibrationSet]:
    """(calibration, evaluation): disjoint, chosen with `seed`, checked against the input specs.
    With `eval_path` (or `eval_function` for callables), evaluation comes from that second source."""
    rng = np.random.default_rng(seed)
    if source in ("npy", "images", "callable"):
        arrays, labels = read_pool(source, path, specs, preprocessing, function,
                                   calibration_samples + (eval_samples or 100_000), base_dir)
        where = str(path or function)
        check_arrays(arrays, specs, where)
        total = len(next(iter(arrays.values())))
        labels = check_labels(labels, total, where)
        if eval_path is not None or eval_function:
            if calibration_samples > total:
                raise DataError(f"{where}: {total} samples found; asked for {calibration_samples} calibration samples")
            cal_idx = np.sort(rng.permutation(total)[:calibration_samples])
            calib = {k: v[cal_idx] for k, v in arrays.items()}
            ev_arrays, ev_labels = read_pool(source, eval_path, specs, preprocessing, eval_function or function, 100_000,
                                             base_dir)
            check_arrays(ev_arrays, specs, str(eval_path or eval_function))
            ev_total = len(next(iter(ev_arrays.values())))
            ev_labels = check_labels(ev_labels, ev_total, str(eval_path or eval_function))
            n_eval = min(eval_samples or ev_total, ev_total)
            evaluation = {k: v[:n_eval] for k, v in ev_arrays.items()}
            eval_labels = ev_labels[:n_eval] if ev_labels is not None else None
            check_disjoint(calib, evaluation)
            return (make_set(calib, labels[cal_idx] if labels is not None else None, f"{source}:{where}", seed),
                    make_set(evaluation, eval_labels, f"{source}:{eval_path or eval_function}", seed))
        n_eval = eval_samples or max(total - calibration_samples, 0)
        if calibration_samples + n_eval > total or n_eval == 0:
            raise DataError(
                f"{where}: {total} samples found; asked for {calibration_samples} calibration + "
                f"{n_eval or 'at least 1'} evaluation samples (they must not overlap)"
            )
        order = rng.permutation(total)
        cal_idx, eval_idx = np.sort(order[:calibration_samples]), np.sort(order[calibration_samples : calibration_samples + n_eval])
        calib = {k: v[cal_idx] for k, v in arrays.items()}
        evaluation = {k: v[eval_idx] for k, v in arrays.items()}
        check_disjoint(calib, evaluation)
        return (make_set(calib, labels[cal_idx] if labels is not None else None, f"{source}:{where}", seed),
                make_set(evaluation, labels[eval_idx] if labels is not None else None, f"{source}:{where}", seed))
    if source == "digits":
        from edgeport.calibration.digits import digits_split

        x_train, y_train, x_test, y_test = digits_split()
        check_arrays({specs[0].name: x_train}, specs[:1], "digits data")
        if calibration_samples > len(x_train):
            raise DataError(f"digits data: asked for {calibration_samples} calibration samples, the train split has {len(x_train)}")
        pick = np.sort(rng.choice(len(x_train), calibration_samples, replace=False))
        calib, calib_labels = {specs[0].name: x_train[pick]}, y_train[pick]
        n_eval = eval_samples or len(x_test)
        evaluation, eval_labels = {specs[0].name: x_test[:n_eval]}, y_test[:n_eval]
        name = "digits"
    elif source == "random":
        log.warning("data.source = 'random': int8 scales calibrated on noise are meaningless; use real data")
        calib = {s.name: rng.standard_normal((calibration_samples, *s.concrete_shape()[1:])).astype(s.dtype) for s in specs}
        n_eval = eval_samples or 64
        evaluation = {s.name: rng.standard_normal((n_eval, *s.concrete_shape()[1:])).astype(s.dtype) for s in specs}
        eval_labels = calib_labels = None
        name = "random"
    else:
        raise DataError(f"unknown data source {source!r}; choose digits, npy, images, callable or random")
    return make_set(calib, calib_labels, name, seed), make_set(evaluation, eval_labels, name, seed)


def save_set(dataset: CalibrationSet, path: Path) -> None:
    arrays = {f"input:{k}": v for k, v in dataset.inputs.items()}
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays, _source=np.array(dataset.source), _seed=np.array(dataset.seed))
    os.replace(tmp, path)


def load_set(path: Path) -> CalibrationSet:
    try:
        arrays = read_arrays(path)
        inputs = {k.removeprefix("input:"): v for k, v in arrays.items() if k.startswith("input:")}
        return make_set(inputs, arrays.get("labels"), str(arrays["_source"]), int(arrays["_seed"]))
    except (DataError, KeyError, AttributeError) as e:
        raise DataError(f"{path}: the cached data set is damaged ({first_line(e)}); run again with --rebuild") from e

"""What can be checked about a config before any work: the files and folders it names and the
device profiles it uses. `run --dry-run` and every run call it, so a missing labels file fails
in a second, not after minutes of export."""

from __future__ import annotations

import os
from pathlib import Path

from edgeport.errors import ConfigError, DataError
from edgeport.pipeline.compress.configs import Qat, Training
from edgeport.pipeline.config import RunConfig
from edgeport.pipeline.model_loading import source_file


def preflight(config: RunConfig) -> None:
    """Raise the first problem found; touches nothing (no model is loaded, no folder created)."""
    writable_folder(config.run_dir, "the run folder", "set runs_dir (or --runs-dir) to a folder you can write")
    model = config.model
    source_file(model.source, config.base_dir)
    for key in ("weights", "labels"):
        value = getattr(model, key)
        if value and not config.resolve_path(value).is_file():
            raise ConfigError(f"model.{key} file not found: {config.resolve_path(value)}")
    check_data(config)
    for i, step in enumerate(config.compress):
        training = step if isinstance(step, Training | Qat) else getattr(step, "fine_tune", None)
        if training and training.data == "npy" and training.path and not (config.base_dir / training.path).is_file():
            raise DataError(f"compress[{i}] ({step.method}): training data not found: {config.base_dir / training.path}")
    devices = [entry.name for entry in config.bench.devices] + ([config.search.device] if config.search else [])
    if config.devices.dir or devices:
        from edgeport.devices.profiles import get_profile

        folder = config.resolve_path(config.devices.dir) if config.devices.dir else None
        for name in dict.fromkeys(devices or ["local"]):
            get_profile(name, folder)  # an unknown device or a bad profile is one line now


def check_data(config: RunConfig) -> None:
    data = config.data
    wanted = {"npy": ("a .npy or .npz file", Path.is_file), "images": ("a folder of images", Path.is_dir)}.get(data.source)
    if wanted:
        what, exists = wanted
        if not data.path:
            raise DataError(f"data.source = {data.source!r} needs data.path ({what})")
        for key in ("path", "eval_path"):
            value = getattr(data, key)
            if value and not exists(config.resolve_path(value)):
                raise DataError(f"data.{key} not found: {config.resolve_path(value)} (data.source = {data.source!r} "
                                f"reads {what})")
    if data.source == "callable":
        if not data.function:
            raise DataError("data.source = 'callable' needs data.function (pkg.module:function or file.py:function)")
        module, _, attr = data.function.rpartition(":")
        if not module or not attr:
            raise DataError(f"data.function {data.function!r} is malformed; expected pkg.module:function or "
                            "file.py:function")
        if module.endswith(".py") and not (config.base_dir / module).is_file():
            raise DataError(f"data.function file not found: {config.base_dir / module}")


def writable_folder(folder: Path, what: str, remedy: str) -> None:
    """`folder` exists and is writable, or can be created: its nearest existing parent is a
    writable folder."""
    for parent in [folder, *folder.absolute().parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create {what} {folder}: {parent} is a file; {remedy}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"cannot create {what} {folder}: {parent} is not writable; {remedy}")
            return

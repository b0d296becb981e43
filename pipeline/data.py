"""The data stage: the calibration and the disjoint evaluation set every target shares, built
once from the config's source and cached by content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgeport.calibration import build_sets, load_set, save_set
from edgeport.pipeline.stages import code_hash
from edgeport.pipeline.workspace import Workspace
from edgeport.types import CalibrationSet, sha256_file


@dataclass(frozen=True)
class DataSets:
    calibration: CalibrationSet  # what int8 is calibrated (and QAT trained) on
    evaluation: CalibrationSet  # held out: what verification, benchmarks and reports use

    @property
    def evaluation_file(self) -> Path:
        """Where the evaluation set is saved (the benchmark runners read their samples there)."""
        return Path(self.evaluation.path)


def content_hash(path: Path | None) -> str | None:
    """A file's sha256, or for a folder the hash of every file's name and content (the cache key of data)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(p.relative_to(path).as_posix().encode() + bytes.fromhex(sha256_file(p)))
    return digest.hexdigest()


def load_data(ws: Workspace) -> DataSets:
    config = ws.config
    data = config.data
    path = config.resolve_path(data.path) if data.path else None
    eval_path = config.resolve_path(data.eval_path) if data.eval_path else None
    preprocessing = data.preprocessing or config.model.preprocessing
    key = {"data": data.model_dump(), "content": [content_hash(p) for p in (path, eval_path)],
           "preprocessing": preprocessing.model_dump() if preprocessing else None,
           "inputs": [s.model_dump() for s in config.model.inputs], "code": code_hash("edgeport.calibration.sets")}

    def build(folder: Path) -> None:
        calib, evaluation = build_sets(
            data.source, config.model.inputs, data.calibration_samples, data.eval_samples, data.seed, path,
            preprocessing=preprocessing.model_dump() if preprocessing else None, function=data.function,
            eval_path=eval_path, base_dir=config.base_dir, eval_function=data.eval_function,
        )
        save_set(calib, folder / "calibration.npz")
        save_set(evaluation, folder / "evaluation.npz")

    def load(folder: Path) -> DataSets:
        evaluation = load_set(folder / "evaluation.npz")
        evaluation.path = str(folder / "evaluation.npz")
        return DataSets(load_set(folder / "calibration.npz"), evaluation)

    return ws.stages.folder("calibrate", "calibration", key, build, load)

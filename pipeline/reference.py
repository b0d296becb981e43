"""What every artifact is compared with: the PyTorch model's outputs on the held-out set, which
outputs are class scores, and the original model's accuracy (the baseline row)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgeport.errors import ConfigError, DataError
from edgeport.metrics import accuracy
from edgeport.pipeline.config import RunConfig
from edgeport.pipeline.data import DataSets
from edgeport.pipeline.model_loading import LoadedModel
from edgeport.pipeline.stages import code_hash
from edgeport.pipeline.verify import reference_outputs
from edgeport.pipeline.workspace import Workspace
from edgeport.types import CalibrationSet


@dataclass(frozen=True)
class Reference:
    outputs: list[np.ndarray]  # the compared model's outputs on the evaluation set, in output order
    names: list[str]
    class_scores: list[str]  # the outputs whose argmax is the class
    accuracy: float | None  # the original model's held-out accuracy, on the first class-score output
    against: str = "compressed"  # which model artifacts are compared with: "compressed" or "original"


def judged_against(config: RunConfig) -> str:
    """Artifacts are compared with the model they export, except after steps that only prepare it
    for int8 (QAT, adaptive rounding, ...): that float model is not a product, the original is.
    A search recipe is always judged against the original (the budget is about it)."""
    if config.verify.against != "auto":
        return config.verify.against
    return "original" if any(s.int8_preparation for s in config.compress) else "compressed"


def labels_of(config: RunConfig) -> list[str] | None:
    """Class names from model.labels, one per line."""
    if not config.model.labels:
        return None
    path = config.resolve_path(config.model.labels)
    if not path.is_file():
        raise ConfigError(f"model.labels file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def class_scores(config: RunConfig, model: LoadedModel, data: DataSets) -> list[str]:
    """The outputs that hold class scores: those the config names, else the first output when it
    is [batch, classes] and there are labels (in the data, or a labels file) that fit it."""
    if config.model.class_scores is not None:
        return list(config.model.class_scores)
    first = model.outputs[0]
    if len(first.shape) != 2 or not isinstance(first.shape[1], int) or first.shape[1] < 2:
        return []
    classes, labels = first.shape[1], data.evaluation.labels
    if config.model.labels:
        return [first.name] if len(labels_of(config)) == classes else []
    # Labels in the data say so when they fit: ids below the width, covering most of it (an
    # embedding evaluated with digit labels is 64 wide for 10 classes: not class scores).
    fits = labels is not None and labels.max() < classes and len(np.unique(labels)) > classes / 2
    return [first.name] if fits else []


def model_outputs(model: LoadedModel, dataset: CalibrationSet, batch: int) -> list[np.ndarray]:
    """The PyTorch model's outputs on a data set; a model that fails on the data is a data problem."""
    try:
        return reference_outputs(model.module, dataset, model.inputs, batch)
    except Exception as e:  # noqa: BLE001 - torch raises IndexError, RuntimeError, ... for bad samples
        last = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        hint = " (token ids outside the vocabulary?)" if "index out of range" in last else ""
        raise DataError(f"{dataset.source}: the PyTorch model fails on these samples: {last}{hint}") from e


def compute_reference(ws: Workspace, original: LoadedModel, model: LoadedModel, data: DataSets) -> Reference:
    """The exported model's outputs on the evaluation set (and a few of them saved for bundles'
    self-tests), and the original model's accuracy (cached)."""
    evaluation = data.evaluation
    scores = class_scores(ws.config, original, data)
    against = judged_against(ws.config)
    if against == "original":
        model = original
    outputs_key = {"model": model.digest, "evaluation": evaluation.digest, "versions": ws.versions,
                   "code": code_hash("edgeport.pipeline.verify")}

    def save_outputs(folder):
        outputs = model_outputs(model, evaluation, ws.config.verify.batch)
        np.savez(folder / "outputs.npz", **{f"out{k}": o for k, o in enumerate(outputs)})
        save_samples(ws, model, evaluation, outputs)

    def load_outputs(folder) -> list[np.ndarray]:
        with np.load(folder / "outputs.npz") as f:
            return [f[f"out{k}"] for k in range(len(f.files))]

    # cached: every `tune` worker compares with the same outputs
    outputs = ws.stages.folder("verify", "reference", outputs_key, save_outputs, load_outputs)
    key = {"model": original.digest, "evaluation": evaluation.digest, "scores": scores,
           "code": code_hash("edgeport.pipeline.reference", "edgeport.metrics")}

    def original_accuracy() -> dict:
        if evaluation.labels is None or not scores:
            return {"accuracy": None}
        theirs = outputs if original is model else model_outputs(original, evaluation, ws.config.verify.batch)
        return {"accuracy": accuracy(theirs[[s.name for s in original.outputs].index(scores[0])], evaluation.labels)}

    baseline = ws.stages.record("verify", "verify/pytorch-fp32.json", key, original_accuracy)["accuracy"]
    return Reference(outputs, [s.name for s in model.outputs], scores, baseline, against)


def save_samples(ws: Workspace, model: LoadedModel, evaluation: CalibrationSet, outputs: list, count: int = 2) -> None:
    """A few held-out inputs with PyTorch's outputs for them: bundles ship these so that
    `example.py --self-test` (and `package verify`) run the app's own feeding path."""
    arrays = {name: array[:count] for name, array in evaluation.inputs.items()}
    arrays |= {f"expected:{spec.name}": out[:count] for spec, out in zip(model.outputs, outputs)}
    path = ws.run_dir / "verify" / "samples.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".samples.{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)

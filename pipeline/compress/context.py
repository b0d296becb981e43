"""What a compression step may use besides the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeport.types import CalibrationSet, TensorSpec


@dataclass
class CompressContext:
    inputs: list[TensorSpec]
    calibration: CalibrationSet  # unlabelled samples, e.g. for Taylor importance
    teacher: torch.nn.Module  # the original model
    base_dir: Path  # where relative paths in the config resolve from
    outputs: list[str] = field(default_factory=list)  # the model's output names, in order
    class_scores: list[str] = field(default_factory=list)  # the outputs that hold class scores
    out_dir: Path | None = None  # the step's folder: a step may write files beside the model there

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(s.concrete_shape(batch), dtype=getattr(torch, s.dtype)) for s in self.inputs)

    def calibration_batch(self, size: int = 64) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.ascontiguousarray(self.calibration.inputs[s.name][:size])) for s in self.inputs)

    def calibration_batches(self, size: int = 32):
        """Every calibration sample, as model arguments of up to `size` samples."""
        for feeds in self.calibration.batches(size):
            yield tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in self.inputs)


def output_layer(model: torch.nn.Module) -> list[str]:
    """The last Linear/Conv module: pruning it would change the model's outputs."""
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d)]
    return last[-1:]


def modules_named(model: torch.nn.Module, names: list[str], what: str) -> list[torch.nn.Module]:
    from edgeport.errors import ConfigError, did_you_mean

    table = dict(model.named_modules())
    found = []
    for name in names:
        if name not in table:
            raise ConfigError(f"{what}: the model has no module {name!r}{did_you_mean(name, table)}")
        found.append(table[name])
    return found

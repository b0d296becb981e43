"""The interface every target implements, and the model handed to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from edgeport.errors import ConfigError
from edgeport.types import Artifact, CalibrationSet, FileRecord, TensorSpec


@dataclass
class SourceModel:
    """The model as every target may start from it: the ONNX interchange file, or the torch module."""

    onnx_path: Path
    module: Any  # torch.nn.Module in eval mode
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Session(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Target(ABC):
    """One runtime. Capabilities are class data so listing targets needs no backend import."""

    name: ClassVar[str]
    extra: ClassVar[str]
    runtime: ClassVar[str]  # the module a device must have to run the artifact
    precisions: ClassVar[tuple[str, ...]]
    quant_schemes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def export(self, source: SourceModel, precision: str, out_dir: Path, options: dict,
               calibration: CalibrationSet | None = None) -> Artifact:
        """Write a float artifact (fp32, or fp16 where the runtime has it) into out_dir.
        `calibration` is there for converters that check their own work on real data."""

    @abstractmethod
    def quantize(
        self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, precision: str,
        out_dir: Path, options: dict,
    ) -> Artifact:
        """Write an integer artifact (`precision`) calibrated on `calibration` into out_dir."""

    @abstractmethod
    def load(self, artifact: Artifact, threads: int) -> Session:
        """A host-side session that computes what the file computes (used for verification)."""

    def runtime_requirements(self) -> list[str]:
        """pip requirement lines a device needs to run this target's artifacts."""
        return [self.runtime]

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(
                f"target {self.name} has no precision {precision!r}; it offers {', '.join(self.precisions)}"
            )

    def new_artifact(self, precision: str, fmt: str, files: list[str], source: SourceModel, **extra) -> Artifact:
        """An unsaved Artifact; the pipeline gives it its id and hashes its files."""
        return Artifact(
            id="",
            target=self.name,
            format=fmt,
            precision=precision,
            files=[FileRecord(path=f) for f in files],
            inputs=[s.model_copy() for s in source.inputs],
            outputs=[s.model_copy() for s in source.outputs],
            **extra,
        )

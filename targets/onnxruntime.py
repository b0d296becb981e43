"""ONNX Runtime: the interchange file as is (fp32), or QDQ static int8 calibrated on the shared set."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeport.errors import ConfigError, ExportError, require
from edgeport.targets.base import SourceModel, Target
from edgeport.types import Artifact, CalibrationSet

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class OnnxRuntimeTarget(Target):
    """ONNX Runtime, CPU execution provider."""

    name = "onnxruntime"
    extra = "onnxruntime"
    runtime = "onnxruntime"
    precisions = ("fp32", "int8")
    quant_schemes = CALIBRATION_METHODS

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: dict,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        if precision != "fp32":
            raise ConfigError(f"onnxruntime exports fp32; {precision} comes from quantize")
        shutil.copyfile(source.onnx_path, out_dir / "model.onnx")
        return self.new_artifact("fp32", "onnx", ["model.onnx"], source)

    def quantize(
        self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, precision: str,
        out_dir: Path, options: dict,
    ) -> Artifact:
        self.check_precision(precision)
        require("onnxruntime", "onnxruntime")
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
        )

        method = options.get("calibration_method", "minmax")
        if method not in CALIBRATION_METHODS:
            raise ConfigError(f"onnxruntime calibration_method {method!r} unknown; choose one of {', '.join(CALIBRATION_METHODS)}")
        per_channel = bool(options.get("per_channel", True))
        batch = 32 if all(s.dynamic_batch for s in source.inputs) else 1

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter(calibration.batches(batch))

            def get_next(self):
                return next(self.feeds, None)

        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(float_artifact.main_file), str(prepared))
                quantize_static(
                    str(prepared), str(out_dir / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    # U8 activations with S8 weights is ORT's fast path on x86 and ARM.
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    nodes_to_exclude=list(options.get("nodes_to_exclude", [])),
                    calibration_cache_path=None,
                )
            except (ValueError, RuntimeError) as e:
                raise ExportError(f"onnxruntime int8 quantization failed: {e}") from e
        scheme = {"format": "QDQ", "calibration_method": method, "per_channel": per_channel,
                  "activations": "uint8-asymmetric", "weights": "int8-symmetric", "samples": len(calibration)}
        return self.new_artifact("int8", "onnx", ["model.onnx"], source, options={"quantization": scheme})

    def load(self, artifact: Artifact, threads: int):
        ort = require("onnxruntime", "onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(artifact.main_file), so, providers=["CPUExecutionProvider"])

        class OrtSession:
            def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                return session.run(None, feeds)

        return OrtSession()

"""ONNX Runtime: the interchange file as is (fp32), or QDQ static int8 calibrated on the shared set."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeport.errors import ConfigError, ExportError, require
from edgeport.targets.base import (
    SourceModel, Target, accuracy_aware, keep_sensitive_in_float, median_ms, sqnr_db,
)
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
        """Static int8; with `min_cosine`, accuracy-aware: while the int8 model's outputs on the
        calibration data fall below that cosine, the most sensitive layer is kept in float."""
        self.check_precision(precision)
        artifact = self._quantize(source, float_artifact, calibration, out_dir, options)
        if not accuracy_aware(options):
            return artifact
        path = out_dir / "model.onnx"
        given = list(options.get("nodes_to_exclude", []))
        built = [artifact]

        def requantize(nodes: list[str]) -> None:
            built.append(self._quantize(source, float_artifact, calibration, out_dir,
                                        {**options, "nodes_to_exclude": given + nodes}))

        record = keep_sensitive_in_float(
            run_all(float_artifact.main_file, calibration), lambda: run_all(path, calibration),
            lambda: layer_sensitivity(float_artifact.main_file, path, calibration), requantize, calibration.labels,
            options, lambda: path.stat().st_size, lambda: latency_ms(path, calibration))
        built[-1].options["quantization"]["accuracy_aware"] = record
        return built[-1]

    def _quantize(self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, out_dir: Path,
                  options: dict) -> Artifact:
        require("onnxruntime", "onnxruntime")
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
        )

        method = options.get("calibration_method", "minmax")
        if method not in CALIBRATION_METHODS:
            raise ConfigError(f"onnxruntime calibration_method {method!r} unknown; choose one of {', '.join(CALIBRATION_METHODS)}")
        per_channel = bool(options.get("per_channel", True))
        symmetric = bool(options.get("symmetric_activations", False))
        batch = 32 if all(s.dynamic_batch for s in source.inputs) else 1

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter(calibration.batches(batch))

            def get_next(self):
                return next(self.feeds, None)

        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            extra = {"ActivationSymmetric": symmetric}
            try:
                quant_pre_process(str(float_artifact.main_file), str(prepared))
                if method == "entropy":
                    bins = int(options.get("entropy_bins", 2048))
                    overrides = entropy_ranges(prepared, Reader, Path(tmp), bins)
                    extra["TensorQuantOverrides"] = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                                     for name, (lo, hi) in overrides.items()}
                quantize_static(
                    str(prepared), str(out_dir / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    # U8 activations with S8 weights is ORT's fast path on x86 and ARM.
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    # entropy's ranges arrive as overrides (entropy_ranges); the pass here is then minmax
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    nodes_to_exclude=list(options.get("nodes_to_exclude", [])),
                    calibration_cache_path=None,
                    extra_options=extra,
                )
            except (ValueError, RuntimeError) as e:
                raise ExportError(f"onnxruntime int8 quantization failed: {e}") from e
        scheme = {"format": "QDQ", "calibration_method": method, "per_channel": per_channel,
                  "activations": "int8-symmetric" if symmetric else "uint8-asymmetric", "weights": "int8-symmetric",
                  "samples": len(calibration)}
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


def entropy_ranges(prepared: Path, reader, tmp: Path, bins: int) -> dict[str, tuple[float, float]]:
    """Activation ranges by KL divergence, with `bins` histogram bins (TensorRT uses 2048).

    quantize_static leaves ORT's entropy calibrator at 128 bins and 128 quantized bins, where its
    threshold search has a single candidate, the full range: "entropy" came out byte-identical to
    minmax. Its thresholds are symmetric around zero, so each is clipped to the range actually
    seen (a ReLU6 output would otherwise spend half of its uint8 codes on negatives)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    ranges = {}
    for method, extra in ((CalibrationMethod.MinMax, {}),
                          (CalibrationMethod.Entropy, {"num_bins": bins, "num_quantized_bins": 128})):
        calibrator = create_calibrator(str(prepared), None, augmented_model_path=str(tmp / f"{method.name}.onnx"),
                                       calibrate_method=method, extra_options=extra)
        calibrator.collect_data(reader())
        ranges[method] = {name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
                          for name, t in calibrator.compute_data().data.items()}
        del calibrator
    seen, kl = ranges[CalibrationMethod.MinMax], ranges[CalibrationMethod.Entropy]
    return {name: (min(0.0, max(lo, seen[name][0])), max(0.0, min(hi, seen[name][1])))
            for name, (lo, hi) in kl.items() if name in seen}


def run_all(model: Path | bytes, calibration: CalibrationSet, samples: int = 128) -> np.ndarray:
    """The first output on the first `samples` calibration samples (a file path or model bytes)."""
    ort = require("onnxruntime", "onnxruntime")
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    feeds = {k: v[:samples] for k, v in calibration.inputs.items()}
    if all(isinstance(d, int) for i in session.get_inputs() for d in i.shape):
        count = len(next(iter(feeds.values())))
        return np.concatenate([session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(count)])
    return session.run(None, feeds)[0]


def latency_ms(path: Path, calibration: CalibrationSet) -> float:
    """In-process p50 of one sample, single thread: the all-int8 and mixed models side by side."""
    ort = require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = next(calibration.samples())
    return median_ms(lambda: session.run(None, feed))


def with_fake_quant(model, tensor: str, scale: np.ndarray, zero: np.ndarray):
    """A copy of the float model in which only `tensor` goes through QuantizeLinear/DequantizeLinear."""
    import onnx
    from onnx import helper, numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == tensor:
                node.input[k] = f"{tensor}__dq"
    graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), f"{tensor}__scale"),
                              numpy_helper.from_array(np.asarray(zero), f"{tensor}__zero")])
    graph.node.extend([
        helper.make_node("QuantizeLinear", [tensor, f"{tensor}__scale", f"{tensor}__zero"], [f"{tensor}__q"]),
        helper.make_node("DequantizeLinear", [f"{tensor}__q", f"{tensor}__scale", f"{tensor}__zero"], [f"{tensor}__dq"]),
    ])
    return copy


def layer_sensitivity(float_path: Path, quant_path: Path, calibration: CalibrationSet, samples: int = 64) -> list[dict]:
    """For every activation the int8 model quantizes: the model's output SQNR when only that
    tensor is quantized (with the scale and zero point calibration chose). Ranked worst first:
    the layer whose int8 range costs the output most."""
    import onnx
    from onnx import numpy_helper

    require("onnxruntime", "onnxruntime")
    quant = onnx.load(str(quant_path))
    consts = {t.name: numpy_helper.to_array(t) for t in quant.graph.initializer}
    by_input: dict[str, list] = {}
    for node in quant.graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    producers = {o: n for n in quant.graph.node for o in n.output}
    params, consumers = {}, {}
    for node in quant.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts and node.input[1] in consts:
            zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] in consts else np.array(0, np.uint8)
            params[node.input[0]] = (consts[node.input[1]], zero)
            dq_nodes = [n for n in by_input.get(node.output[0], []) if n.op_type == "DequantizeLinear"]
            consumers[node.input[0]] = sorted({c.name for dq in dq_nodes for c in by_input.get(dq.output[0], [])})
    model = onnx.load(str(float_path))
    known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}

    def outputs(proto) -> np.ndarray:
        return run_all(proto.SerializeToString(), calibration, samples)

    reference = outputs(model)
    results = []
    for name, (scale, zero) in params.items():
        if name not in known:
            continue
        producer = producers.get(name)
        results.append({
            "tensor": name, "op": producer.op_type if producer is not None else "input",
            "nodes": sorted({*consumers.get(name, []), *([producer.name] if producer is not None else [])}),
            "output_sqnr_db": sqnr_db(reference, outputs(with_fake_quant(model, name, scale, zero))),
        })
    return sorted(results, key=lambda r: r["output_sqnr_db"])

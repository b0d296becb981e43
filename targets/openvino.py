"""OpenVINO: IR (.xml + .bin) from the ONNX interchange file, fp32 or fp16-compressed; int8 through NNCF."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeport.errors import ConfigError, ExportError, require
from edgeport.targets.base import (
    SourceModel, Target, accuracy_aware, declared_tensor, keep_sensitive_in_float, median_ms, worst_sqnr_db,
)
from edgeport.types import Artifact, CalibrationSet

PRESETS = ("performance", "mixed")
RANGE_ESTIMATORS = ("default", "minmax", "mean_minmax", "median_minmax", "mean_no_outliers_minmax", "mean_quantile",
                    "histogram")
MODEL_TYPES = ("auto", "cnn", "transformer")
# Ops that mark an attention model, for which NNCF's transformer scheme keeps accuracy.
ATTENTION_OPS = {"Softmax", "MVN", "ScaledDotProductAttention"}
# Ops that only move data: NNCF quantizes the inputs of the op that computes on it, so an ignored
# scope must name that op (ignoring a Reshape changed nothing and cost 60% latency on an encoder).
DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert", "Concat", "StridedSlice", "Slice", "Split",
                 "VariadicSplit", "Gather", "ShapeOf", "Broadcast", "Tile", "FakeQuantize"}


def is_transformer(ov_model) -> bool:
    return any(op.get_type_name() in ATTENTION_OPS for op in ov_model.get_ops())


def compile_for_verification(ov, model, threads: int):
    """Compile with f32 inference precision: otherwise this CPU runs "fp32" IR in bf16 and
    verification would judge the CPU's mode, not the file."""
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    return ov.Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU", config)


class OpenVinoTarget(Target):
    """OpenVINO IR on the CPU plugin."""

    name = "openvino"
    extra = "openvino"
    runtime = "openvino"
    precisions = ("fp32", "fp16", "int8")
    quant_schemes = PRESETS

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: dict,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        if precision == "int8":
            raise ConfigError("openvino int8 comes from quantize, not export")
        ov = require("openvino", "openvino")
        try:
            model = ov.convert_model(str(source.onnx_path))
        except Exception as e:  # the converter raises its own OpConversionFailure and friends
            raise ExportError(f"openvino could not convert {source.onnx_path.name}: {str(e).splitlines()[0]}") from e
        ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=(precision == "fp16"))
        return self.new_artifact(precision, "openvino-ir", ["model.xml", "model.bin"], source)

    def quantize(
        self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, precision: str,
        out_dir: Path, options: dict,
    ) -> Artifact:
        self.check_precision(precision)
        ov = require("openvino", "openvino")
        nncf = require("nncf", "openvino")
        preset = options.get("preset", "performance")
        if preset not in PRESETS:
            raise ConfigError(f"openvino preset {preset!r} unknown; choose one of {', '.join(PRESETS)}")
        model_type = options.get("model_type", "auto")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"openvino model_type {model_type!r} unknown; choose one of {', '.join(MODEL_TYPES)}")
        model = ov.Core().read_model(str(float_artifact.main_file))
        transformer = model_type == "transformer" or (model_type == "auto" and is_transformer(model))
        if options.get("smooth_quant", "auto") not in ("auto", "on", "off"):
            raise ConfigError(f"openvino smooth_quant {options['smooth_quant']!r} unknown; choose auto, on or off")
        fast_bias_correction = bool(options.get("fast_bias_correction", True))
        smooth_quant = options.get("smooth_quant", "auto")
        estimator = options.get("range_estimator", "default")
        per_channel = bool(options.get("per_channel", True))
        if estimator not in RANGE_ESTIMATORS:
            raise ConfigError(f"openvino range_estimator {estimator!r} unknown; choose one of {', '.join(RANGE_ESTIMATORS)}")
        samples = list(calibration.samples())
        ignored = list(options.get("ignored_nodes") or [])

        def quantize(smooth: bool):
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
            )

            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            settings = {}
            if not smooth:
                settings["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=-1.0)
            if estimator != "default":
                settings["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, estimator.upper())
            if not per_channel:
                from nncf.quantization.advanced_parameters import QuantizationParameters

                settings["weights_quantization_params"] = QuantizationParameters(per_channel=False)
            advanced = AdvancedQuantizationParameters(**settings) if settings else None
            try:
                return nncf.quantize(
                    ov.Core().read_model(str(float_artifact.main_file)), nncf.Dataset(samples),
                    preset=nncf.QuantizationPreset(preset),
                    model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                    subset_size=len(samples), fast_bias_correction=fast_bias_correction,
                    ignored_scope=nncf.IgnoredScope(names=list(ignored)) if ignored else None,
                    advanced_parameters=advanced,
                )
            except Exception as e:  # nncf raises many kinds; name the step and keep the cause
                raise ExportError(f"nncf int8 quantization failed: {e}") from e

        scheme = {"tool": "nncf", "preset": preset, "range_estimator": estimator, "per_channel": per_channel,
                  "model_type": "transformer" if transformer else "cnn",
                  "fast_bias_correction": fast_bias_correction, "samples": len(samples)}
        if not transformer:
            quantized = quantize(smooth=True)  # SmoothQuant applies to transformers only
            smooth = True
        elif smooth_quant in ("on", "off"):
            smooth = smooth_quant == "on"
            quantized = quantize(smooth=smooth)
            scheme["smooth_quant"] = smooth_quant
        else:
            # SmoothQuant helps when activations have outlier channels and hurts small models
            # without them: build both, keep the one closer to fp32 on calibration data.
            from edgeport.metrics import output_metrics

            reference = outputs_on(ov, ov.Core().read_model(str(float_artifact.main_file)), calibration, 64)
            scores = {}
            for smooth in (True, False):
                candidate = quantize(smooth)
                current = outputs_on(ov, candidate, calibration, 64)
                worst = min(output_metrics(str(i), r, c, False).cosine for i, (r, c) in enumerate(zip(reference, current)))
                scores[smooth] = (worst, candidate)
            best = max(scores, key=lambda k: scores[k][0])
            quantized, smooth = scores[best][1], best
            scheme["smooth_quant"] = "on" if best else "off"
            scheme["smooth_quant_probe_cosine"] = {"on": scores[True][0], "off": scores[False][0]}
        ov.save_model(quantized, str(out_dir / "model.xml"), compress_to_fp16=False)
        if accuracy_aware(options):
            scheme["accuracy_aware"] = self._keep_sensitive_in_float(
                float_artifact, calibration, out_dir, options, ignored, lambda: quantize(smooth))
        return self.new_artifact("int8", "openvino-ir", ["model.xml", "model.bin"], source,
                                 options={"quantization": scheme})

    def _keep_sensitive_in_float(self, float_artifact: Artifact, calibration: CalibrationSet, out_dir: Path,
                                 options: dict, ignored: list[str], requantize) -> dict:
        """Accuracy-aware int8 through NNCF's ignored scope on the ops that read a sensitive tensor."""
        ov = require("openvino", "openvino")
        path = out_dir / "model.xml"
        given = list(ignored)

        def rebuild(nodes: list[str]) -> None:
            ignored[:] = given + nodes  # quantize() reads this list
            ov.save_model(requantize(), str(path), compress_to_fp16=False)

        return keep_sensitive_in_float(
            outputs_on(ov, ov.Core().read_model(str(float_artifact.main_file)), calibration),
            lambda: outputs_on(ov, ov.Core().read_model(str(path)), calibration),
            lambda: layer_sensitivity(float_artifact.main_file, path, calibration), rebuild, calibration.labels,
            options, lambda: sum((out_dir / n).stat().st_size for n in ("model.xml", "model.bin")),
            lambda: latency_ms(ov, path, calibration), [o.name for o in float_artifact.outputs])

    def declared(self, artifact: Artifact) -> dict:
        ov = require("openvino", "openvino")
        model = ov.Core().read_model(str(artifact.main_file))

        def tensor(port) -> dict:
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            dtype = port.get_element_type().to_dtype().name
            return declared_tensor(port.get_any_name(), shape, dtype)

        ops = model.get_ops()
        constants = {op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant"}
        numerics = "int8" if any(op.get_type_name() == "FakeQuantize" for op in ops) or constants & {"i8", "u8"} else (
            "float16" if "f16" in constants else "float32")
        return {"inputs": [tensor(p) for p in model.inputs], "outputs": [tensor(p) for p in model.outputs],
                "numerics": numerics}

    def load(self, artifact: Artifact, threads: int):
        ov = require("openvino", "openvino")
        compiled = compile_for_verification(ov, artifact.main_file, threads)

        class OvSession:
            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                result = compiled(feeds)
                return {name: np.asarray(result[o]) for o in compiled.outputs for name in o.get_names()}

        return OvSession()


def outputs_on(ov, model, calibration: CalibrationSet, samples: int = 128) -> list[np.ndarray]:
    """Every output on the first `samples` calibration samples, one at a time."""
    compiled = compile_for_verification(ov, model, 1)
    batches = list(calibration.samples())[:samples]
    results = [compiled(b) for b in batches]
    return [np.concatenate([np.asarray(r[o]) for r in results]) for o in compiled.outputs]


def compute_consumers(output) -> list[str]:
    """The ops that compute on an output port, looking through data-movement ops."""
    found, seen, todo = [], set(), [output]
    while todo:
        for target in todo.pop().get_target_inputs():
            node = target.get_node()
            name = node.get_friendly_name()
            if name in seen:
                continue
            seen.add(name)
            if node.get_type_name() in DATA_MOVEMENT:
                todo.extend(node.outputs())
            elif node.get_type_name() != "Result":
                found.append(name)
    return sorted(found)


def latency_ms(ov, path: Path, calibration: CalibrationSet) -> float:
    """In-process p50 of one sample, single thread, f32 hint: all-int8 and mixed side by side."""
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    request, feed = compiled.create_infer_request(), next(calibration.samples())
    return median_ms(lambda: request.infer(feed))


def activation_quantizers(ov, quantized_path: Path) -> list[dict]:
    """The FakeQuantize ops NNCF put on activations: producer name, output port, and parameters."""
    found = []
    for op in ov.Core().read_model(str(quantized_path)).get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0)
        producer = source.get_node()
        if producer.get_type_name() in ("Constant", "Convert") and all(
                producer.input_value(i).get_node().get_type_name() == "Constant" for i in range(producer.get_input_size())):
            continue  # a weight quantizer
        params = [op.input_value(i).get_node().get_data() for i in range(1, 5)]
        found.append({"producer": producer.get_friendly_name(), "port": source.get_index(), "params": params,
                      "levels": int(op.get_attributes()["levels"]), "op": producer.get_type_name()})
    return found


def layer_sensitivity(float_path: Path, quantized_path: Path, calibration: CalibrationSet) -> list[dict]:
    """For every activation NNCF quantized: the fp32 model's output SQNR with only that tensor
    fake-quantized with NNCF's ranges. Worst first."""
    ov = require("openvino", "openvino")
    import openvino.opset13 as ops

    reference = outputs_on(ov, ov.Core().read_model(str(float_path)), calibration)
    results = []
    for fq in activation_quantizers(ov, quantized_path):
        model = ov.Core().read_model(str(float_path))
        nodes = {op.get_friendly_name(): op for op in model.get_ops()}
        if fq["producer"] not in nodes:
            continue
        output = nodes[fq["producer"]].output(fq["port"])
        consumers = compute_consumers(output)
        targets = list(output.get_target_inputs())
        fake = ops.fake_quantize(output, *[ops.constant(p) for p in fq["params"]], fq["levels"])
        for target in targets:
            target.replace_source_output(fake.output(0))
        results.append({"tensor": fq["producer"], "op": fq["op"], "nodes": consumers,
                        "output_sqnr_db": worst_sqnr_db(reference, outputs_on(ov, model, calibration))})
    return sorted(results, key=lambda r: r["output_sqnr_db"])

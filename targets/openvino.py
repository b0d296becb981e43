"""OpenVINO: IR (.xml + .bin) from the ONNX interchange file, fp32 or fp16-compressed; int8 through NNCF."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from edgeport.errors import ConfigError, EdgeportError, ExportError, first_line, require
from edgeport.targets.base import (
    AwareLoop, AwareOptions, QuantizeRequest, SearchAxes, SourceModel, Target, TargetOptions, declared_tensor,
    keep_sensitive_in_float, learned_scheme, median_ms, worst_sqnr_db,
)
from edgeport.targets.openvino_codebook import CODEBOOK_SUFFIX
from edgeport.types import Artifact, CalibrationSet, sha256_file

# Ops that mark an attention model, for which NNCF's transformer scheme keeps accuracy.
ATTENTION_OPS = {"Softmax", "MVN", "ScaledDotProductAttention"}
# Ops that only move data: NNCF quantizes the inputs of the op that computes on it, so an ignored
# scope must name that op (ignoring a Reshape changed nothing and cost 60% latency on an encoder).
DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert", "Concat", "StridedSlice", "Slice", "Split",
                 "VariadicSplit", "Gather", "ShapeOf", "Broadcast", "Tile", "FakeQuantize"}


class OpenVinoOptions(TargetOptions, AwareOptions):
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32", "fp16", "int8"]
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="performance: symmetric int8 activations; mixed: asymmetric activations")
    range_estimator: Literal["default", "minmax", "mean_minmax", "median_minmax", "mean_no_outliers_minmax",
                             "mean_quantile", "histogram"] = Field("default", description="NNCF activation range estimator")
    per_channel: bool = Field(True, description="per-channel int8 weights (else one scale per tensor)")
    model_type: Literal["auto", "cnn", "transformer"] = "auto"
    fast_bias_correction: bool = True
    overflow_fix: Literal["first_layer_only", "disable", "enable"] = Field("first_layer_only", description=(
        "NNCF's guard against int16 saturation on x86 CPUs without VNNI: the first layer's (or every layer's) "
        "int8 weights use half the range. CPUs with VNNI or AMX do not saturate: disable it there and the "
        "first layer keeps its full int8 precision"))
    smooth_quant: Literal["auto", "on", "off"] = Field(
        "auto", description="transformers only; auto builds both and keeps the one closer to fp32 on calibration data"
    )
    ignored_nodes: list[str] = Field(default_factory=list, description="nodes NNCF leaves in float (IR names)")
    codebook: Literal["none", "cb4", "adaptive"] = Field("none", description=(
        "fp16 artifact only: MatMul weights become 4-bit indices into 16 values (NNCF codebook compression; "
        "adaptive learns the values per layer from calibration data, which keeps clustered weights)"))
    codebook_backup: Literal["int8", "none"] = Field(
        "int8", description="with codebook: what Convolution weights get (int8 per channel, or none: stay fp16)")
    hint: list[Literal["f32", "bf16", "default"]] = Field(
        ["f32"], description="INFERENCE_PRECISION_HINT(s) to benchmark; verification always runs f32"
    )
    performance_hint: Literal["latency", "throughput"] = "latency"
    streams: int = Field(1, ge=0, description="NUM_STREAMS; 0 lets OpenVINO choose")

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"hint", "performance_hint", "streams"})

    @field_validator("hint", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


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
    Options = OpenVinoOptions
    device_modules = (("openvino", "openvino"),)
    bundle_runtime: ClassVar[dict] = {"name": "openvino", "min_version": "2024.0", "pip": "openvino>=2024.0"}

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: OpenVinoOptions,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        if precision == "int8":
            raise ConfigError("openvino int8 comes from quantize, not export")
        ov = require("openvino", "openvino")
        try:
            model = ov.convert_model(str(source.onnx_path))
        except Exception as e:  # noqa: BLE001 - the converter raises its own OpConversionFailure and friends
            raise ExportError(f"openvino could not convert {source.onnx_path.name}: {str(e).splitlines()[0]}") from e
        if precision == "fp16" and options.codebook != "none":
            return self.codebook_export(ov, model, source, out_dir, options, calibration)
        ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=(precision == "fp16"))
        return self.new_artifact(precision, "openvino-ir", ["model.xml", "model.bin"], source)

    def codebook_export(self, ov, model, source: SourceModel, out_dir: Path, options: OpenVinoOptions,
                        calibration: CalibrationSet | None) -> Artifact:
        from edgeport.targets.openvino_codebook import codebook_compress

        samples = list(calibration.samples()) if options.codebook == "adaptive" else None
        try:
            record = codebook_compress(model, out_dir / "model.xml", options.codebook, options.codebook_backup, samples)
        except EdgeportError:
            raise
        except Exception as e:  # noqa: BLE001 - nncf raises many kinds; name the step and keep the cause
            hint = "; codebook = \"cb4\" needs no data" if options.codebook == "adaptive" else ""
            raise ExportError(f"nncf codebook compression failed ({type(e).__name__}: {first_line(e)}){hint}") from e
        return self.new_artifact("fp16", "openvino-ir", ["model.xml", "model.bin"], source, options={"codebook": record})

    def cache_extras(self, precision: str, options: OpenVinoOptions, calibration: CalibrationSet) -> dict:
        # the adaptive codebook is estimated from calibration data
        return {"calibration": calibration.digest} if precision == "fp16" and options.codebook == "adaptive" else {}

    def bundle_extras(self, artifact: Artifact, manifest: dict, folder: Path) -> None:
        if "codebook" in artifact.options:  # which weights are codebook indices, which int8, and the sizes
            manifest["codebook"] = artifact.options["codebook"]

    def quantize(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, precision: str,
                 out_dir: Path, options: OpenVinoOptions) -> Artifact:
        self.check_precision(precision)
        ov = require("openvino", "openvino")
        if request.learned is not None:  # QAT's QDQ model: its QuantizeLinear/DequantizeLinear become FakeQuantize
            try:
                model = ov.convert_model(str(request.learned))
            except Exception as e:  # noqa: BLE001 - the converter raises its own OpConversionFailure and friends
                raise ExportError(f"openvino could not convert the learned QDQ model: {str(e).splitlines()[0]}") from e
            ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)
            return self.new_artifact("int8", "openvino-ir", ["model.xml", "model.bin"], source,
                                     options={"quantization": learned_scheme(request.learned, options)})
        nncf = require("nncf", "openvino")
        calibration = request.calibration
        model = ov.Core().read_model(str(float_artifact.main_file))
        transformer = options.model_type == "transformer" or (options.model_type == "auto" and is_transformer(model))
        samples = list(calibration.samples())
        ignored = list(options.ignored_nodes)

        def quantize(smooth: bool):
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, OverflowFix, QuantizationParameters,
            )
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            settings = {"overflow_fix": OverflowFix(options.overflow_fix)}
            if not smooth:
                settings["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=-1.0)
            if options.range_estimator != "default":
                settings["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                                         options.range_estimator.upper())
            if not options.per_channel:
                settings["weights_quantization_params"] = QuantizationParameters(per_channel=False)
            advanced = AdvancedQuantizationParameters(**settings)
            try:
                return nncf.quantize(
                    ov.Core().read_model(str(float_artifact.main_file)), nncf.Dataset(samples),
                    preset=nncf.QuantizationPreset(options.preset),
                    model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                    subset_size=len(samples), fast_bias_correction=options.fast_bias_correction,
                    ignored_scope=nncf.IgnoredScope(names=list(ignored)) if ignored else None,
                    advanced_parameters=advanced,
                )
            except Exception as e:  # noqa: BLE001 - nncf raises many kinds; name the step and keep the cause
                raise ExportError(f"nncf int8 quantization failed: {e}") from e

        scheme = {"tool": "nncf", "preset": options.preset, "range_estimator": options.range_estimator,
                  "per_channel": options.per_channel, "model_type": "transformer" if transformer else "cnn",
                  "fast_bias_correction": options.fast_bias_correction, "overflow_fix": options.overflow_fix,
                  "samples": len(samples)}
        if not transformer:
            quantized = quantize(smooth=True)  # SmoothQuant applies to transformers only
            smooth = True
        elif options.smooth_quant in ("on", "off"):
            smooth = options.smooth_quant == "on"
            quantized = quantize(smooth=smooth)
            scheme["smooth_quant"] = options.smooth_quant
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
        path = out_dir / "model.xml"
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        if options.accuracy_aware:
            given = list(ignored)

            def rebuild(nodes: list[str]) -> None:
                ignored[:] = given + nodes  # quantize() reads this list
                ov.save_model(quantize(smooth), str(path), compress_to_fp16=False)

            from edgeport.pipeline.stages import code_hash

            loop = AwareLoop(
                reference=outputs_on(ov, ov.Core().read_model(str(float_artifact.main_file)), calibration),
                current=lambda: outputs_on(ov, ov.Core().read_model(str(path)), calibration),
                rank_layers=lambda: request.shared_result(
                    "openvino-ranking", {"model": sha256_file(float_artifact.main_file),
                                         "calibration": calibration.digest, "options": options.without_budget(),
                                         "code": code_hash(__name__)},
                    lambda: layer_sensitivity(float_artifact.main_file, path, calibration)), requantize=rebuild,
                size=lambda: sum((out_dir / n).stat().st_size for n in ("model.xml", "model.bin")),
                latency=lambda: latency_ms(ov, path, calibration), names=[o.name for o in float_artifact.outputs])
            scheme["accuracy_aware"] = keep_sensitive_in_float(loop, options, request)
        return self.new_artifact("int8", "openvino-ir", ["model.xml", "model.bin"], source,
                                 options={"quantization": scheme})

    def runtime_variants(self, options: OpenVinoOptions) -> list[dict]:
        return [{"hint": h, "performance_hint": options.performance_hint, "streams": options.streams}
                for h in options.hint]

    def offers_sensitivity(self, artifact: Artifact) -> bool:
        return artifact.precision == "int8"

    def sensitivity(self, float_artifact: Artifact, artifact: Artifact, calibration: CalibrationSet) -> list[dict]:
        return layer_sensitivity(float_artifact.main_file, artifact.main_file, calibration)

    def search_axes(self) -> SearchAxes:
        # edgeport's calibration methods as NNCF range estimators (the closest each has)
        return SearchAxes("range_estimator", {"minmax": "minmax", "entropy": "histogram", "percentile": "mean_quantile"},
                          accuracy_aware=True)

    @staticmethod
    def device_loader(path: str, threads: int, options: dict, shapes: dict) -> dict:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        if model.is_dynamic():  # fix the batch as a deployed app would: static shapes get faster kernels
            model.reshape({name: list(shape) for name, shape in shapes.items()})
        hint = options.get("hint", "f32")
        config = {"INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY").upper()}
        if hint != "default":
            config["INFERENCE_PRECISION_HINT"] = hint
        if options.get("streams"):
            config["NUM_STREAMS"] = str(options["streams"])
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        ran = {"io": "bound once", "hint": hint,
               "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
               "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
               "streams": int(compiled.get_property("NUM_STREAMS"))}

        def set_inputs(feeds):
            for name, value in feeds.items():
                request.set_tensor(name, ov.Tensor(value, shared_memory=True))

        def invoke():
            request.infer()
            return {name: request.get_output_tensor(i).data for i, o in enumerate(compiled.outputs)
                    for name in o.get_names()}

        # OpenVINO times each request itself (what benchmark_app reports); the Python call adds
        # a few microseconds that a C++ app does not pay. The runner keeps the wall clock too.
        return {"version": ov.get_version(), "ran": ran, "set_inputs": set_inputs, "invoke": invoke,
                "clock": lambda: request.latency}

    @staticmethod
    def example_loader(path):
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(feeds):
            result = compiled(feeds)
            return {name: result[o] for o in compiled.outputs for name in o.get_names()}

        return run

    def declared(self, artifact: Artifact) -> dict:
        ov = require("openvino", "openvino")
        model = ov.Core().read_model(str(artifact.main_file))

        def tensor(port) -> dict:
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            dtype = port.get_element_type().to_dtype().name
            return declared_tensor(port.get_any_name(), shape, dtype)

        ops = model.get_ops()
        constants = {op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant"}
        codebook = any(op.get_friendly_name().endswith(CODEBOOK_SUFFIX) for op in ops)
        # a codebook model computes in float: its 4-bit and int8 weights decompress to fp16
        numerics = "int8" if any(op.get_type_name() == "FakeQuantize" for op in ops) or (
            constants & {"i8", "u8"} and not codebook) else ("float16" if "f16" in constants or codebook else "float32")
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


WEIGHT_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def int8_weights(ov, quantized_path: Path) -> dict[str, np.ndarray]:
    """Per op that computes with an int8 weight in NNCF's model (Constant int8 -> Convert ->
    Multiply by the scales): that weight as it runs, dequantized."""
    found = {}
    for op in ov.Core().read_model(str(quantized_path)).get_ops():
        scaled = op.input_value(1).get_node() if op.get_type_name() in WEIGHT_OPS else None
        if scaled is None or scaled.get_type_name() != "Multiply":
            continue
        convert, scale = (scaled.input_value(i).get_node() for i in (0, 1))
        if convert.get_type_name() != "Convert" or scale.get_type_name() != "Constant":
            continue
        integers = convert.input_value(0).get_node()
        smoothed = "smooth_quant" in op.input_value(0).get_node().get_friendly_name()  # NNCF rescaled this weight
        if integers.get_type_name() == "Constant" and not smoothed:
            found[op.get_friendly_name()] = integers.get_data().astype(np.float32) * scale.get_data().astype(np.float32)
    return found


def layer_sensitivity(float_path: Path, quantized_path: Path, calibration: CalibrationSet) -> list[dict]:
    """For every activation NNCF quantized: the fp32 model's output SQNR with only that tensor
    fake-quantized with NNCF's ranges; and for every int8 weight, with only that weight as NNCF
    stored it. Worst first."""
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
    for name, value in int8_weights(ov, quantized_path).items():
        model = ov.Core().read_model(str(float_path))
        op = next((o for o in model.get_ops() if o.get_friendly_name() == name), None)
        weight = op.input_value(1).get_node() if op is not None else None
        if weight is None or weight.get_type_name() != "Constant" or weight.get_data().shape != value.shape:
            continue
        op.input(1).replace_source_output(ops.constant(value.reshape(weight.get_data().shape)).output(0))
        results.append({"tensor": f"{name} weight", "op": f"{op.get_type_name()} weight", "nodes": [name],
                        "output_sqnr_db": worst_sqnr_db(reference, outputs_on(ov, model, calibration))})
    return sorted(results, key=lambda r: r["output_sqnr_db"])

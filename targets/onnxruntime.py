"""ONNX Runtime: the interchange file as is (fp32), or QDQ static int8 calibrated on the shared set."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from edgeport.errors import ConfigError, ExportError, require
from edgeport.targets.base import (
    AwareLoop, AwareOptions, QuantizeRequest, SearchAxes, SourceModel, Target, TargetOptions, declared_tensor,
    keep_sensitive_in_float, learned_scheme, median_ms, worst_sqnr_db,
)
from edgeport.types import Artifact, CalibrationSet

log = logging.getLogger("edgeport")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
# Ops that mark an attention model, and the only ops quantized there (inputs only): an attention
# mask's additive -10000 would take a whole uint8 range, Softmax or LayerNorm in int8 cost accuracy
# for no speed, and the residual stream's outlier channels ruin a MatMul output's one scale
# (MiniLM: 0.94 -> 0.99 cosine without output quantization, and faster).
ATTENTION_OPS = {"Softmax", "LayerNormalization"}
TRANSFORMER_QUANTIZED_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose"]
# Ops that only move or reshape data: a QDQ pair on their input is taken over by the op that
# computes on it, so keeping them in float changes nothing (walk through them to that op).
DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Concat", "Expand",
                 "Gather", "Identity", "Cast", "Shape", "QuantizeLinear", "DequantizeLinear"}


class OnnxRuntimeOptions(TargetOptions, AwareOptions):
    precisions: list[Literal["fp32", "int8"]] = ["fp32", "int8"]
    calibration_method: CalibrationMethod | list[CalibrationMethod] = Field(
        "minmax", description="one method, or a list to build and compare one int8 artifact per method")
    per_channel: bool = True
    entropy_bins: int = Field(2048, ge=256, description="histogram bins of the entropy calibration")
    symmetric_activations: bool = Field(False, description="int8 activations symmetric around 0 (else uint8 asymmetric)")
    model_type: Literal["auto", "cnn", "transformer"] = Field(
        "auto", description="transformer: quantize only MatMul/Gemm/Conv (an attention mask's -10000 and Softmax "
                            "stay float); auto: transformer when the graph has Softmax or LayerNormalization")
    smooth_quant: Literal["auto", "on", "off"] = Field(
        "auto", description="transformers: SmoothQuant moves activation outliers into the weights; auto builds "
                            "both and keeps the one closer to fp32 on calibration data")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="nodes kept in float (ONNX node names)")


class OnnxRuntimeTarget(Target):
    """ONNX Runtime, CPU execution provider."""

    name = "onnxruntime"
    extra = "onnxruntime"
    runtime = "onnxruntime"
    precisions = ("fp32", "int8")
    Options = OnnxRuntimeOptions
    device_modules = (("onnxruntime", "onnxruntime"),)
    # opset 20 needs ONNX Runtime 1.17
    bundle_runtime: ClassVar[dict] = {"name": "onnxruntime", "min_version": "1.17", "pip": "onnxruntime>=1.17"}

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: OnnxRuntimeOptions,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        if precision != "fp32":
            raise ConfigError(f"onnxruntime exports fp32; {precision} comes from quantize")
        shutil.copyfile(source.onnx_path, out_dir / "model.onnx")
        return self.new_artifact("fp32", "onnx", ["model.onnx"], source)

    def quantize(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, precision: str,
                 out_dir: Path, options: OnnxRuntimeOptions) -> Artifact:
        """Static int8; with a budget (min_cosine, ...), accuracy-aware: while the int8 model's
        outputs on the calibration data miss it, the most sensitive layers are kept in float."""
        self.check_precision(precision)
        if request.learned is not None:  # QAT's ranges and weights, as trained
            shutil.copyfile(request.learned, out_dir / "model.onnx")
            return self.new_artifact("int8", "onnx", ["model.onnx"], source,
                                     options={"quantization": learned_scheme(request.learned, options)})
        calibration = request.calibration
        smooth = self.choose_smoothing(source, float_artifact, calibration, out_dir, options)
        options = options.model_copy(update={"smooth_quant": smooth})
        artifact = self._quantize(source, float_artifact, calibration, out_dir, options)
        if not options.accuracy_aware:
            return artifact
        path = out_dir / "model.onnx"
        built = [artifact]

        def requantize(nodes: list[str]) -> None:
            excluded = options.model_copy(update={"nodes_to_exclude": [*options.nodes_to_exclude, *nodes]})
            built.append(self._quantize(source, float_artifact, calibration, out_dir, excluded))

        loop = AwareLoop(
            reference=run_all(float_artifact.main_file, calibration), current=lambda: run_all(path, calibration),
            rank_layers=lambda: self.ranking(source, float_artifact, request, out_dir, options), requantize=requantize,
            size=lambda: path.stat().st_size, latency=lambda: latency_ms(path, calibration),
            names=[o.name for o in source.outputs])
        built[-1].options["quantization"]["accuracy_aware"] = keep_sensitive_in_float(loop, options, request)
        return built[-1]

    def ranking(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, out_dir: Path,
                options: OnnxRuntimeOptions) -> list[dict]:
        """Layers ranked by their int8 cost, measured on a minmax-calibrated model: the same ranking
        for every calibration method, so a search computes it once per fp32 model (it is shared)."""
        from edgeport.pipeline.stages import code_hash
        from edgeport.types import sha256_file

        reference = options.model_copy(update={"calibration_method": "minmax", "nodes_to_exclude": []})
        key = {"model": sha256_file(float_artifact.main_file), "calibration": request.calibration.digest,
               "options": reference.without_budget(), "code": code_hash(__name__)}

        def compute() -> list[dict]:
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                self._quantize(source, float_artifact, request.calibration, Path(tmp), reference)
                return layer_sensitivity(float_artifact.main_file, Path(tmp) / "model.onnx", request.calibration)

        return request.shared_result("onnxruntime-ranking", key, compute)

    def choose_smoothing(self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet,
                         out_dir: Path, options: OnnxRuntimeOptions) -> str:
        """SmoothQuant on or off. Transformers' MatMul inputs can carry outlier channels that one
        int8 scale per tensor cannot hold; moving that range into the weights can fix it, and costs
        a model without outliers a little. "auto" builds both and keeps the closer to fp32."""
        if options.smooth_quant != "auto":
            return options.smooth_quant
        if not is_transformer(float_artifact.main_file, options.model_type):
            return "off"
        from edgeport.metrics import output_metrics

        reference = run_all(float_artifact.main_file, calibration, 64)
        scores = {}
        for smooth in ("on", "off"):
            self._quantize(source, float_artifact, calibration, out_dir, options.model_copy(update={"smooth_quant": smooth}))
            current = run_all(out_dir / "model.onnx", calibration, 64)
            scores[smooth] = min(output_metrics(str(i), r, c, False).cosine for i, (r, c) in
                                 enumerate(zip(reference, current)))
        return max(scores, key=scores.get)

    def offers_sensitivity(self, artifact: Artifact) -> bool:
        return artifact.precision == "int8"

    def sensitivity(self, float_artifact: Artifact, artifact: Artifact, calibration: CalibrationSet) -> list[dict]:
        return layer_sensitivity(float_artifact.main_file, artifact.main_file, calibration)

    def search_axes(self) -> SearchAxes:
        return SearchAxes("calibration_method", {m: m for m in CALIBRATION_METHODS}, accuracy_aware=True)

    def bundle_extras(self, artifact: Artifact, manifest: dict, folder: Path) -> None:
        android_assets(artifact, manifest, folder)

    @staticmethod
    def device_loader(path: str, threads: int, options: dict, shapes: dict) -> dict:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        names = [o.name for o in session.get_outputs()]

        def set_inputs(feeds):
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in names:
                binding.bind_output(name, "cpu")

        def invoke():
            session.run_with_iobinding(binding)
            return dict(zip(names, binding.get_outputs()))

        return {"version": ort.__version__, "ran": {"providers": ["CPUExecutionProvider"], "io": "bound once"},
                "set_inputs": set_inputs, "invoke": invoke}

    @staticmethod
    def example_loader(path):
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, session.run(None, feeds)))

    def _quantize(self, source: SourceModel, float_artifact: Artifact, calibration: CalibrationSet, out_dir: Path,
                  options: OnnxRuntimeOptions) -> Artifact:
        require("onnxruntime", "onnxruntime")
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
        )

        method = options.calibration_method
        if isinstance(method, list):  # a list compares methods side by side: each build gets one
            method = method[0]
        per_channel, symmetric = options.per_channel, options.symmetric_activations
        transformer = is_transformer(float_artifact.main_file, options.model_type)
        batch = 32 if all(s.dynamic_batch for s in source.inputs) else 1

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter(calibration.batches(batch))

            def get_next(self):
                return next(self.feeds, None)

        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            extra = {"ActivationSymmetric": symmetric}
            if transformer:  # a MatMul's output feeds a float Add (bias, residual) whose outlier channels
                extra["OpTypesToExcludeOutputQuantization"] = TRANSFORMER_QUANTIZED_OPS  # int8 cannot hold
            try:
                extra["preprocess"] = pre_process(quant_pre_process, float_artifact.main_file, prepared)
                smoothed = smooth_matmuls(prepared, calibration) if options.smooth_quant == "on" else 0
                if method == "entropy":
                    bins = options.entropy_bins
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
                    nodes_to_exclude=list(options.nodes_to_exclude),
                    op_types_to_quantize=TRANSFORMER_QUANTIZED_OPS if transformer else None,
                    calibration_cache_path=None,
                    extra_options={k: v for k, v in extra.items() if k != "preprocess"},
                )
            except (ValueError, RuntimeError) as e:
                raise ExportError(f"onnxruntime int8 quantization failed: {e}") from e
        guarded = keep_float_at_load(out_dir / "model.onnx", options.nodes_to_exclude)
        scheme = {"format": "QDQ", "calibration_method": method, "per_channel": per_channel,
                  "preprocess": extra["preprocess"], "model_type": "transformer" if transformer else "cnn",
                  "smooth_quant": options.smooth_quant, "smoothed_matmuls": smoothed,
                  "ops": TRANSFORMER_QUANTIZED_OPS if transformer else "all ORT quantizes",
                  "activations": "int8-symmetric" if symmetric else "uint8-asymmetric", "weights": "int8-symmetric",
                  "samples": len(calibration)}
        if guarded:
            scheme["float_inputs_per_channel"] = guarded
        return self.new_artifact("int8", "onnx", ["model.onnx"], source, options={"quantization": scheme})

    def declared(self, artifact: Artifact) -> dict:
        import onnx
        from onnx import helper

        model = onnx.load(str(artifact.main_file))

        def tensor(value) -> dict:
            kind = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
            return declared_tensor(value.name, shape, helper.tensor_dtype_to_np_dtype(kind.elem_type).name)

        ops = {n.op_type for n in model.graph.node}
        halves = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        numerics = "int8" if ops & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger"} else (
            "float16" if halves else "float32")
        return {"inputs": [tensor(v) for v in model.graph.input], "outputs": [tensor(v) for v in model.graph.output],
                "numerics": numerics}

    def load(self, artifact: Artifact, threads: int):
        ort = require("onnxruntime", "onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(artifact.main_file), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        class OrtSession:
            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return dict(zip(names, session.run(None, feeds)))

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


def smooth_matmuls(path: Path, calibration: CalibrationSet, alpha: float = 0.5, samples: int = 64) -> int:
    """SmoothQuant (Xiao et al. 2023) in place on an ONNX file: for each MatMul of an activation X
    by a constant W, scale X's channels down by s = max|X|^alpha / max|W|^(1-alpha) (a Mul before
    the MatMul, which stays float) and W's rows up by s: the product is unchanged, the outlier
    channels that ruined X's one int8 scale now live in W's per-channel scales. Returns how many
    MatMuls were smoothed."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
               and n.input[0] not in weights and len(weights[n.input[1]].dims) == 2]
    if not matmuls:
        return 0
    activations = sorted({n.input[0] for n in matmuls})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in activations)
    ort = require("onnxruntime", "onnxruntime")
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peaks = {a: 0.0 for a in activations}
    for feeds in list(calibration.samples())[:samples]:
        values = session.run(activations, {i.name: feeds[i.name] for i in session.get_inputs()})
        for a, v in zip(activations, values):
            peaks[a] = np.maximum(peaks[a], np.abs(v).reshape(-1, v.shape[-1]).max(0))
    nodes, chosen = [], {id(n) for n in matmuls}
    for node in model.graph.node:
        if id(node) in chosen:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            x_peak, w_peak = peaks[node.input[0]], np.abs(w).max(1)
            scale = np.where((x_peak > 0) & (w_peak > 0), x_peak**alpha / np.maximum(w_peak, 1e-8) ** (1 - alpha), 1.0)
            scale = np.clip(scale, 1e-5, 1e5).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(w * scale[:, None], node.input[1]))
            inverse, smoothed = f"{node.name}__smooth_scale", f"{node.name}__smoothed"
            model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}__smooth"))
            node.input[0] = smoothed
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return len(matmuls)


REQUANTIZED_AT_LOAD = ("Conv", "ConvTranspose", "Gemm")  # the ops whose float weights WeightBiasQuantization quantizes


def input_channels(node, weight: np.ndarray) -> int | None:
    """The size of axis 1 of a Conv/ConvTranspose/Gemm's input, read off its weight."""
    attributes = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type == "Conv":
        return weight.shape[1] * attributes.get("group", 1)
    if node.op_type == "ConvTranspose":
        return weight.shape[0]
    if attributes.get("transA", 0):
        return None  # axis 1 is M, which the weight does not say
    return weight.shape[1] if attributes.get("transB", 0) else weight.shape[0]


def keep_float_at_load(path: Path, nodes: list[str]) -> list[str]:
    """Keep the listed nodes float when ONNX Runtime loads the model. Its WeightBiasQuantization
    pass (1.20+) quantizes, per tensor, the float weights of a Conv, ConvTranspose or Gemm whose
    input comes from a per-tensor DequantizeLinear: a layer the accuracy-aware fallback kept in
    float ran as int8 with one scale for all its channels, worse than the int8 it replaced
    (EfficientNet-Lite0's first depthwise conv alone: top-1 agreement 0.89 -> 0.57). Feeding such a
    node its own DequantizeLinear whose scale is given per channel (the same value repeated)
    computes the same and the pass leaves it alone. Returns the nodes changed."""
    import onnx
    from onnx import helper, numpy_helper

    if not nodes:
        return []
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    added: dict[str, list] = {}  # DequantizeLinear input -> the new per-channel copies of it
    changed = []
    for node in graph.node:
        dq = producers.get(node.input[0])
        if (node.name not in nodes or node.op_type not in REQUANTIZED_AT_LOAD or node.input[1] not in consts
                or dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in consts):
            continue
        scale = numpy_helper.to_array(consts[dq.input[1]])
        channels = input_channels(node, numpy_helper.to_array(consts[node.input[1]]))
        if scale.size != 1 or channels is None or channels == 1:
            if scale.size == 1:  # ORT reads a one-element scale as a scalar: this layer will run int8
                log.warning("onnxruntime will quantize the weights of %s (kept in float) when it loads the model: "
                            "its input has %s channel(s) along axis 1", node.name, channels or "unknown")
            continue
        zero = (numpy_helper.to_array(consts[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in consts
                else np.zeros((), np.uint8))
        name = f"{node.name}__float_input"
        graph.initializer.extend([numpy_helper.from_array(np.full(channels, scale.item(), scale.dtype), f"{name}_scale"),
                                  numpy_helper.from_array(np.full(channels, zero.item(), zero.dtype), f"{name}_zero")])
        added.setdefault(dq.input[0], []).append(helper.make_node(
            "DequantizeLinear", [dq.input[0], f"{name}_scale", f"{name}_zero"], [name], name=f"{name}_dq", axis=1))
        node.input[0] = name
        changed.append(node.name)
    if not changed:
        return []
    ordered = []
    for node in graph.node:  # each copy right after the DequantizeLinear it copies: still in topological order
        ordered.append(node)
        if node.op_type == "DequantizeLinear":
            ordered.extend(added.pop(node.input[0], []))
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(path))
    return changed


def android_assets(artifact: Artifact, manifest: dict, folder: Path) -> None:
    """assets/: the model (and labels) as an Android app's app/src/main/assets/ takes them."""
    (folder / "assets").mkdir(exist_ok=True)
    shutil.copyfile(artifact.main_file, folder / "assets" / artifact.files[0].path)
    if manifest.get("labels"):
        shutil.copyfile(folder / manifest["labels"], folder / "assets" / manifest["labels"])


def is_transformer(path: Path, model_type: str) -> bool:
    if model_type != "auto":
        return model_type == "transformer"
    import onnx

    return any(n.op_type in ATTENTION_OPS for n in onnx.load(str(path)).graph.node)


def pre_process(quant_pre_process, source: Path, prepared: Path) -> str:
    """ORT's pre-processing (shape inference, graph optimisation) before quantization, with
    fallbacks: its symbolic shape inference crashes on some transformer exports (a TypeError in
    _infer_Expand on a BERT-style encoder), ONNX's own shape inference then serves, and a model
    that defeats both is quantized as exported. Returns which one ran."""
    attempts = (("symbolic", {}), ("onnx-shape-inference", {"skip_symbolic_shape": True}))
    for name, kwargs in attempts:
        try:
            quant_pre_process(str(source), str(prepared), **kwargs)
            return name
        except Exception:  # noqa: BLE001 - any failure of an optional step: try the next way
            prepared.unlink(missing_ok=True)
    shutil.copyfile(source, prepared)
    return "none"


def run_all(model: Path | bytes, calibration: CalibrationSet, samples: int = 128) -> list[np.ndarray]:
    """Every output on the first `samples` calibration samples (a file path or model bytes)."""
    ort = require("onnxruntime", "onnxruntime")
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    feeds = {i.name: calibration.inputs[i.name][:samples] for i in session.get_inputs()}
    if all(isinstance(d, int) for i in session.get_inputs() for d in i.shape):
        count = len(next(iter(feeds.values())))
        parts = [session.run(None, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(count)]
        return [np.concatenate(p) for p in zip(*parts)]
    return session.run(None, feeds)


def float_nodes(graph, tensor: str, producer) -> list[str]:
    """What to keep in float so that `tensor` is: the ops that compute on it and the op that made
    it (QDQ quantizes a Gemm's or a Relu's output on its own), never a shape op (a Reshape in
    float changes nothing)."""
    own = [producer.name] if producer is not None and producer.op_type not in DATA_MOVEMENT else []
    return sorted({*compute_consumers(graph, tensor), *own})


def compute_consumers(graph, tensor: str) -> list[str]:
    """The nodes that compute on `tensor`, looking through data-movement ops (Reshape, Transpose,
    ...) to the op that reads the data: keeping a Reshape in float changes nothing."""
    by_input: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    found, seen, todo = [], set(), [tensor]
    while todo:
        for node in by_input.get(todo.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in DATA_MOVEMENT:
                todo.extend(node.output)
            else:
                found.append(node.name)
    return sorted(found)


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


def with_weight_of(model, name: str, value: np.ndarray):
    """A copy of the float model in which only the initializer `name` is replaced by `value`."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return copy


def int8_weights(quant, consts: dict, producers: dict) -> dict[str, tuple[str, str, np.ndarray]]:
    """Per compute node of the int8 model: its op, its float weight's name and the weight as the
    int8 model holds it, dequantized (its own integers, scales and axis: exactly what runs)."""
    found = {}
    for node in quant.graph.node:
        weighted = node.op_type in (*REQUANTIZED_AT_LOAD, "MatMul") and len(node.input) > 1
        dq = producers.get(node.input[1]) if weighted else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in consts:
            continue
        q, scale = consts[dq.input[0]].astype(np.float32), consts[dq.input[1]].astype(np.float32)
        zero = consts[dq.input[2]].astype(np.float32) if len(dq.input) > 2 and dq.input[2] in consts else 0.0
        if scale.ndim == 1:  # per channel, along the DequantizeLinear's axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        value = (q - zero) * scale
        if f"{node.name}__smooth_scale" in consts:  # SmoothQuant scaled the rows up (smooth_matmuls): undo it
            value = value * consts[f"{node.name}__smooth_scale"].astype(np.float32)[:, None]
        found[node.name] = (node.op_type, dq.input[0].removesuffix("_quantized"), value)
    return found


def layer_sensitivity(float_path: Path, quant_path: Path, calibration: CalibrationSet, samples: int = 64) -> list[dict]:
    """For every activation the int8 model quantizes, and every weight: the model's output SQNR
    when only that tensor is quantized (with the scale and zero point calibration chose; a weight
    as the int8 model holds it). Ranked worst first: the tensor whose int8 form costs the output
    most. Weights matter: on EfficientNet-Lite0 the int8 weights alone cost as much top-1
    agreement as the whole int8 model (0.91), its activations almost none."""
    import onnx
    from onnx import numpy_helper

    require("onnxruntime", "onnxruntime")
    quant = onnx.load(str(quant_path))
    consts = {t.name: numpy_helper.to_array(t) for t in quant.graph.initializer}
    producers = {o: n for n in quant.graph.node for o in n.output}
    params = {}
    for node in quant.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts and node.input[1] in consts:
            zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] in consts else np.array(0, np.uint8)
            params[node.input[0]] = (consts[node.input[1]], zero)
    model = onnx.load(str(float_path))
    known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}

    def outputs(proto) -> list[np.ndarray]:
        return run_all(proto.SerializeToString(), calibration, samples)

    reference = outputs(model)
    results = []
    for name, (scale, zero) in params.items():
        if name not in known:
            continue
        producer = producers.get(name)
        results.append({
            "tensor": name, "op": producer.op_type if producer is not None else "input",
            "nodes": float_nodes(quant.graph, name, producer),  # names as quantize_static knows them
            "output_sqnr_db": worst_sqnr_db(reference, outputs(with_fake_quant(model, name, scale, zero))),
        })
    floats = {t.name for t in model.graph.initializer}
    for node, (op, weight, value) in int8_weights(quant, consts, producers).items():
        if weight in floats:  # the node (weight and input) stays float to undo it
            results.append({"tensor": weight, "op": f"{op} weight", "nodes": [node],
                            "output_sqnr_db": worst_sqnr_db(reference, outputs(with_weight_of(model, weight, value)))})
    return sorted(results, key=lambda r: r["output_sqnr_db"])

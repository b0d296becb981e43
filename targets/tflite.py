"""TFLite / LiteRT: two converters.

- litert-torch (default): PyTorch straight to .tflite, no TensorFlow. fp32; fp16 weights and
  dynamic-range int8 by ai-edge-quantizer on that file; static int8 by PT2E on the shared
  calibration set.
- onnx2tf + TensorFlow: the ONNX interchange file through a SavedModel and
  tf.lite.TFLiteConverter with a representative dataset from the same calibration set: fully
  integer models with int8 inputs and outputs (microcontrollers, NPUs, the Edge TPU).

Every artifact records the real layout of each tensor (source_axes) and, for int8 IO, its
scale and zero point, read back from the interpreter.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from edgeport.errors import ConfigError, ExportError, require
from edgeport.targets.base import (
    QuantizeRequest, SourceModel, Target, TargetOptions, declared_tensor, example_args, quiet,
)
from edgeport.types import Artifact, CalibrationSet, TensorSpec

# TensorFlow's C++ logging bypasses Python's streams; keep it quiet unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The file onnx2tf downloads for 4-D three-channel inputs unless it is in its working folder.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def interpreter(path: Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def onnx2tf_axes(rank: int) -> list[int] | None:
    """How onnx2tf lays out a tensor of this rank: 4-D images channels-last; other ranks as they
    are, because edgeport passes keep_shape_absolutely_input_names for them."""
    return [0, 2, 3, 1] if rank == 4 else None


def axes_between(source: list[int], found: list[int], expected: list[int] | None) -> list[int] | None:
    """The permutation taking the source shape to the converted tensor's shape (None = identity).
    A square shape cannot tell on its own, so the converter's known rule (`expected`) is tried first."""
    rank = len(source)
    identity = list(range(rank))
    candidates = [expected or identity, identity, [0, *range(2, rank), 1] if rank >= 3 else identity]
    for axes in candidates:
        if [source[a] for a in axes] == list(found):
            return None if axes == identity else axes
    raise ExportError(f"cannot tell how the converted shape {list(found)} relates to the model's {source}")


def signature(path: Path):
    """The model's (only) signature runner: its keys name inputs and outputs; tensor order does not."""
    it = interpreter(path)
    return it, it.get_signature_runner()


def signature_key(details: dict, spec: TensorSpec, position: int, prefix: str, path: Path) -> str:
    """The signature key of a source tensor: onnx2tf keeps the ONNX names (the user's); litert-torch
    numbers positional arguments and results (args_0, output_0) in the model's own order."""
    for key in (spec.name, f"{prefix}_{position}"):
        if key in details:
            return key
    raise ExportError(f"{path.name}: cannot tell which tensor of the converted model is {spec.name!r}; its signature "
                      f"names {', '.join(map(repr, details))}")


def read_specs(path: Path, source: SourceModel, channels_last: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs as the interpreter sees them, mapped to the source's tensors by
    signature name (never by tensor index: litert-torch numbers outputs in no useful order)."""
    _, runner = signature(path)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    if len(ins) != len(source.inputs) or len(outs) != len(source.outputs):
        raise ExportError(f"converted model has {len(ins)} inputs / {len(outs)} outputs; "
                          f"the source has {len(source.inputs)} / {len(source.outputs)}")

    def spec(key: str, detail: dict, src: TensorSpec) -> TensorSpec:
        shape = [int(d) for d in detail["shape"]]
        axes = axes_between(list(src.concrete_shape(1)), shape, onnx2tf_axes(len(shape)) if channels_last else None)
        scale, zero = detail["quantization"]
        dtype = np.dtype(detail["dtype"]).name
        layout = src.layout
        if axes is not None and len(shape) == 4:
            layout = "NHWC" if src.layout in ("NCHW", "none") else src.layout
        quantized = np.dtype(dtype).kind in "iu" and scale
        return TensorSpec(name=src.name, runtime_name=key if key != src.name else None, shape=shape, dtype=dtype,
                          layout=layout, scale=float(scale) if quantized else None,
                          zero_point=int(zero) if quantized else None, source_axes=axes,
                          source_dtype=src.dtype if dtype != src.dtype and not quantized else None)

    inputs = [spec(k, ins[k], s) for i, s in enumerate(source.inputs) if (k := signature_key(ins, s, i, "args", path))]
    outputs = [spec(k, outs[k], s) for i, s in enumerate(source.outputs)
               if (k := signature_key(outs, s, i, "output", path))]
    return inputs, outputs


LOG_NAME = "convert.log"


def litert_convert(source: SourceModel, path: Path, quant_config=None, module=None) -> None:
    litert_torch = require("litert_torch", "tflite")
    try:
        with quiet(path.parent / LOG_NAME):
            model = litert_torch.convert(module or source.module, example_args(source), quant_config=quant_config)
            model.export(str(path))
    except Exception as e:
        raise ExportError(f"litert-torch could not convert the model: {str(e).strip().splitlines()[-1]}") from e


def ai_edge_quantize(src: Path, dst: Path, recipe) -> None:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(src))
    if callable(recipe):
        recipe(q)
    else:
        q.load_quantization_recipe(recipe)
    with quiet(dst.parent / LOG_NAME):
        q.quantize().export_model(str(dst), overwrite=True)


def fp16_weights(q) -> None:
    from ai_edge_quantizer import qtyping, quantizer

    q.update_quantization_recipe(
        regex=".*", algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True,
        ),
    )


def pt2e_static_int8(source: SourceModel, calibration: CalibrationSet, path: Path, per_channel: bool) -> None:
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    args = example_args(source)
    with quiet(path.parent / LOG_NAME):
        graph = torch.export.export(source.module, args).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for feeds in calibration.samples():  # observers see every calibration sample
            prepared(*(torch.from_numpy(feeds[s.name]) for s in source.inputs))
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
    litert_convert(source, path, QuantConfig(pt2e_quantizer=quantizer), module=converted)


def onnx2tf_saved_model(source: SourceModel, calibration: CalibrationSet, work: Path) -> Path:
    """Run onnx2tf on a copy of the interchange file, offline, with real data for its layout checks."""
    work = work.resolve()  # onnx2tf runs with its working folder as cwd
    work.mkdir(parents=True, exist_ok=True)
    with quiet(work.parent / LOG_NAME):  # importing TensorFlow logs from C++
        onnx2tf = require("onnx2tf", "tflite-full-int8")
    onnx_copy = work / "model.onnx"  # a copy: onnx2tf rewrites its input in place
    static_onnx(source, onnx_copy)
    spell_for_onnx2tf(onnx_copy)
    data_args = []
    for spec in source.inputs:
        samples = calibration.inputs[spec.name][:20]
        if samples.ndim == 4:
            samples = samples.transpose(0, 2, 3, 1)  # onnx2tf takes image data in TF layout
        np.save(work / f"{spec.name}.npy", samples)
        data_args.append([spec.name, str(work / f"{spec.name}.npy")])
        if samples.ndim == 4 and samples.shape[-1] == 3:
            write_onnx2tf_sample(samples, work / ONNX2TF_SAMPLE)
    # onnx2tf runs onnxsim as a subprocess found on PATH: put this interpreter's bin first.
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env_path}"
    cwd = os.getcwd()
    try:
        os.chdir(work)  # where onnx2tf looks for its sample file
        with quiet(work.parent / LOG_NAME):
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_copy), output_folder_path=str(work / "saved_model"),
                batch_size=1, custom_input_op_name_np_data_path=data_args,
                keep_shape_absolutely_input_names=[s.name for s in source.inputs if len(s.shape) != 4] or None,
                copy_onnx_input_output_names_to_tflite=True, output_signaturedefs=True, non_verbose=True,
            )
    except SystemExit as e:  # onnx2tf calls sys.exit on errors
        raise ExportError(f"onnx2tf could not convert the model (exit {e.code}); its log: {work.parent / LOG_NAME}") from None
    except Exception as e:
        raise ExportError(f"onnx2tf could not convert the model: {str(e).strip().splitlines()[-1]}") from e
    finally:
        os.chdir(cwd)
        os.environ["PATH"] = env_path
    return work / "saved_model"


def static_onnx(source: SourceModel, path: Path) -> None:
    """The interchange file with batch 1. A dynamic batch leaves Shape/Slice/Concat chains around
    reshapes that onnx2tf mis-converts silently (cosine 0.14 on an attention block, 1.0 static)."""
    if not any(s.dynamic_batch for s in source.inputs):
        shutil.copyfile(source.onnx_path, path)
        return
    with quiet(path.parent.parent / LOG_NAME):
        source.export_static(path)


def spell_for_onnx2tf(path: Path) -> None:
    """Rewrite ops onnx2tf 1.28 converts wrongly into equivalent ones it handles: ReduceL2 with
    its axes as an input (opset 18+, the L2 normalisation every sentence encoder ends with)
    reaches tf.norm as a numpy integer, which TensorFlow refuses; Sqrt(ReduceSumSquare) is the same."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ReduceL2":
            squares = f"{node.output[0]}__sum_squares"
            nodes += [helper.make_node("ReduceSumSquare", list(node.input), [squares], name=f"{node.name}__sum_squares",
                                       **{a.name: helper.get_attribute_value(a) for a in node.attribute}),
                      helper.make_node("Sqrt", [squares], list(node.output), name=node.name)]
        else:
            nodes.append(node)
    if len(nodes) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))


def write_onnx2tf_sample(samples: np.ndarray, path: Path) -> None:
    """onnx2tf insists on a 20x128x128x3 image file for 3-channel models: make it from our own data."""
    reps = -(-20 // len(samples))
    images = np.concatenate([samples] * reps)[:20]
    h, w = images.shape[1:3]
    rows, cols = np.arange(128) * h // 128, np.arange(128) * w // 128
    np.save(path, images[:, rows][:, :, cols].astype(np.float32))


def tf_lite_convert(saved_model: Path, path: Path, calibration: CalibrationSet | None, source: SourceModel,
                    input_axes: list[list[int] | None]) -> None:
    with quiet(path.parent / LOG_NAME):
        tf = require("tensorflow", "tflite-full-int8")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is not None:
        def representative():
            # By input name: the converter orders a SavedModel's inputs its own way (alphabetically).
            for feeds in calibration.samples():
                yield {s.name: feeds[s.name].transpose(axes) if axes else feeds[s.name]
                       for s, axes in zip(source.inputs, input_axes)}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        with quiet(path.parent / LOG_NAME):
            path.write_bytes(converter.convert())
    except Exception as e:
        raise ExportError(f"TFLiteConverter failed: {str(e).strip().splitlines()[-1]}") from e


class TfliteOptions(TargetOptions):
    precisions: list[Literal["fp32", "fp16", "int8-dynamic", "int8", "full-int8"]] = ["fp32", "fp16", "int8", "full-int8"]
    converter: Literal["litert-torch", "onnx2tf"] = Field(
        "litert-torch", description="for fp32/fp16/int8-dynamic/int8; full-int8 always goes through onnx2tf"
    )
    per_channel: bool = True
    xnnpack: bool = Field(True, description="benchmark with the XNNPACK delegate (the default CPU path)")

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"xnnpack"})


class TfliteTarget(Target):
    """TFLite / LiteRT (XNNPACK on CPU)."""

    name = "tflite"
    extra = "tflite"
    runtime = "ai_edge_litert"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8", "full-int8")
    Options = TfliteOptions
    # older boards: the frozen tflite-runtime wheel (fp32 and int8 only, numpy 1)
    device_modules = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"))
    bundle_runtime: ClassVar[dict] = {"name": "ai-edge-litert", "min_version": "1.0", "pip": "ai-edge-litert>=1.0"}
    phone_benchmark = "benchmark_model"  # TFLite's own tool, when the phone has no Python

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: TfliteOptions,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        path = out_dir / "model.tflite"
        if options.converter == "litert-torch":
            litert_convert(source, path)
        else:
            if calibration is None:
                raise ConfigError("tflite converter onnx2tf needs calibration data to check its layout choices")
            saved = onnx2tf_saved_model(source, calibration, out_dir / "onnx2tf")
            tf_lite_convert(saved, path, None, source, [])
            shutil.rmtree(out_dir / "onnx2tf")
        if precision == "fp16":
            fp32 = out_dir / "fp32.tflite"
            path.rename(fp32)
            ai_edge_quantize(fp32, path, fp16_weights)
            fp32.unlink()
        elif precision != "fp32":
            raise ConfigError(f"tflite {precision} comes from quantize, not export")
        return self._artifact(source, path, precision, options.converter, channels_last=options.converter == "onnx2tf")

    def cache_extras(self, precision: str, options: TfliteOptions, calibration: CalibrationSet) -> dict:
        # onnx2tf checks its layout choices on real data: its fp32/fp16 files depend on that data
        return {"calibration": calibration.digest} if options.converter == "onnx2tf" else {}

    def quantize(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, precision: str,
                 out_dir: Path, options: TfliteOptions) -> Artifact:
        self.check_precision(precision)
        calibration = request.calibration
        path = out_dir / "model.tflite"
        per_channel = options.per_channel
        scheme: dict = {"samples": len(calibration)}
        if precision == "int8-dynamic":
            from ai_edge_quantizer import recipe

            ai_edge_quantize(float_artifact.main_file, path, recipe.dynamic_wi8_afp32())
            scheme = {"tool": "ai-edge-quantizer", "weights": "int8 per-channel", "activations": "float, int8 at run time"}
            converter = "litert-torch"
        elif precision == "int8":
            pt2e_static_int8(source, calibration, path, per_channel)
            scheme |= {"tool": "pt2e", "weights": f"int8 symmetric{' per-channel' if per_channel else ''}",
                       "activations": "int8 (HistogramObserver)"}
            converter = "litert-torch"
        else:  # full-int8
            saved = onnx2tf_saved_model(source, calibration, out_dir / "onnx2tf")
            tf_lite_convert(saved, path, calibration, source, [onnx2tf_axes(len(s.shape)) for s in source.inputs])
            shutil.rmtree(out_dir / "onnx2tf")
            scheme |= {"tool": "onnx2tf + TFLiteConverter", "weights": "int8 per-channel", "activations": "int8"}
            converter = "onnx2tf"
        artifact = self._artifact(source, path, precision, converter, channels_last=converter == "onnx2tf")
        artifact.options = {"quantization": scheme | {"io": sorted({s.dtype for s in artifact.inputs + artifact.outputs})}}
        return artifact

    def runtime_variants(self, options: TfliteOptions) -> list[dict]:
        return [{"xnnpack": options.xnnpack}]

    def bundle_extras(self, artifact: Artifact, manifest: dict, folder: Path) -> None:
        """The model as a 16-byte aligned C array (TFLite Micro, NDK apps), a C++ example that
        names this model's tensors, and assets/ for an Android app."""
        from edgeport.targets.onnxruntime import android_assets
        from edgeport.targets.tflite_bundle import c_array, cpp_example

        header, source = c_array("g_model", artifact.main_file.read_bytes())
        (folder / "model_data.h").write_text(header)
        (folder / "model_data.cc").write_text(source)
        (folder / "example.cc").write_text(cpp_example(manifest))
        android_assets(artifact, manifest, folder)

    def phone_inputs(self, artifact: Artifact, samples: dict[str, np.ndarray]) -> dict[str, bytes]:
        """benchmark_model's --input_layer_value_files: raw tensors by the interpreter's tensor names."""
        _, runner = signature(artifact.main_file)
        tensor_names = {key: d["name"] for key, d in runner.get_input_details().items()}
        return {tensor_names[s.key]: s.from_source(samples[s.name][:1]).tobytes() for s in artifact.inputs}

    @staticmethod
    def device_loader(path: str, threads: int, options: dict, shapes: dict) -> dict:
        try:
            from ai_edge_litert.interpreter import Interpreter
            import ai_edge_litert as lib
        except ImportError:  # older boards: the frozen tflite_runtime wheel
            from tflite_runtime.interpreter import Interpreter
            import tflite_runtime as lib
        kwargs = {"num_threads": threads}
        if options.get("xnnpack") is False:
            from ai_edge_litert.interpreter import OpResolverType

            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        interpreter = Interpreter(model_path=path, **kwargs)
        interpreter.allocate_tensors()
        # Tensors are named by the signature's keys (tensor indices follow no useful order).
        signature = interpreter.get_signature_runner()
        ins = {k: d["index"] for k, d in signature.get_input_details().items()}
        outs = {k: d["index"] for k, d in signature.get_output_details().items()}

        def set_inputs(feeds):
            for name, value in feeds.items():
                interpreter.set_tensor(ins[name], value)

        def invoke():
            interpreter.invoke()
            return {name: interpreter.get_tensor(index) for name, index in outs.items()}

        return {"version": getattr(lib, "__version__", "unknown"), "ran": {"xnnpack": options.get("xnnpack", True),
                "io": "bound once"}, "set_inputs": set_inputs, "invoke": invoke}

    @staticmethod
    def example_loader(path):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # older boards
            from tflite_runtime.interpreter import Interpreter
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        signature = interpreter.get_signature_runner()  # its keys are the runtime names in the manifest
        ins = {k: d["index"] for k, d in signature.get_input_details().items()}
        outs = {k: d["index"] for k, d in signature.get_output_details().items()}

        def run(feeds):
            for key, value in feeds.items():
                interpreter.set_tensor(ins[key], value)
            interpreter.invoke()
            return {key: interpreter.get_tensor(index) for key, index in outs.items()}

        return run

    def _artifact(self, source: SourceModel, path: Path, precision: str, converter: str, channels_last: bool) -> Artifact:
        artifact = self.new_artifact(precision, "tflite", [path.name], source, converter=converter)
        artifact.inputs, artifact.outputs = read_specs(path, source, channels_last)
        return artifact

    def declared(self, artifact: Artifact) -> dict:
        require("ai_edge_litert", "tflite")
        it, runner = signature(artifact.main_file)

        def tensor(key: str, detail: dict) -> dict:
            scale, zero = detail["quantization"]
            dtype = np.dtype(detail["dtype"]).name
            quantized = np.dtype(dtype).kind in "iu" and scale
            return declared_tensor(key, [int(d) for d in detail["shape"]], dtype, float(scale) if quantized else None,
                                   int(zero) if quantized else None)

        kinds = {np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
        numerics = "int8" if "int8" in kinds else ("float16" if "float16" in kinds else "float32")
        return {"inputs": [tensor(k, d) for k, d in runner.get_input_details().items()],
                "outputs": [tensor(k, d) for k, d in runner.get_output_details().items()], "numerics": numerics}

    def load(self, artifact: Artifact, threads: int):
        require("ai_edge_litert", "tflite")
        it = interpreter(artifact.main_file, threads)
        runner = it.get_signature_runner()
        ins = {k: d["index"] for k, d in runner.get_input_details().items()}
        outs = {k: d["index"] for k, d in runner.get_output_details().items()}

        class TfliteSession:
            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                for key, value in feeds.items():
                    it.set_tensor(ins[key], value)
                it.invoke()
                return {key: it.get_tensor(index).copy() for key, index in outs.items()}

        return TfliteSession()

"""ExecuTorch: PyTorch's own path to phones. torch.export -> XNNPACK-delegated `.pte` program; fp32,
static int8 (PT2E with the XNNPACK quantizer, calibrated on the shared set) and dynamic int8
(weights int8, activations quantized per call; convolutions stay float).

What the format does not carry, the artifact record does: a .pte has no tensor names, so inputs
and outputs are addressed by position, recorded as `in0`, `out0`, ... beside the user's names.
Measured with executorch 1.5.1 (torch 2.13.0, torchao 0.18):
- Example inputs must have standard strides (a numpy slice can carry a channels-last dim order
  that torch.export bakes into the program, which then fails on every normal input).
- Inputs live in the memory-planned arena and non-delegated ops reuse it: set them before every
  execute.
- The runtime's threadpool is process-wide; `_unsafe_reset_threadpool(n)` sets it before loading.
- Dynamic int8 of a convolution behind nn.ZeroPad2d lowers but fails at run time: convolutions stay
  float in dynamic mode, and every written program runs once before it is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from edgeport.errors import ExportError, first_line, require
from edgeport.targets.base import (
    QuantizeRequest, SourceModel, Target, TargetOptions, declared_tensor, quiet,
)
from edgeport.types import Artifact, CalibrationSet

LOG_NAME = "convert.log"
# ExecuTorch's ScalarType codes -> numpy dtype names.
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                11: "bool"}


class ExecuTorchOptions(TargetOptions):
    precisions: list[Literal["fp32", "int8", "int8-dynamic"]] = ["fp32", "int8"]
    per_channel: bool = Field(True, description="per-channel int8 weights (else one scale per tensor)")
    calibration_batch: int = Field(16, ge=1, description="samples per calibration call (a dynamic-batch graph "
                                   "is calibrated, then the batch-1 program lowered: 4x faster than one by one)")
    model_type: Literal["auto", "cnn", "transformer"] = Field(
        "auto", description="transformer: static int8 quantizes only Linear and Conv layers (an attention mask's "
                            "-10000 added in int8 ruins attention); auto: transformer when the ONNX export has "
                            "Softmax or LayerNormalization")


def contiguous(arrays) -> tuple:
    """Tensors with standard strides: torch.export records the example's dim order."""
    import torch

    return tuple(torch.as_tensor(np.asarray(a)).clone(memory_format=torch.contiguous_format) for a in arrays)


def zeros(source: SourceModel, batch: int = 1) -> tuple:
    return contiguous(np.zeros(s.concrete_shape(batch), s.dtype) for s in source.inputs)


def lower(exported_program, path: Path) -> dict:
    """XNNPACK takes every op it supports; the rest run on ExecuTorch's portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported_program, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    delegated = sum(1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    path.write_bytes(edge.to_executorch().buffer)
    return {"delegated_subgraphs": delegated}


def quantized_program(source: SourceModel, calibration: CalibrationSet, dynamic: bool, options: ExecuTorchOptions):
    """The model through PT2E with the XNNPACK quantizer: static ranges observed on the calibration
    set (in stacks of `calibration_batch`), or dynamic (computed per call, convolutions float)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=options.per_channel, is_dynamic=dynamic)
    if not dynamic and is_transformer(source, options.model_type):
        quantizer = XNNPACKQuantizer()
        for layer in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d):
            quantizer.set_module_type(layer, config)
    else:
        quantizer = XNNPACKQuantizer().set_global(config)
    if dynamic:
        for conv in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d):
            quantizer.set_module_type(conv, None)
    names = [s.name for s in source.inputs]
    step = 1 if dynamic else options.calibration_batch
    try:  # a graph with a dynamic batch takes stacks of samples
        batch = torch.export.Dim("batch", min=1, max=max(2, step))
        graph = torch.export.export(source.module, zeros(source, 2),
                                    dynamic_shapes=tuple({0: batch} for _ in names)).module()
    except Exception:  # noqa: BLE001 - a model that fixes its batch is calibrated one sample at a time
        graph, step = torch.export.export(source.module, zeros(source)).module(), 1
    prepared = prepare_pt2e(graph, quantizer)
    count = 1 if dynamic else len(calibration)  # dynamic ranges are computed per call: one pass suffices
    with torch.no_grad():
        for start in range(0, count, step):
            prepared(*contiguous(calibration.inputs[n][start:start + step] for n in names))
    return convert_pt2e(prepared)


def is_transformer(source: SourceModel, model_type: str) -> bool:
    if model_type != "auto":
        return model_type == "transformer"
    import onnx

    return any(n.op_type in ("Softmax", "LayerNormalization") for n in onnx.load(str(source.onnx_path)).graph.node)


class ExecuTorchTarget(Target):
    """ExecuTorch (.pte) with the XNNPACK delegate on CPU."""

    name = "executorch"
    extra = "executorch"
    runtime = "executorch"
    precisions = ("fp32", "int8", "int8-dynamic")
    Options = ExecuTorchOptions
    # torch + executorch on a device; executorch-numpy-runtime (Python >= 3.12) needs no torch
    device_modules = (("executorch", "executorch"), ("executorch_numpy_runtime", "executorch-numpy-runtime"))
    # a .pte made by 1.5.x runs on the 1.5 runtime and at least the next minor release
    bundle_runtime: ClassVar[dict] = {"name": "executorch", "min_version": "1.5.0", "pip": "executorch>=1.5,<1.7"}

    def export(self, source: SourceModel, precision: str, out_dir: Path, options: ExecuTorchOptions,
               calibration: CalibrationSet | None = None) -> Artifact:
        self.check_precision(precision)
        require("executorch", "executorch")
        import torch

        with quiet(out_dir / LOG_NAME), torch.no_grad():
            try:
                summary = lower(torch.export.export(source.module, zeros(source)), out_dir / "model.pte")
            except Exception as e:  # noqa: BLE001 - torch.export and the lowering raise many kinds
                raise ExportError(f"executorch could not export the model: {first_line(e)}") from e
        return self.finish(source, precision, out_dir, {"delegate": "xnnpack", **summary})

    def quantize(self, source: SourceModel, float_artifact: Artifact, request: QuantizeRequest, precision: str,
                 out_dir: Path, options: ExecuTorchOptions) -> Artifact:
        self.check_precision(precision)
        require("executorch", "executorch")
        import torch

        dynamic = precision == "int8-dynamic"
        with quiet(out_dir / LOG_NAME):
            try:
                converted = quantized_program(source, request.calibration, dynamic, options)
                with torch.no_grad():
                    summary = lower(torch.export.export(converted, zeros(source)), out_dir / "model.pte")
            except Exception as e:  # noqa: BLE001 - PT2E and the lowering raise many kinds
                raise ExportError(f"executorch int8 quantization failed: {first_line(e)}") from e
        scheme = {"tool": "pt2e + XNNPACKQuantizer", "weights": f"int8 symmetric{' per-channel' * options.per_channel}",
                  "activations": "int8, per call" if dynamic else "int8 (HistogramObserver)",
                  "layers": "all but convolutions" if dynamic else (
                      "Linear and Conv only" if is_transformer(source, options.model_type) else "all XNNPACK quantizes"),
                  "samples": 1 if dynamic else len(request.calibration)}
        return self.finish(source, precision, out_dir, {"delegate": "xnnpack", **summary}, {"quantization": scheme})

    def finish(self, source: SourceModel, precision: str, out_dir: Path, summary: dict, options: dict | None = None):
        """The record: positions as the runtime's names (a .pte has none); the program must run."""
        artifact = self.new_artifact(precision, "pte", ["model.pte"], source, options={**(options or {}),
                                                                                          "program": summary})
        for i, spec in enumerate(artifact.inputs):
            spec.runtime_name, spec.shape = f"in{i}", list(spec.concrete_shape(1))
        for i, spec in enumerate(artifact.outputs):
            spec.runtime_name, spec.shape = f"out{i}", list(spec.concrete_shape(1))
        artifact._root = out_dir
        try:  # some lowered graphs fail only when run (dynamic int8 of a padded convolution)
            self.load(artifact, 1).run({s.key: np.zeros(s.concrete_shape(1), s.dtype) for s in artifact.inputs})
        except Exception as e:  # noqa: BLE001 - the runtime's error, kept as the cause
            raise ExportError(f"executorch wrote {precision} model.pte but it does not run: {first_line(e)}") from e
        return artifact

    def load(self, artifact: Artifact, threads: int):
        require("executorch", "executorch")
        with quiet():  # the threadpool prints its cpuinfo probing on fd 2
            run = self.example_loader(artifact.main_file, threads)

        class EtSession:
            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return {k: np.array(v) for k, v in run(feeds).items()}

        return EtSession()

    def declared(self, artifact: Artifact) -> dict:
        """Shapes and dtypes from the program's method metadata. A .pte does not say its weights'
        number type without parsing the XNNPACK payload: numerics stay None (not checked)."""
        require("executorch", "executorch")
        from executorch.runtime import Runtime

        with quiet():
            meta = Runtime.get().load_program(str(artifact.main_file)).load_method("forward").metadata

        def tensor(name: str, info) -> dict:
            return declared_tensor(name, list(info.sizes()), SCALAR_TYPES.get(info.dtype(), str(info.dtype())))

        return {"inputs": [tensor(f"in{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())],
                "outputs": [tensor(f"out{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())],
                "numerics": None}

    def bundle_extras(self, artifact: Artifact, manifest: dict, folder: Path) -> None:
        shape = manifest["inputs"][0]["shape"]
        (folder / "example.cc").write_text(CPP_EXAMPLE % {"inputs": len(manifest["inputs"]), "size": int(np.prod(shape)),
                                                          "shape": ", ".join(map(str, shape))})

    @staticmethod
    def device_loader(path: str, threads: int, options: dict, shapes: dict) -> dict:
        import numpy as np

        names = sorted(shapes, key=lambda n: int(n[2:]))  # in0, in1, ...: a .pte takes inputs by position
        try:
            import executorch.extension.pybindings.portable_lib as lib  # links libtorch
            import torch
            from executorch.runtime import Runtime
            from executorch.version import __version__ as version

            if threads and lib._threadpool_get_thread_count() != threads:
                lib._unsafe_reset_threadpool(int(threads))
            method = Runtime.get().load_program(path).load_method("forward")._method
            ran = {"module": "executorch", "threads": lib._threadpool_get_thread_count(),
                   "io": "inputs set before each call (the arena reuses their memory)"}
            bound = []

            def set_inputs(feeds):
                bound[:] = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]

            def invoke():
                method.set_inputs(bound)
                method.execute()
                return {f"out{i}": o.numpy() for i, o in enumerate(method.get_outputs(clone_outputs=False))}
        except ImportError:  # a device without torch: executorch-numpy-runtime (Python >= 3.12)
            import executorch_numpy_runtime as en

            version = en.runtime_info()["executorch_version"]
            method = en.Runtime.get().load_program(path).load_method("forward")
            ran = {"module": "executorch_numpy_runtime", "threads": "every core (not settable)", "io": "per call"}
            bound = []

            def set_inputs(feeds):
                bound[:] = [np.ascontiguousarray(feeds[n]) for n in names]

            def invoke():
                return {f"out{i}": o for i, o in enumerate(method(bound))}

        return {"version": version, "ran": ran, "set_inputs": set_inputs, "invoke": invoke}

    @staticmethod
    def example_loader(path, threads=0):
        import executorch.extension.pybindings.portable_lib as lib
        import numpy as np
        import torch
        from executorch.runtime import Runtime

        if threads and lib._threadpool_get_thread_count() != threads:
            lib._unsafe_reset_threadpool(int(threads))  # process-wide: before loading
        method = Runtime.get().load_program(str(path)).load_method("forward")

        def run(feeds):  # a .pte takes inputs by position: in0, in1, ...
            ordered = [torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in sorted(feeds, key=lambda k: int(k[2:]))]
            return {f"out{i}": o.numpy() for i, o in enumerate(method.execute(ordered))}

        return run


CPP_EXAMPLE = """// Minimal ExecuTorch C++ example: load model.pte, run one input, read the first output.
// Link executorch, executorch_backend_xnnpack, executorch_kernels_optimized, executorch_kernels_quantized
// and executorch_threadpool with -Wl,--no-as-needed (backends and kernels register themselves when loaded).
// The program takes %(inputs)d input(s) by position, in manifest.json's order; the first is [%(shape)s].
#include <cstdio>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

using executorch::extension::from_blob;
using executorch::extension::module::Module;

int main() {
  Module module("model.pte");  // mmapped, loaded on first use
  std::vector<float> input(%(size)d);  // fill with the input's values (dtype and layout: manifest.json)
  auto tensor = from_blob(input.data(), {%(shape)s});  // int64 ids: from_blob(p, sizes, ScalarType::Long)
  auto result = module.forward(tensor);                 // several inputs: module.forward({t0, t1})
  if (!result.ok()) return 1;
  const float* out = result->at(0).toTensor().const_data_ptr<float>();
  std::printf("%%f\\n", out[0]);
  return 0;
}
"""

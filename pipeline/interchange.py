"""The ONNX interchange file: exported once with the dynamo exporter, self-contained, checked,
and stripped of metadata that holds local paths and stack traces."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from edgeport.errors import ExportError
from edgeport.pipeline.model_loading import LoadedModel, example_inputs

OPSET = 20  # 20 has Gelu; below it GELU decomposes to Erf, which TFLite lacks


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop doc strings and per-node metadata: the exporter stores stack traces with local paths there."""
    model.doc_string = ""
    del model.metadata_props[:]

    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        del graph.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)
        for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
            value.doc_string = ""
            del value.metadata_props[:]

    clean(model.graph)
    for function in model.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]


def export_onnx(model: LoadedModel, path: Path) -> None:
    """Write `path` (one file, no external data) from the torch module."""
    dynamic = any(s.dynamic_batch for s in model.inputs)
    # A batch of 2 keeps torch.export from specialising the dynamic dimension to 1.
    args = example_inputs(model.inputs, 2 if dynamic else 1)
    dynamic_shapes = (
        tuple({0: torch.export.Dim.DYNAMIC} if s.dynamic_batch else None for s in model.inputs) if dynamic else None
    )
    raw = path.with_name("raw.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                model.module, args, str(raw), dynamo=True, external_data=False, opset_version=OPSET,
                input_names=[s.name for s in model.inputs], output_names=[s.name for s in model.outputs],
                dynamic_shapes=dynamic_shapes, verbose=False,
            )
    except Exception as e:  # the exporter raises many kinds; keep the cause, name the step
        summary = next((ln for ln in str(e).splitlines() if "Error" in ln or "error" in ln), str(e).splitlines()[0])
        raise ExportError(f"ONNX export failed: {summary.strip()}") from e
    proto = onnx.load(str(raw))
    raw.unlink()
    strip_metadata(proto)
    proto.producer_name = "edgeport"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {str(e).splitlines()[0]}") from e
    onnx.save(proto, str(path))

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


def value_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph (and its subgraphs) defines or uses."""
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                names |= value_names(sub)
    return names


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename one value everywhere it appears, subgraphs included (they may read outer values)."""
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        for field in (node.input, node.output):
            for k, name in enumerate(field):
                if name == old:
                    field[k] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                rename_value(sub, old, new)


def name_io(proto: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Give the graph's inputs and outputs the user's names. An internal value that already has
    one of those names (the exporter names values after modules: an `embedding` module's output
    is called "embedding") is renamed first, so any valid user name works."""
    graph = proto.graph
    wanted = dict(zip([v.name for v in graph.input], inputs)) | dict(zip([v.name for v in graph.output], outputs))
    taken = value_names(graph)
    for old, new in wanted.items():
        if old == new:
            continue
        if new in taken:
            spare = next(f"{new}__{i}" for i in range(1, 1 << 30) if f"{new}__{i}" not in taken)
            rename_value(graph, new, spare)
            taken.add(spare)
        rename_value(graph, old, new)
        taken.add(new)


def export_onnx(model: LoadedModel, path: Path, static_batch: bool = False) -> None:
    """Write `path` (one file, no external data) from the torch module; its inputs and outputs
    carry the names the user gave. `static_batch` fixes a dynamic batch to 1 (onnx2tf needs it)."""
    dynamic = any(s.dynamic_batch for s in model.inputs) and not static_batch
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
                dynamic_shapes=dynamic_shapes, verbose=False,
            )
    except Exception as e:  # the exporter raises many kinds; keep the cause, name the step
        summary = next((ln for ln in str(e).splitlines() if "Error" in ln or "error" in ln), str(e).splitlines()[0])
        raise ExportError(f"ONNX export failed: {summary.strip()}") from e
    proto = onnx.load(str(raw))
    raw.unlink()
    strip_metadata(proto)
    name_io(proto, [s.name for s in model.inputs], [s.name for s in model.outputs])
    proto.producer_name = "edgeport"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {str(e).splitlines()[0]}") from e
    onnx.save(proto, str(path))

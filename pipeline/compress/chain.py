"""The [[compress]] steps as cached stages: each step's model is saved as a torch.export
program (.pt2) and measured (parameters, MACs, sizes, held-out accuracy, eager latency)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeport.pipeline.benchmark import BenchService
from edgeport.pipeline.compress import HANDLERS, CompressContext, compress
from edgeport.pipeline.compress.measure import macs, parameters, sizes
from edgeport.pipeline.config import ModelConfig
from edgeport.pipeline.model_loading import LoadedModel, load_model, save_program
from edgeport.metrics import accuracy
from edgeport.pipeline.verify import reference_outputs
from edgeport.pipeline.data import DataSets
from edgeport.pipeline.stages import code_hash
from edgeport.pipeline.workspace import Workspace
from edgeport.types import sha256_file


@dataclass
class Compressed:
    """The model every target exports after the [[compress]] steps, one report row per step, and
    the final program's path (loadable as a model source)."""

    model: LoadedModel
    rows: list[dict]
    path: Path | None


def step_code(step) -> str:
    """The hash of a step handler's module and of the modules it names in its `code` attribute."""
    handler = HANDLERS[type(step)]
    return code_hash(handler.__module__, *getattr(handler, "code", ()))


def learned_model(ws: Workspace, source_onnx: Path) -> tuple[Path | None, str | None]:
    """The QDQ model with learned int8 ranges that the last [[compress]] step wrote (QAT), if any
    (only the last step's: a later step changes the weights it was trained for), and why it is
    not used when it cannot stand in for the interchange export `source_onnx` (other input/output
    names or batch dimensions)."""
    import onnx

    from edgeport.pipeline.compress.qat import LEARNED

    if not ws.config.compress:
        return None, None
    path = ws.run_dir / "compress" / f"{len(ws.config.compress)}-{ws.config.compress[-1].method}" / LEARNED
    if not path.is_file():
        return None, None

    def io(file: Path) -> tuple[list[str], list[bool]]:
        graph = onnx.load(str(file)).graph
        dynamic = [bool(dims) and not dims[0].HasField("dim_value")
                   for dims in (v.type.tensor_type.shape.dim for v in graph.input)]
        return [v.name for v in [*graph.input, *graph.output]], dynamic

    (names, dynamic), (want_names, want_dynamic) = io(path), io(source_onnx)
    if names != want_names:
        return None, f"its inputs/outputs {names} are not the model's {want_names}"
    if dynamic != want_dynamic:
        return None, "its batch dimension is not the model's (dynamic vs fixed)"
    return path, None


def program_config(ws: Workspace, original: LoadedModel, path: Path) -> ModelConfig:
    """A model config that loads a saved step."""
    return ModelConfig(source=str(path.resolve()), inputs=ws.config.model.inputs,
                       output_names=[s.name for s in original.outputs])


def measure(ws: Workspace, original: LoadedModel, data: DataSets, bench: BenchService, scores: list[str],
            folder: Path) -> dict:
    """Size, MACs, accuracy and eager latency of the program in `folder` (a cached record)."""
    from edgeport.devices import local

    path = folder / "model.pt2"
    evaluation = data.evaluation
    request = bench.request(bench.profile("local"))
    key = {"model": sha256_file(path), "evaluation": evaluation.digest, "bench": request, "scores": scores,
           "runner": sha256_file(local.RUNNER), "versions": ws.versions,
           "code": code_hash("edgeport.pipeline.compress.chain", "edgeport.pipeline.torch_bench")}

    def compute() -> dict:
        module = torch.export.load(str(path)).module()
        raw, zipped = sizes(module)
        ref = reference_outputs(module, evaluation, ws.config.model.inputs, ws.config.verify.batch)
        timing = bench.torch_eager(program_config(ws, original, path).model_dump(mode="json"), Path("."),
                                   data.evaluation_file, 32)
        example = tuple(torch.zeros(s.concrete_shape(1), dtype=getattr(torch, s.dtype)) for s in ws.config.model.inputs)
        names = [s.name for s in original.outputs]
        acc = accuracy(ref[names.index(scores[0])], evaluation.labels) if scores else None
        return {"params": parameters(module), "macs": macs(module, example), "size_bytes": raw, "zip_bytes": zipped,
                "accuracy": acc, "p50_ms": timing["p50_ms"]}

    return ws.stages.record("compress", f"compress/{folder.name}.json", key, compute)


def compress_model(ws: Workspace, original: LoadedModel, data: DataSets, bench: BenchService,
                   scores: list[str]) -> Compressed:
    """Apply every configured step in order, each a cached stage measured before and after."""
    specs = ws.config.model.inputs
    calibration = data.calibration
    if not ws.config.compress:
        return Compressed(original, [], None)

    def save(module: torch.nn.Module, folder: Path) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            save_program(module, specs, folder / "model.pt2")  # what users and later stages load
        # The next step needs the real nn.Module (torch-pruning cannot prune an exported graph).
        # This pickle is edgeport's own cache in the run folder, like __pycache__; a model a user
        # hands in is never unpickled without --trust-model.
        torch.save(module, folder / "module.pt")

    folder = ws.stages.folder("compress", "compress/0-original", {"model": original.digest, "versions": ws.versions},
                              lambda d: save(original.module, d), lambda d: d)
    before = measure(ws, original, data, bench, scores, folder)
    rows = []
    for index, step in enumerate(ws.config.compress, 1):
        parent = folder / "module.pt"
        key = {"parent": sha256_file(folder / "model.pt2"), "step": step.model_dump(), "calibration": calibration.digest,
               "versions": ws.versions, "code": step_code(step)}

        def build(out: Path, step=step, parent=parent) -> None:
            module = torch.load(str(parent), weights_only=False)
            context = CompressContext(inputs=specs, calibration=calibration, teacher=original.module,
                                      base_dir=ws.config.base_dir, outputs=[s.name for s in original.outputs],
                                      class_scores=scores, out_dir=out)
            new, notes = compress(module, step, context)
            save(new, out)
            (out / "notes.json").write_text(json.dumps(notes, indent=2, default=str))

        folder = ws.stages.folder("compress", f"compress/{index}-{step.method}", key, build, lambda d: d)
        after = measure(ws, original, data, bench, scores, folder)
        notes = json.loads((folder / "notes.json").read_text())
        rows.append({"step": step.method, "config": step.model_dump(),
                     **{f"{k}_before": before[k] for k in before}, **{f"{k}_after": after[k] for k in after},
                     "notes": notes})
        before = after
    final = load_model(program_config(ws, original, folder / "model.pt2"), Path("."))
    return Compressed(final, rows, folder / "model.pt2")

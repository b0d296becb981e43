"""The [[compress]] steps as cached stages: each step's model is saved as a torch.export
program (.pt2) and measured (parameters, MACs, sizes, held-out accuracy, eager latency)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from edgeport.pipeline.compress import CompressContext, compress
from edgeport.pipeline.compress.measure import macs, parameters, sizes
from edgeport.pipeline.config import ModelConfig
from edgeport.pipeline.model_loading import LoadedModel, load_model, save_program
from edgeport.metrics import accuracy
from edgeport.pipeline.verify import reference_outputs
from edgeport.types import sha256_file


def program_config(job, path: Path) -> ModelConfig:
    """A model config that loads a saved step."""
    return ModelConfig(source=str(path.resolve()), inputs=job.config.model.inputs,
                       output_names=[s.name for s in job.original.outputs])


def measure(job, folder: Path) -> dict:
    """Size, MACs, accuracy and eager latency of the program in `folder` (a cached record)."""
    from edgeport.devices import local

    path = folder / "model.pt2"
    evaluation = job.data()[1]
    key = {"model": sha256_file(path), "evaluation": evaluation.digest, "bench": job.bench_settings(),
           "runner": sha256_file(local.RUNNER), "versions": job.versions}

    def compute() -> dict:
        module = torch.export.load(str(path)).module()
        raw, zipped = sizes(module)
        ref = reference_outputs(module, evaluation, job.config.model.inputs, job.config.verify.batch)
        request = {"model": program_config(job, path).model_dump(mode="json"), "base_dir": ".",
                   "samples": str((job.run_dir / "calibration" / "evaluation.npz").resolve()), "count": 32,
                   **job.bench_settings()}
        bench = local.run_json([sys.executable, "-m", "edgeport.pipeline.torch_bench"], request, 600)
        example = tuple(torch.zeros(s.concrete_shape(1), dtype=getattr(torch, s.dtype)) for s in job.config.model.inputs)
        return {"params": parameters(module), "macs": macs(module, example), "size_bytes": raw, "zip_bytes": zipped,
                "accuracy": scores_accuracy(job, ref, evaluation.labels),
                "p50_ms": bench["p50_ms"]}

    return job.stages.record("compress", f"compress/{folder.name}.json", key, compute)


def scores_accuracy(job, outputs: list, labels) -> float | None:
    scores = job.class_scores()
    if not scores:
        return None
    return accuracy(outputs[[s.name for s in job.original.outputs].index(scores[0])], labels)


def run_chain(job) -> tuple[LoadedModel, list[dict], Path]:
    """Apply every configured step in order; returns the final model, one report row per step,
    and the final program's path."""
    original = job.original
    specs = job.config.model.inputs
    calibration = job.data()[0]

    def save(module: torch.nn.Module, folder: Path) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            save_program(module, specs, folder / "model.pt2")  # what users and later stages load
        # The next step needs the real nn.Module (torch-pruning cannot prune an exported graph).
        # This pickle is edgeport's own cache in the run folder, like __pycache__; a model a user
        # hands in is never unpickled without --trust-model.
        torch.save(module, folder / "module.pt")

    def save_original(folder: Path) -> None:
        save(original.module, folder)

    folder = job.stages.folder("compress", "compress/0-original", {"model": original.digest, "versions": job.versions},
                               save_original, lambda d: d)
    before = measure(job, folder)
    rows = []
    for index, step in enumerate(job.config.compress, 1):
        parent = folder / "module.pt"
        key = {"parent": sha256_file(folder / "model.pt2"), "step": step.model_dump(), "calibration": calibration.digest,
               "versions": job.versions}

        def build(out: Path, step=step, parent=parent) -> None:
            module = torch.load(str(parent), weights_only=False)
            context = CompressContext(inputs=specs, calibration=calibration, teacher=original.module,
                                      base_dir=job.config.base_dir)
            new, notes = compress(module, step, context)
            save(new, out)
            (out / "notes.json").write_text(json.dumps(notes, indent=2, default=str))

        folder = job.stages.folder("compress", f"compress/{index}-{step.method}", key, build, lambda d: d)
        after = measure(job, folder)
        notes = json.loads((folder / "notes.json").read_text())
        rows.append({"step": step.method, "config": step.model_dump(),
                     **{f"{k}_before": before[k] for k in before}, **{f"{k}_after": after[k] for k in after},
                     "notes": notes})
        before = after
    final = load_model(program_config(job, folder / "model.pt2"), Path("."))
    return final, rows, folder / "model.pt2"

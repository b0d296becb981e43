"""Verification: does an export compute what the PyTorch model computed, on held-out data?"""

from __future__ import annotations

import numpy as np
import torch

from edgeport.errors import ExportError
from edgeport.metrics import accuracy, judge, output_metrics
from edgeport.targets.base import Session
from edgeport.types import Artifact, CalibrationSet, OutputMetrics, TensorSpec, VerifyReport


def batched(dataset: CalibrationSet, specs: list[TensorSpec], batch: int):
    """Feed dicts: `batch` samples at a time when every input has a dynamic batch dimension, else one."""
    size = batch if all(s.dynamic_batch for s in specs) else 1
    return dataset.batches(size)


def reference_outputs(module: torch.nn.Module, dataset: CalibrationSet, specs: list[TensorSpec], batch: int) -> list[np.ndarray]:
    from edgeport.pipeline.model_loading import as_list

    chunks: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for feeds in batched(dataset, specs, batch):
            outs = as_list(module(*(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs)))
            chunks.append([o.numpy() for o in outs])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def run_named(session: Session, artifact: Artifact, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One call: feeds by the user's input names in, outputs in the user's order and layout out.
    Every tensor is found by name through the artifact's record, never by position."""
    outs = session.run({a.key: a.from_source(feeds[a.name]) for a in artifact.inputs})
    missing = [a.key for a in artifact.outputs if a.key not in outs]
    if missing:
        raise ExportError(f"{artifact.label}: the runtime has no output {', '.join(map(repr, missing))} "
                          f"(it has {', '.join(map(repr, outs))}); the artifact record does not match its file")
    return [a.to_source(np.asarray(outs[a.key])) for a in artifact.outputs]


def session_outputs(session: Session, dataset: CalibrationSet, artifact: Artifact, batch: int) -> list[np.ndarray]:
    """Run the artifact on the dataset; outputs come back in the source layout and dtype."""
    chunks = [run_named(session, artifact, feeds) for feeds in batched(dataset, artifact.inputs, batch)]
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(artifact.outputs))]


def compare(
    artifact: Artifact, reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None,
    limits: dict, scores: list[str] = (),
) -> VerifyReport:
    """Metrics per output and the pass/fail verdict (the worst output decides); every failure
    names output, metric, value and limit. `scores` names the class-score outputs."""
    failures: list[str] = []
    warnings: list[str] = []
    per_output: list[OutputMetrics] = []
    for spec, ref, out in zip(artifact.outputs, reference, outputs):
        if ref.shape != out.shape:
            failures.append(f"output {spec.name!r}: shape {list(out.shape)} differs from PyTorch's {list(ref.shape)}")
            per_output.append(OutputMetrics(name=spec.name, samples=len(ref), max_abs=float("inf"), cosine=0.0,
                                            sqnr_db=-300.0))
            continue
        m = output_metrics(spec.name, ref, out, spec.name in scores)
        if m.centred:
            warnings.append(f"output {spec.name!r} hardly depends on the input (only {m.input_dependence:.2%} of it "
                            "varies from sample to sample): judged on that varying part")
        per_output.append(m)
    by_name = dict(zip([s.name for s in artifact.outputs], zip(reference, outputs)))
    scored = next((n for n in scores if n in by_name and by_name[n][0].shape == by_name[n][1].shape), None)
    ref_acc = accuracy(by_name[scored][0], labels) if scored else None
    acc = accuracy(by_name[scored][1], labels) if scored else None
    failures += judge(per_output, limits, acc, ref_acc)
    return VerifyReport(
        artifact_id=artifact.id, target=artifact.target, precision=artifact.precision, samples=len(reference[0]),
        outputs=per_output, accuracy=acc, reference_accuracy=ref_acc, scores_output=scored if ref_acc is not None else None,
        passed=not failures, failures=failures, warnings=warnings, tolerances={k: v for k, v in limits.items() if v is not None},
    )

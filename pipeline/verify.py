"""Verification: does an export compute what the PyTorch model computed, on held-out data?"""

from __future__ import annotations

import os

import numpy as np
import torch

from edgeport.errors import ExportError
from edgeport.metrics import Budget, accuracy, output_metrics
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
    limits: Budget, scores: list[str] = (),
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
    failures += limits.misses(per_output, acc, ref_acc)
    return VerifyReport(
        artifact_id=artifact.id, target=artifact.target, precision=artifact.precision, samples=len(reference[0]),
        outputs=per_output, accuracy=acc, reference_accuracy=ref_acc, scores_output=scored if ref_acc is not None else None,
        passed=not failures, failures=failures, warnings=warnings, tolerances=limits.limits,
    )


def verify(ws, artifact: Artifact, reference, data) -> VerifyReport:
    """The verify stage (cached): the artifact's outputs on the held-out set against PyTorch's,
    judged by the tolerance of its precision; an accuracy-aware int8 artifact also by its own
    budget, on calibration data (where its loop judged it) and on held-out data."""
    from edgeport import targets
    from edgeport.pipeline.stages import code_hash

    evaluation = data.evaluation
    tolerance = ws.config.verify.tolerance(artifact.precision)
    key = {"artifact": artifact.id, "files": [f.sha256 for f in artifact.files], "reference": reference.names,
           "io": [s.model_dump() for s in (*artifact.inputs, *artifact.outputs)], "scores": reference.class_scores,
           "evaluation": evaluation.digest, "tolerance": tolerance.model_dump(), "versions": ws.versions,
           "code": code_hash("edgeport.pipeline.verify", "edgeport.metrics", targets.info(artifact.target).path.split(":")[0])}

    def compute() -> dict:
        session = targets.get(artifact.target).load(artifact, os.cpu_count() or 1)  # not timed: every core
        outputs = session_outputs(session, evaluation, artifact, ws.config.verify.batch)
        report = compare(artifact, reference.outputs, outputs, evaluation.labels, tolerance, reference.class_scores)
        report.failures += accuracy_aware_misses(artifact, report)
        report.passed = not report.failures
        return report.model_dump()

    return VerifyReport.model_validate(ws.stages.record("verify", f"verify/{artifact.slug}.json", key, compute))


def accuracy_aware_misses(artifact: Artifact, report: VerifyReport) -> list[str]:
    """An accuracy-aware int8 artifact must meet its budget on calibration data (where the loop
    judged it) and on held-out data (where it matters); say so when it did not."""
    aware = artifact.options.get("quantization", {}).get("accuracy_aware")
    if not aware:
        return []
    budget = Budget(**{k: v for k, v in aware["budget"].items() if v is not None})
    misses = []
    if not aware["met"]:
        last = aware["steps"][-1]
        misses.append(f"accuracy-aware int8 did not meet {budget.limits} on calibration data with "
                      f"{len(aware['float_tensors'])} layer(s) in float (max_float_layers; worst output "
                      f"{last.get('worst_output')!r}, cosine {last['cosine']:.5f})")
    misses += [f"accuracy-aware budget missed on held-out data: {m}"
               for m in budget.misses(report.outputs, report.accuracy, report.reference_accuracy)]
    return misses

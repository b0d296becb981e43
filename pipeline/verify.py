"""Verification: does an export compute what the PyTorch model computed, on held-out data?"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgeport.pipeline.config import Tolerance
from edgeport.targets.base import Session
from edgeport.types import Artifact, CalibrationSet, OutputMetrics, TensorSpec, VerifyReport

SQNR_CAP_DB = 300.0  # identical outputs: report a large finite number (JSON has no infinity)


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


def session_outputs(session: Session, dataset: CalibrationSet, source_inputs: list[TensorSpec], artifact: Artifact,
                    batch: int) -> list[np.ndarray]:
    """Run the artifact on the dataset. Inputs go through the artifact's record (layout, int8
    scale and zero point) by position, outputs come back in the source layout as float."""
    chunks = []
    for feeds in batched(dataset, artifact.inputs, batch):
        outs = session.run({a.name: a.from_source(feeds[s.name]) for s, a in zip(source_inputs, artifact.inputs)})
        chunks.append([a.to_source(np.asarray(o)) for a, o in zip(artifact.outputs, outs)])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def metrics(name: str, ref: np.ndarray, out: np.ndarray) -> OutputMetrics:
    ref64, out64 = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    err = ref64 - out64
    denom = np.linalg.norm(ref64) * np.linalg.norm(out64)
    cosine = float(ref64 @ out64 / denom) if denom > 0 else float(np.array_equal(ref64, out64))
    noise = float(err @ err)
    sqnr = SQNR_CAP_DB if noise == 0 else min(SQNR_CAP_DB, 10 * math.log10(max(float(ref64 @ ref64), 1e-30) / noise))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float((ref.argmax(1) == out.argmax(1)).mean())
    return OutputMetrics(name=name, max_abs=float(np.abs(err).max()), cosine=cosine, sqnr_db=sqnr, top1_agreement=top1)


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or logits.ndim != 2:
        return None
    return float((logits.argmax(1) == labels).mean())


def compare(
    artifact: Artifact, reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None,
    tolerance: Tolerance,
) -> VerifyReport:
    """Metrics per output and the pass/fail verdict; every failure names output, metric, value and limit."""
    failures: list[str] = []
    per_output: list[OutputMetrics] = []
    for spec, ref, out in zip(artifact.outputs, reference, outputs):
        if ref.shape != out.shape:
            failures.append(f"output {spec.name!r}: shape {list(out.shape)} differs from PyTorch's {list(ref.shape)}")
            per_output.append(OutputMetrics(name=spec.name, max_abs=math.inf, cosine=0.0, sqnr_db=-SQNR_CAP_DB))
            continue
        m = metrics(spec.name, ref, out)
        per_output.append(m)
        checks = [
            ("cosine", m.cosine, tolerance.min_cosine, m.cosine < (tolerance.min_cosine or -2), "min_cosine"),
            ("SQNR", m.sqnr_db, tolerance.min_sqnr_db, m.sqnr_db < (tolerance.min_sqnr_db or -1e9), "min_sqnr_db"),
            ("max abs error", m.max_abs, tolerance.max_abs,
             tolerance.max_abs is not None and m.max_abs > tolerance.max_abs, "max_abs"),
            ("top-1 agreement", m.top1_agreement, tolerance.min_top1_agreement,
             m.top1_agreement is not None and tolerance.min_top1_agreement is not None
             and m.top1_agreement < tolerance.min_top1_agreement, "min_top1_agreement"),
        ]
        for metric, value, limit, failed, key in checks:
            if limit is not None and failed:
                failures.append(f"output {spec.name!r}: {metric} {value:.6g} outside {key} = {limit}")
    ref_acc = accuracy(reference[0], labels)
    acc = accuracy(outputs[0], labels) if per_output and reference[0].shape == outputs[0].shape else None
    if ref_acc is not None and acc is not None and tolerance.max_accuracy_drop is not None:
        drop = (ref_acc - acc) * 100
        if drop > tolerance.max_accuracy_drop:
            failures.append(
                f"accuracy {acc:.2%} is {drop:.2f} points below PyTorch's {ref_acc:.2%} "
                f"(max_accuracy_drop = {tolerance.max_accuracy_drop:g})"
            )
    return VerifyReport(
        artifact_id=artifact.id, target=artifact.target, precision=artifact.precision, samples=len(reference[0]),
        outputs=per_output, accuracy=acc, reference_accuracy=ref_acc, passed=not failures, failures=failures,
        tolerances=tolerance.model_dump(exclude_none=True),
    )

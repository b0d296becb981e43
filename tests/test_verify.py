"""Verification metrics and verdicts: a wrong export must fail, loudly and precisely."""

from __future__ import annotations

import numpy as np

from edgeport.pipeline.config import DEFAULT_TOLERANCES, Tolerance
from edgeport.pipeline.verify import compare, metrics
from edgeport.types import Artifact, TensorSpec


def artifact(precision="int8"):
    spec = TensorSpec(name="logits", shape=["batch", 10])
    return Artifact(id="x", target="onnxruntime", format="onnx", precision=precision, inputs=[spec], outputs=[spec])


def test_metrics_of_identical_outputs():
    ref = np.random.default_rng(0).standard_normal((100, 10)).astype(np.float32)
    m = metrics("y", ref, ref.copy())
    assert m.cosine > 0.999999 and m.max_abs == 0 and m.top1_agreement == 1.0 and m.sqnr_db == 300.0


def test_sqnr_of_known_noise():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(100_000)
    noisy = ref + rng.standard_normal(100_000) * 0.1  # noise power 1/100 of signal: 20 dB
    assert abs(metrics("y", ref, noisy).sqnr_db - 20.0) < 0.2


def test_a_shuffled_output_fails_with_output_metric_value_and_limit():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)).astype(np.float32)
    labels = ref.argmax(1)
    wrong = ref[:, ::-1].copy()  # e.g. a layout mix-up in the export
    report = compare(artifact(), [ref], [wrong], labels, DEFAULT_TOLERANCES["int8"])
    assert not report.passed
    assert any(f.startswith("output 'logits': cosine") and "outside min_cosine = 0.99" in f for f in report.failures)
    assert any("points below PyTorch's 100.00%" in f for f in report.failures)


def test_small_int8_noise_passes():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)).astype(np.float32) * 5
    out = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.05
    report = compare(artifact(), [ref], [out], ref.argmax(1), DEFAULT_TOLERANCES["int8"])
    assert report.passed, report.failures
    assert report.accuracy > 0.98


def test_shape_mismatch_is_a_failure():
    ref = np.zeros((4, 10), np.float32)
    report = compare(artifact(), [ref], [np.zeros((4, 9), np.float32)], None, Tolerance(min_cosine=0.9))
    assert not report.passed and "shape [4, 9] differs from PyTorch's [4, 10]" in report.failures[0]


def test_max_abs_limit_for_fp32():
    ref = np.ones((3, 10), np.float32)
    out = ref.copy()
    out[1, 2] += 0.5
    report = compare(artifact("fp32"), [ref], [out], None, DEFAULT_TOLERANCES["fp32"])
    assert not report.passed and "output 'logits': max abs error 0.5 outside max_abs = 0.001" in report.failures

"""Verification metrics and verdicts: a wrong export must fail, loudly and precisely, on every
output, and no global figure may hide a broken one."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.metrics import Budget, output_metrics
from edgeport.pipeline.config import DEFAULT_TOLERANCES, Tolerance
from edgeport.pipeline.verify import compare
from edgeport.types import Artifact, TensorSpec


def artifact(precision="int8", outputs=("logits",)):
    specs = [TensorSpec(name=n, shape=["batch", 10]) for n in outputs]
    return Artifact(id="x", target="onnxruntime", format="onnx", precision=precision, inputs=specs[:1], outputs=specs)


def limits(name: str) -> Budget:
    return DEFAULT_TOLERANCES[name]


def test_metrics_of_identical_outputs():
    ref = np.random.default_rng(0).standard_normal((100, 10)).astype(np.float32)
    m = output_metrics("y", ref, ref.copy(), scores=True)
    assert m.cosine > 0.999999 and m.cosine_min > 0.999999 and m.max_abs == 0 and m.sqnr_db == 300.0
    assert m.top1_agreement == 1.0 and not m.centred


def test_sqnr_of_known_noise():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1000, 100))
    noisy = ref + rng.standard_normal((1000, 100)) * 0.1  # noise power 1/100 of signal: 20 dB
    assert abs(output_metrics("y", ref, noisy, scores=False).sqnr_db - 20.0) < 0.2


def test_per_sample_cosine_finds_the_one_broken_sample():
    """A global cosine over all samples averages one ruined sample away; the worst sample does not."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10))
    out = ref.copy()
    out[17] = -ref[17]
    m = output_metrics("y", ref, out, scores=False)
    assert m.cosine_min < -0.99 and m.cosine > 0.98
    assert Budget(min_sample_cosine=0.9).misses([m])[0].startswith("output 'y': worst-sample cosine -1")


def test_a_constant_bias_cannot_hide_a_broken_output():
    """Outputs that barely depend on the input (an untrained net's bias): the global cosine is
    0.9999 for an artifact whose input-dependent part is noise; the centred one is not."""
    rng = np.random.default_rng(0)
    bias = np.linspace(5, 10, 10)
    signal = rng.standard_normal((300, 10)) * 0.02
    ref = bias + signal
    broken = bias + rng.standard_normal((300, 10)) * 0.02  # the input-dependent part is unrelated
    m = output_metrics("logits", ref, broken, scores=False)
    assert m.cosine_global > 0.9999
    assert m.centred and m.input_dependence < 0.01 and abs(m.cosine) < 0.2
    report = compare(artifact(), [ref], [broken], None, limits("int8"), scores=[])
    assert not report.passed and "(input-dependent part)" in report.failures[0]
    assert "hardly depends on the input" in report.warnings[0]


def test_top1_and_accuracy_only_for_class_score_outputs():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10))
    labels = ref.argmax(1)
    as_scores = compare(artifact(), [ref], [ref.copy()], labels, limits("int8"), scores=["logits"])
    assert as_scores.outputs[0].top1_agreement == 1.0 and as_scores.accuracy == 1.0
    as_embedding = compare(artifact(), [ref], [ref.copy()], labels, limits("int8"), scores=[])
    assert as_embedding.outputs[0].top1_agreement is None and as_embedding.accuracy is None


def test_the_worst_output_decides():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 10))
    good, bad = ref + rng.standard_normal(ref.shape) * 1e-3, rng.standard_normal((100, 10))
    report = compare(artifact(outputs=("h", "c")), [ref, ref], [good, bad], None, limits("int8"))
    assert not report.passed and len(report.failures) == 1 and report.failures[0].startswith("output 'c': cosine")
    assert report.summary()["worst_output"] == "c" and report.cosine == report.outputs[1].cosine


def test_a_shuffled_output_fails_with_output_metric_value_and_limit():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)).astype(np.float32)
    labels = ref.argmax(1)
    wrong = ref[:, ::-1].copy()  # e.g. a layout mix-up in the export
    report = compare(artifact(), [ref], [wrong], labels, limits("int8"), scores=["logits"])
    assert not report.passed
    assert any(f.startswith("output 'logits': cosine") and "outside min_cosine = 0.99" in f for f in report.failures)
    assert any("points below PyTorch's 100.00%" in f for f in report.failures)


def test_small_int8_noise_passes():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)).astype(np.float32) * 5
    out = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.05
    report = compare(artifact(), [ref], [out], ref.argmax(1), limits("int8"), scores=["logits"])
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
    report = compare(artifact("fp32"), [ref], [out], None, limits("fp32"))
    assert not report.passed and "output 'logits': max abs error 0.5 outside max_abs = 0.001" in report.failures


def test_confident_agreement_judges_the_predictions_pytorch_is_sure_of():
    # 60 samples with one clear winner (p ~ 0.97), 40 near-ties the artifact flips: plain agreement
    # misses 0.99, agreement on the confident samples meets it
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 10)) * 0.1
    ref[:60, 3] += 6.0
    ref[60:, 1:3] = [0.5, 0.49]
    out = ref.copy()
    out[60:, 2] += 0.02  # a rounding error big enough to flip a near-tie only
    m = output_metrics("logits", ref, out, scores=True)
    assert m.confident_samples == 60 and m.confident_top1_agreement == 1.0
    low, high = m.confident_top1_interval
    assert 0.93 < low < 0.95 and high > 0.9999  # 60 of 60: what 60 samples can tell
    assert m.top1_agreement == 0.6
    assert Budget(min_confident_top1_agreement=0.99).misses([m], strict=True) == []
    assert Budget(min_top1_agreement=0.99).misses([m], strict=True)
    # a flip among the confident samples counts
    out[0, 3] -= 10
    worse = output_metrics("logits", ref, out, scores=True)
    assert worse.confident_top1_agreement == 59 / 60
    assert Budget(min_confident_top1_agreement=0.99).misses([worse])[0].startswith(
        "output 'logits': top-1 agreement on confident samples 0.983333")


def test_confident_agreement_reads_probabilities_as_they_are():
    from edgeport.metrics import top_probability

    probs = np.array([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    assert np.allclose(top_probability(probs), [0.6, 0.4])  # not softmaxed again
    logits = np.log(probs) + 3.0
    assert np.allclose(top_probability(logits), [0.6, 0.4])


def test_a_confident_budget_with_no_confident_sample_is_a_miss_not_a_pass():
    flat = np.zeros((20, 10)) + np.arange(10) * 1e-3  # every sample a near-uniform distribution
    m = output_metrics("logits", flat, flat, scores=True)
    assert m.confident_samples == 0 and m.confident_top1_agreement is None
    assert Budget(min_confident_top1_agreement=0.9).misses([m], strict=True) == [
        "no confident top-1 agreement: no class-score output, or no sample PyTorch gives its top class a "
        "probability of 0.5 or more"]


def test_confident_agreement_only_for_one_vector_of_classes_per_sample():
    from edgeport.metrics import top_probability

    assert top_probability(np.zeros((4, 1))) is None  # one sigmoid logit: no class distribution
    assert top_probability(np.full((4, 3, 8, 8), 0.5)) is None  # a map of scores
    assert top_probability(np.zeros((4, 1, 5))).shape == (4,)  # [N, 1, C] is a vector of classes
    rows = np.array([[0.9, 0.1], [np.nan, 1.0], [3.0, 0.0]])  # a bad row does not turn the others into logits
    assert np.allclose(top_probability(rows), [0.9, 0.0, 1 / (1 + np.exp(-3.0))])
    m = output_metrics("mask", np.zeros((4, 1)), np.zeros((4, 1)), scores=True)
    assert m.confident_samples is None and m.confident_top1_agreement is None


def test_shortfall_ranks_by_the_limit_that_is_missed():
    m = output_metrics("logits", np.eye(10)[:5] * 8, np.eye(10)[:5] * 8, scores=True)
    m = m.model_copy(update={"top1_agreement": 1.0, "confident_top1_agreement": 0.97})
    both = Budget(min_top1_agreement=0.99, min_confident_top1_agreement=0.99)
    assert both.shortfall([m]) == pytest.approx(0.02)  # top-1 met; the confident limit decides
    assert Budget(min_top1_agreement=0.99).shortfall([m]) == 0.0

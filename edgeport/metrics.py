"""How close an artifact's outputs are to the PyTorch model's: one module for verification,
accuracy-aware int8 and search, so every one of them judges the same numbers the same way.

Per output: cosine per sample (mean and worst), SQNR, max abs error; when the reference hardly
varies with the input (a constant bias dominating it), the cosine and SQNR are taken on the
input-dependent part (outputs minus the reference's mean over samples), since a global figure
would then be near 1 for any artifact. Top-1 agreement and accuracy only for outputs that are
class scores. A budget holds limits on these; the worst output decides.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeport.types import OutputMetrics

SQNR_CAP_DB = 300.0  # identical outputs: a large finite number (JSON has no infinity)
# Below this share of its energy varying with the input, an output is judged on that varying part.
INPUT_DEPENDENCE_FLOOR = 0.01
# A prediction an app would act on: PyTorch gives its top class at least this probability.
CONFIDENT_PROBABILITY = 0.5
# The limits a search or an accuracy-aware int8 may be budgeted by; the first two need class scores.
BUDGET_KEYS = ("min_top1_agreement", "min_confident_top1_agreement", "max_accuracy_drop", "min_cosine")
SCORE_KEYS = BUDGET_KEYS[:2]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two arrays as flat vectors (1.0 when both are zero)."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return float(nx == ny)
    return float(x @ y / (nx * ny))


def sample_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The cosine of each sample's output with the reference's (sample axis first)."""
    x = np.asarray(ref, np.float64).reshape(len(ref), -1)
    y = np.asarray(out, np.float64).reshape(len(out), -1)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    both = nx * ny
    return np.where(both > 0, (x * y).sum(1) / np.where(both > 0, both, 1), (nx == ny).astype(np.float64))


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB, capped at SQNR_CAP_DB for identical outputs."""
    ref64 = np.asarray(ref, np.float64)
    noise = float(np.sum((ref64 - out) ** 2))
    if noise == 0:
        return SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10 * math.log10(max(float(np.sum(ref64**2)), 1e-30) / noise)))


def wilson_interval(agree: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share (agree of total): how much an agreement measured
    on this many samples can be trusted (300 samples at 0.99 could be 0.97 or 1.0)."""
    if total == 0:
        return 0.0, 1.0
    p = agree / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def top_probability(scores: np.ndarray) -> np.ndarray | None:
    """Each sample's top-class probability: the row itself when it already is a distribution
    (non-negative, summing to 1), else its softmax (logits); 0 for a row that is not finite. None
    unless each sample is one vector of two or more classes (a map or a single sigmoid logit has
    no such probability)."""
    x = np.asarray(scores, np.float64)
    classes = [d for d in x.shape[1:] if d != 1]
    if len(classes) != 1 or classes[0] < 2:
        return None
    x = x.reshape(len(x), classes[0])
    finite = np.isfinite(x).all(1)
    x = np.where(finite[:, None], x, 0.0)
    given = (x >= 0).all(1) & (np.abs(x.sum(1) - 1) <= 1e-3)
    softmax_top = 1 / np.exp(x - x.max(1, keepdims=True)).sum(1)  # the top class's exp is 1 after the shift
    return np.where(finite, np.where(given, x.max(1), softmax_top), 0.0)


def input_dependence(ref: np.ndarray) -> float:
    """Share of the reference's energy that varies from sample to sample (1 = all of it)."""
    ref64 = np.asarray(ref, np.float64).reshape(len(ref), -1)
    total = float(np.sum(ref64**2))
    if total == 0 or len(ref64) < 2:
        return 1.0
    return float(np.sum((ref64 - ref64.mean(0)) ** 2) / total)


def output_metrics(name: str, ref: np.ndarray, out: np.ndarray, scores: bool) -> OutputMetrics:
    """Every figure of one output; `scores` says whether it holds class scores (argmax = the class)."""
    ref, out = np.asarray(ref), np.asarray(out, np.float64)
    dependence = input_dependence(ref)
    centred = dependence < INPUT_DEPENDENCE_FLOOR
    judged_ref, judged_out = ref.astype(np.float64), out
    if centred:
        mean = judged_ref.mean(0, keepdims=True)
        judged_ref, judged_out = judged_ref - mean, judged_out - mean
    per_sample = sample_cosines(judged_ref, judged_out) if ref[0].size > 1 else None
    top1 = interval = confident_top1 = confident_interval = confident = None
    if scores:
        agrees = ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)
        top1, interval = int(agrees.sum()) / len(ref), list(wilson_interval(int(agrees.sum()), len(ref)))
        top = top_probability(ref)
        if top is not None:
            sure = top >= CONFIDENT_PROBABILITY
            confident = int(sure.sum())
            if confident:
                confident_top1 = float(agrees[sure].mean())
                confident_interval = list(wilson_interval(int(agrees[sure].sum()), confident))
    return OutputMetrics(
        name=name, samples=len(ref), max_abs=float(np.abs(ref - out).max()) if ref.size else 0.0,
        cosine=float(per_sample.mean()) if per_sample is not None else cosine(judged_ref, judged_out),
        cosine_min=float(per_sample.min()) if per_sample is not None else None,
        cosine_global=cosine(ref, out), sqnr_db=sqnr_db(judged_ref, judged_out), top1_agreement=top1,
        top1_interval=interval, confident_top1_agreement=confident_top1, confident_top1_interval=confident_interval,
        confident_samples=confident,
        input_dependence=dependence, centred=centred,
    )


def accuracy(scores: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Share of samples whose top class is the label."""
    if labels is None or scores.ndim != 2 or len(labels) != len(scores):
        return None
    return float((scores.argmax(1) == labels).mean())


class Budget(BaseModel):
    """Limits on how far an artifact may be from PyTorch: a verification tolerance, an
    accuracy-aware int8 goal and a search budget are all one of these. Every output is checked
    and the worst decides."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_cosine: float | None = Field(None, ge=-1, le=1, description="mean per-sample cosine of every output")
    min_sample_cosine: float | None = Field(None, ge=-1, le=1, description="the worst sample's cosine")
    min_sqnr_db: float | None = Field(None, le=300, description="dB; identical outputs score 300")
    max_abs: float | None = Field(None, ge=0)
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="a fraction, class-score outputs")
    min_confident_top1_agreement: float | None = Field(None, ge=0, le=1, description=(
        "top-1 agreement on the samples whose PyTorch top class has probability >= 0.5 (softmax of the "
        "scores unless they already are probabilities): the predictions an app would act on"))
    max_accuracy_drop: float | None = Field(None, ge=0, le=100, description="percentage points below PyTorch")

    @property
    def limits(self) -> dict:
        return self.model_dump(exclude_none=True)

    def describe(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.limits.items())

    def misses(self, outputs: list[OutputMetrics], accuracy_now: float | None = None,
               reference_accuracy: float | None = None, strict: bool = False) -> list[str]:
        """What misses a limit, one line each naming output, metric, value and limit. `strict` (a
        budget to meet, not a tolerance) also fails a limit nothing could be measured for: top-1
        agreement without a class-score output, an accuracy drop without labels."""
        failures = []
        if strict and self.min_top1_agreement is not None and all(m.top1_agreement is None for m in outputs):
            failures.append("no top-1 agreement: no output holds class scores (set model.class_scores)")
        if (strict and self.min_confident_top1_agreement is not None
                and all(m.confident_top1_agreement is None for m in outputs)):
            failures.append("no confident top-1 agreement: no class-score output, or no sample PyTorch gives "
                            f"its top class a probability of {CONFIDENT_PROBABILITY} or more")
        if strict and self.max_accuracy_drop is not None and accuracy_now is None:
            failures.append("no accuracy: the evaluation data has no labels for a class-score output")
        for m in outputs:
            for key, label, value in CHECKS:
                limit, v = getattr(self, key), getattr(m, value)
                if limit is None or v is None or not (v > limit if key == "max_abs" else v < limit):
                    continue
                part = " (input-dependent part)" if m.centred and key in ("min_cosine", "min_sample_cosine",
                                                                          "min_sqnr_db") else ""
                failures.append(f"output {m.name!r}: {label}{part} {v:.6g} outside {key} = {limit}")
        if self.max_accuracy_drop is not None and accuracy_now is not None and reference_accuracy is not None:
            points = (reference_accuracy - accuracy_now) * 100
            if points > self.max_accuracy_drop:
                failures.append(f"accuracy {accuracy_now:.2%} is {points:.2f} points below PyTorch's "
                                f"{reference_accuracy:.2%} (max_accuracy_drop = {self.max_accuracy_drop:g})")
        return failures

    def shortfall(self, outputs: list[OutputMetrics], accuracy_now: float | None = None,
                  reference_accuracy: float | None = None) -> float:
        """How far the first missed limit misses (0 when every limit is met), in that limit's own
        unit: ranks near misses."""
        for key in ("min_top1_agreement", "min_confident_top1_agreement", "max_accuracy_drop", "min_cosine",
                    "min_sample_cosine", "min_sqnr_db", "max_abs"):
            limit = getattr(self, key)
            if limit is None:
                continue
            if key == "max_accuracy_drop":
                if accuracy_now is None or reference_accuracy is None:
                    return 100.0
                short = max(0.0, (reference_accuracy - accuracy_now) * 100 - limit)
            else:
                values = [getattr(m, FIELDS[key]) for m in outputs if getattr(m, FIELDS[key]) is not None]
                if not values:
                    return 1.0
                worst = max(values) if key == "max_abs" else min(values)
                short = max(0.0, (worst - limit) if key == "max_abs" else (limit - worst))
            if short > 0:
                return short
        return 0.0

    def updated(self, other: Budget) -> Budget:
        """This budget with the limits `other` sets."""
        return self.model_copy(update=other.model_dump(exclude_unset=True))


CHECKS = [("min_cosine", "cosine", "cosine"), ("min_sample_cosine", "worst-sample cosine", "cosine_min"),
          ("min_sqnr_db", "SQNR", "sqnr_db"), ("max_abs", "max abs error", "max_abs"),
          ("min_top1_agreement", "top-1 agreement", "top1_agreement"),
          ("min_confident_top1_agreement", "top-1 agreement on confident samples", "confident_top1_agreement")]
FIELDS = {key: value for key, _, value in CHECKS}

"""Weight clustering (parameter sharing): k-means puts each layer's weights on `clusters` shared
values. Shapes and MACs do not change; what shrinks is the entropy of the weights, so every
exported file (ONNX, TFLite, OpenVINO IR) holds only the shared values and deflates far smaller,
and an int8 file built from it holds at most `clusters` codes per layer.

int8_grid: k-means runs on each output channel's weights in units of its symmetric int8 step
(w / s, s = max|w| / 127, so the values lie in [-127, 127]); the shared values are rounded to
integers and the extreme ones stay at +-127, so the channel keeps its scale s and a per-channel
int8 quantizer (ONNX Runtime, TFLite, NNCF all use max|w| / 127) maps each weight exactly to its
code. With granularity = "layer" the layer shares the codes and each channel scales them by its
own s; without int8_grid the layer shares the float values themselves.

fine_tune: distillation with each weight tied to its cluster: the trainable parameters are the
shared values (each gets the sum of its members' gradients; codes are rounded in the forward pass
with a straight-through gradient), so what was trained is exactly what is exported.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeport.errors import ConfigError
from edgeport.pipeline.compress.configs import Cluster
from edgeport.pipeline.compress.context import CompressContext, modules_named
from edgeport.pipeline.compress.int8sim import LAYERS, fold_batchnorm, weight_scale
from edgeport.pipeline.compress.measure import sizes

INT8_MAX = 127.0


def kmeans_1d(values: torch.Tensor, k: int, fixed: torch.Tensor | None = None,
              iterations: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) on each row of `values` [groups, n], deterministic: centroids start at k
    evenly spaced quantiles (values of the row, the extremes included; all of them when n <= k),
    then Lloyd steps until no assignment changes. In 1-D a cluster is a run of the sorted values,
    so a step costs O(k log n): boundaries by binary search, sums from prefix sums. `fixed`
    [groups, k] marks centroids that stay where they start. Returns (centroids [groups, k], sorted,
    and each value's centroid index [groups, n])."""
    values = values.double()
    ordered = values.sort(dim=1).values
    zero = torch.zeros(len(values), 1, dtype=values.dtype)
    prefix = torch.cat([zero, ordered.cumsum(1)], 1)
    at = (torch.linspace(0, 1, k, dtype=torch.float64) * (values.shape[1] - 1)).round().long()
    centroids = ordered[:, at].contiguous()
    fixed = torch.zeros_like(centroids, dtype=torch.bool) if fixed is None else fixed
    ends = torch.full((len(values), 1), values.shape[1], dtype=torch.long)
    previous = None
    for _ in range(iterations):
        bounds = torch.searchsorted(ordered, ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous(), right=True)
        bounds = torch.cat([torch.zeros_like(ends), bounds, ends], 1)  # cluster j: ordered[bounds[j]:bounds[j+1]]
        if previous is not None and torch.equal(bounds, previous):
            break
        count = (bounds[:, 1:] - bounds[:, :-1]).double()
        total = prefix.gather(1, bounds[:, 1:]) - prefix.gather(1, bounds[:, :-1])
        centroids = torch.where(fixed | (count == 0), centroids, total / count.clamp_min(1))
        previous = bounds
    return centroids, nearest(centroids, values)


def optimal_1d(values: torch.Tensor, k: int, step: float, low: float | None = None,
               high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal 1-D k-means of `values` (1-D) grouped in bins of width `step`: the best split of the
    sorted bins into <= k runs (least squares about each run's mean), by dynamic programming
    (as Ckmeans.1d.dp), O(k m^2) for m occupied bins. `low` / `high`: the centroid of the run holding
    the lowest / highest bin is held there. Returns (centroids [<= k], sorted; each value's index)."""
    values = values.double()
    bins, inverse = torch.unique(torch.round(values / step), return_inverse=True)
    m = len(bins)
    zero = torch.zeros(1, dtype=values.dtype)
    count, total, square = (torch.cat([zero, torch.zeros(m, dtype=values.dtype).index_add_(0, inverse, x).cumsum(0)])
                            for x in (torch.ones_like(values), values, values**2))
    i, j = torch.arange(m)[:, None], torch.arange(m)[None, :]  # the run of bins i..j
    n, s1, s2 = count[j + 1] - count[i], total[j + 1] - total[i], square[j + 1] - square[i]
    mean = s1 / n.clamp_min(1)
    if low is not None:
        mean[0, :] = low
    if high is not None:
        mean[:, m - 1] = high
    # [j, i], numpy: hundreds of small steps, where torch's thread pool costs more than the work
    cost = torch.where(j >= i, (s2 - 2 * mean * s1 + mean**2 * n).clamp_min(0), torch.inf).T.numpy()
    best, starts, rows = cost[:, 0], [], np.arange(m)
    for _ in range(1, min(k, m)):  # best[j]: bins 0..j in one more run than before, its last run starting at start[j]
        candidates = best[None, :-1] + cost[:, 1:]
        start = candidates.argmin(1)
        best = candidates[rows, start]
        starts.append(start + 1)
    first, end = [], m - 1
    for start in reversed(starts):
        first.append(int(start[end]))
        end = first[-1] - 1
    run = torch.zeros(m, dtype=torch.long)
    run[first] = 1
    run = run.cumsum(0)  # run of each bin
    bounds = torch.tensor([0, *sorted(first), m])
    centroids = mean[bounds[:-1], bounds[1:] - 1]
    return centroids, run[inverse]


def nearest(centroids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of each value's nearest centroid (centroids sorted along dim 1)."""
    bounds = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return torch.searchsorted(bounds.contiguous(), values.contiguous())


class Tied(nn.Module):
    """weight = scale * values[index], values = table / unit: a layer's weights tied to their shared
    values ([1 or channels, k]). The trainable table is in weight units (unit: the int8 step, or 1),
    so an optimizer's step size means the same as for ordinary weights. With int8 codes, the values
    are clamped to [-127, 127] and rounded (the gradient passes straight through) and the pinned
    +-127 stay, so every channel keeps its int8 scale."""

    def __init__(self, index: torch.Tensor, scale: torch.Tensor, unit: torch.Tensor, shape: torch.Size,
                 pinned: torch.Tensor | None):  # pinned: +-127 where a value stays, 0 elsewhere
        super().__init__()
        for name, value in (("index", index), ("scale", scale), ("unit", unit), ("pinned", pinned)):
            self.register_buffer(name, value)
        self.shape = shape

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        values = table / self.unit
        if self.pinned is not None:
            values = values.clamp(-INT8_MAX, INT8_MAX)
            values = torch.where(self.pinned != 0, self.pinned, values + (values.round() - values).detach())
        rows = values.expand(self.index.shape[0], -1).gather(1, self.index)
        return (rows * self.scale).reshape(self.shape)


def cluster_weight(weight: torch.Tensor, config: Cluster) -> tuple[Tied, torch.Tensor]:
    """(tie, table) for one layer's weight: tie(table) is the clustered weight. A layer's int8 codes
    are clustered optimally (optimal_1d over the 255 codes); float values and channels by Lloyd."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    scale = torch.ones(rows.shape[0], 1, dtype=rows.dtype)
    if config.int8_grid:  # in int8 steps: the values lie in [-127, 127], each channel's peak at +-127
        scale = weight_scale(rows)
        rows = rows / scale
    low = rows.amin(1) <= -INT8_MAX + 0.5  # with int8_grid, -127 / +127 stay: each channel keeps its scale
    high = rows.amax(1) >= INT8_MAX - 0.5
    if config.granularity == "layer" and config.int8_grid:  # the layer's codes: optimal over their <= 255 values
        pins = (-INT8_MAX if low.any() else None, INT8_MAX if high.any() else None)
        table, index = optimal_1d(rows.reshape(-1), config.clusters, 1.0, *pins)
        table, fixed = table[None], torch.zeros(1, len(table), dtype=torch.bool)
        fixed[0, 0], fixed[0, -1] = pins[0] is not None, pins[1] is not None
    else:
        groups = rows.reshape(1, -1) if config.granularity == "layer" else rows
        fixed = torch.zeros(len(groups), config.clusters, dtype=torch.bool)
        if config.int8_grid:
            fixed[:, 0], fixed[:, -1] = low, high
        table, index = kmeans_1d(groups, config.clusters, fixed)
    pinned = None
    if config.int8_grid:
        table = table.round().clamp(-INT8_MAX, INT8_MAX)
        index = nearest(table, rows.reshape(len(table), -1))
        pinned = torch.where(fixed, table, torch.zeros_like(table)).float()
    unit = scale.mean().reshape(1, 1) if config.granularity == "layer" else scale
    tie = Tied(index.reshape(rows.shape), scale.float(), unit.float(), weight.shape, pinned)
    return tie, (table * unit).float()


def unique_counts(weight: torch.Tensor) -> tuple[int, int]:
    """(distinct values in the layer, most distinct values in one output channel)."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    return int(torch.unique(rows).numel()), max(int(torch.unique(r).numel()) for r in rows)


def cluster(model: nn.Module, config: Cluster, context: CompressContext):
    ignored = set(map(id, modules_named(model, config.ignore, "cluster ignore")))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LAYERS) and id(m) not in ignored}
    if not layers:
        raise ConfigError("cluster: no Linear or Conv layer left to cluster")
    zip_before = sizes(model)[1]
    try:  # exporters fold BatchNorm, which would scale the shared values per channel: fold first
        folded = fold_batchnorm(model.eval())
    except ConfigError as e:  # the model does not trace: clustered as it is
        folded = f"batch norms not folded: {e}"
    report = {}
    for name, layer in layers.items():
        before = unique_counts(layer.weight)[0]
        tie, table = cluster_weight(layer.weight, config)
        parametrize.register_parametrization(layer, "weight", tie, unsafe=True)
        layer.parametrizations.weight.original = nn.Parameter(table)
        report[name] = {"unique_before": before}
    notes = {"granularity": config.granularity, "int8_grid": config.int8_grid, "clusters": config.clusters,
             "folded_batchnorms": folded}
    if config.fine_tune is not None:
        from edgeport.pipeline.compress.distill import distill

        notes["fine_tune"] = distill(model, config.fine_tune, context, what="cluster fine_tune")[1]
        model.zero_grad(set_to_none=True)  # the tables' gradients would stay on the weights they become
    for name, layer in layers.items():
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        after, per_channel = unique_counts(layer.weight)
        report[name].update(unique_after=after, unique_per_channel=per_channel)
    zip_after = sizes(model)[1]
    shared = "int8 codes per layer, scaled per channel" if config.int8_grid and config.granularity == "layer" else \
        f"values per {config.granularity}" + (" on the int8 grid" if config.int8_grid else "")
    notes.update(layers=report, weights_zip_bytes=[zip_before, zip_after],
                 note=f"weights clustered: at most {config.clusters} {shared}; every exported file holds only "
                      f"those values, so it deflates smaller (the weights {zip_before / zip_after:.1f}x)")
    return model.eval(), notes

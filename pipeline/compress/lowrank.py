"""Low-rank factorisation: a layer's weight W (out x in*k*k) becomes a product of rank r, two layers.

activation-aware (default, as SVD-LLM): with C the covariance of the layer's inputs on the
calibration data (centred, shrunk towards the identity where there are few samples per dimension,
see activations.Moments.covariance) and C = L L^T (Cholesky), the SVD of W L orders directions by
how much of the layer's input-dependent *output* they carry: truncating it to rank r leaves an
output error ||dW (X - mean)^T||_F equal to the tail of its singular values, and
W ~ U_r S_r V_r^T L^-1; the error the inputs' mean causes, dW mean, is constant and the bias takes
it back. The rank is the smallest one whose error, relative to the layer's input-dependent output,
meets the budget. Centring matters: a classifier's outputs share a large common part, against
which an error that flips the top class looks small. svd: the plain truncated SVD of W, ranked by
the weight's own singular values, with no data.

Linear and 1x1 Conv become two thinner ones; a kxk Conv becomes a kxk conv to r channels (same
stride, padding, dilation) then a 1x1 conv to the outputs, so both its parameters and its MACs
scale by r (in*k*k + out) / (out * in*k*k). A layer is only replaced when that is below 1.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edgeport.pipeline.compress.activations import input_moments
from edgeport.pipeline.compress.configs import LowRank
from edgeport.pipeline.compress.context import CompressContext, modules_named

RIDGE = 1e-4  # of the mean input energy, added to the covariance: inputs calibration never moved (dead ReLUs) stay bounded


def candidates(model: nn.Module, config: LowRank) -> dict[str, tuple[nn.Module, str, nn.Module]]:
    """{name: (parent, attribute, layer)} for the layers this config may factorise: Linear and Conv2d
    (groups = 1, numeric padding). A subclass with its own forward (e.g. a static "same" padding)
    qualifies only as a 1x1 stride-1 conv, where what its forward receives is what the kernel sees."""
    ignored = set(map(id, modules_named(model, config.ignore, "low-rank ignore")))
    found = {}
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) in ignored:
                continue
            pointwise = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and tuple(child.stride) == (1, 1)
            conv = (isinstance(child, nn.Conv2d) and child.groups == 1 and not isinstance(child.padding, str)
                    and (type(child) is nn.Conv2d or pointwise) and (config.convolutions == "all" or pointwise))
            if isinstance(child, nn.Linear) or conv:
                found[name] = (parent, child_name, child)
    return found


def whitening(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """Lower-triangular L with L L^T = moment + ridge (the ridge, a share of the inputs' mean
    energy `energy`, grows until Cholesky succeeds: inputs that never vary leave only rounding)."""
    eye = torch.eye(len(moment), dtype=moment.dtype)
    scale = max(energy, float(moment.diagonal().mean()), 1e-12)
    for ridge in (RIDGE, 1e-3, 1e-2, 1e-1):
        factor, info = torch.linalg.cholesky_ex(moment + ridge * scale * eye)
        if info == 0:
            return factor
    raise ValueError("the input covariance is not positive definite even with a 10% ridge")


def choose_rank(singular: torch.Tensor, rule: str, value: float, output_energy: float | None = None) -> int:
    """The smallest rank meeting the rule. For max_layer_error the tail energy of `singular`
    (the output error, squared) must stay below value^2 times the layer's output energy."""
    if rule == "rank_ratio":
        return max(1, math.ceil(value * len(singular)))
    power = singular**2
    if rule == "energy":
        kept = torch.cumsum(power, 0) / power.sum()
        return min(len(singular), int(torch.searchsorted(kept, torch.tensor(value, dtype=kept.dtype)).item()) + 1)
    tail = power.sum() - torch.cumsum(power, 0)  # tail[r - 1]: the error energy of rank r
    return min(len(singular), int((tail > value**2 * output_energy).sum().item()) + 1)


def factors(weight: torch.Tensor, rank: int, white: torch.Tensor | None):
    """(first [rank x in], second [out x rank], singular values) with second @ first ~ weight;
    the singular values split evenly between the two."""
    target = weight if white is None else weight @ white
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    first = vh[:rank]
    if white is not None:  # V_r^T L^-1: solve X L = V_r^T
        first = torch.linalg.solve_triangular(white, first, upper=False, left=False)
    root = s[:rank].sqrt()
    return root[:, None] * first, u[:, :rank] * root[None, :], s


def two_layers(layer: nn.Module, first: torch.Tensor, second: torch.Tensor,
               shift: torch.Tensor | None = None) -> nn.Sequential:
    """The layer itself with `rank` outputs and no bias (a copy: its own forward, stride, padding),
    then a Linear / 1x1 conv from `rank` to the layer's outputs with the layer's bias (+ `shift`)."""
    rank, bias = first.shape[0], layer.bias is not None or shift is not None
    a = copy.deepcopy(layer)
    a.weight = nn.Parameter(first.float().reshape(rank, *layer.weight.shape[1:]))
    a.bias = None
    if isinstance(layer, nn.Linear):
        a.out_features = rank
        b = nn.Linear(rank, layer.out_features, bias=bias)
        b.weight.data = second.float()
    else:
        a.out_channels = rank
        b = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
        b.weight.data = second.float()[:, :, None, None]
    if bias:
        b.bias.data = (layer.bias.detach().clone() if layer.bias is not None else torch.zeros(len(second))) + (
            0 if shift is None else shift.float())
    return nn.Sequential(a, b)


def low_rank(model: nn.Module, config: LowRank, context: CompressContext):
    rule, value = config.rank_rule()
    layers = candidates(model, config)
    aware = config.algorithm == "activation-aware"
    moments = input_moments(model, {n: c for n, (_, _, c) in layers.items()},
                            context.calibration_batches()) if aware else {}
    replaced, kept = {}, {}
    for name, (parent, attribute, layer) in layers.items():
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
        out_dim, in_dim = weight.shape
        covariance = moments[name].covariance() if aware else None
        white = whitening(covariance, moments[name].energy) if aware else None
        first, second, singular = factors(weight, min(out_dim, in_dim), white)
        output_energy = float(torch.einsum("oi,ij,oj->", weight, covariance, weight)) if aware else None
        rank = choose_rank(singular, rule, value, output_energy)
        if rank * (out_dim + in_dim) >= out_dim * in_dim:
            kept[name] = {"rank_needed": rank, "full_rank": len(singular)}  # factorising would not save parameters
            continue
        first, second = first[:rank], second[:, :rank]
        # the error the inputs' mean causes is the same for every input: the bias takes it back
        shift = (weight - second @ first) @ moments[name].mean if aware else None
        setattr(parent, attribute, two_layers(layer, first, second, shift))
        row = {"rank": rank, "full_rank": len(singular),
               "params": [out_dim * in_dim, rank * (out_dim + in_dim)]}
        if aware:  # the output error this layer adds on calibration inputs, relative (an upper bound)
            row["output_error"] = round(math.sqrt(float((singular[rank:] ** 2).sum()) / max(output_energy, 1e-30)), 5)
        replaced[name] = row
    return model.eval(), {"algorithm": config.algorithm, "rule": {rule: value}, "factorised": replaced,
                          "kept_whole": kept}

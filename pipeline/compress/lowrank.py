"""Low-rank factorisation: W (out x in) ~ U_r S_r V_r^T becomes two layers of rank r."""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeport.pipeline.compress.configs import LowRank
from edgeport.pipeline.compress.context import CompressContext


def choose_rank(singular: torch.Tensor, config: LowRank) -> int:
    if config.rank_ratio is not None:
        return max(1, math.ceil(config.rank_ratio * len(singular)))
    energy = torch.cumsum(singular**2, 0) / (singular**2).sum()
    return int(torch.searchsorted(energy, torch.tensor(config.energy, dtype=energy.dtype)).item()) + 1


def factorise(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) with second @ first ~ weight; the singular values split evenly."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def low_rank(model: nn.Module, config: LowRank, context: CompressContext):
    replaced = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name in config.ignore:
                continue
            is_1x1 = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1
            if not (isinstance(child, nn.Linear) or is_1x1):
                continue
            weight = child.weight.detach().reshape(child.weight.shape[0], -1).double()
            out_dim, in_dim = weight.shape
            rank = choose_rank(torch.linalg.svdvals(weight), config)
            if rank * (out_dim + in_dim) >= out_dim * in_dim:
                continue  # factorising would not save parameters
            first, second = factorise(weight, rank)
            bias = child.bias is not None
            if is_1x1:
                a, b = nn.Conv2d(in_dim, rank, 1, bias=False), nn.Conv2d(rank, out_dim, 1, bias=bias)
                a.weight.data, b.weight.data = first.float()[:, :, None, None], second.float()[:, :, None, None]
            else:
                a, b = nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim, bias=bias)
                a.weight.data, b.weight.data = first.float(), second.float()
            if bias:
                b.bias.data = child.bias.detach().clone()
            setattr(parent, child_name, nn.Sequential(a, b))
            replaced[name] = {"rank": rank, "full_rank": min(out_dim, in_dim)}
    return model.eval(), {"factorised": replaced}

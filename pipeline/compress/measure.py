"""What a compression step bought: parameters, MACs (counted by torch's FLOP counter), sizes raw and zipped."""

from __future__ import annotations

import io

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeport.types import deflated


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*example)
    return counter.get_total_flops() // 2


def sizes(model: torch.nn.Module) -> tuple[int, int]:
    """(raw, zip-deflated) bytes of the weights: zeros from unstructured pruning shrink only the second."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return len(raw), deflated(raw)

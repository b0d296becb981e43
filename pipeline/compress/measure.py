"""What a compression step bought: parameters, MACs (counted by torch's FLOP counter), sizes raw and zipped."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


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


def deflated(*members: bytes) -> int:
    """Bytes of `members` in one zip archive (deflate, level 9): what a download or an app store ships."""
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i, data in enumerate(members):
            z.writestr(str(i), data)
    return len(packed.getvalue())


def zip_bytes(*paths: Path) -> int:
    """Zip-deflated size of a model's files (clustered or sparse weights shrink it; raw size does not show it)."""
    return deflated(*(Path(p).read_bytes() for p in paths))

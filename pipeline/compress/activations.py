"""What a layer sees: the second moment X^T X of its inputs on the calibration data, collected
with forward hooks. For a convolution X holds the input patches (unfolded), so X W^T is the
layer's output without bias and ||dW X^T|| is exactly the output error a weight change causes."""

from __future__ import annotations

import torch
from torch import nn


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by weight.reshape(out, -1).T: [rows, in * kernel]."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.padding_mode != "zeros":
        x = nn.functional.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    cols = nn.functional.unfold(x, module.kernel_size, module.dilation, padding, module.stride)  # [N, C*kh*kw, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_moments(model: nn.Module, layers: dict[str, nn.Module], batches) -> dict[str, torch.Tensor]:
    """{name: X^T X (float64, [in * kernel, in * kernel])} over every calibration batch, for Linear
    and Conv2d (groups = 1, string padding excepted) layers of the unchanged model."""
    moments: dict[str, torch.Tensor] = {}

    def hook(name):
        def collect(module, args):
            rows = patches(module, args[0].detach().float())
            gram = (rows.T @ rows).double()
            moments[name] = moments[name] + gram if name in moments else gram
        return collect

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for args in batches:
                model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return moments

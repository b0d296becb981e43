"""What a layer sees: the mean and covariance of its inputs on the calibration data, collected
with forward hooks. For a convolution X holds the input patches (unfolded), so X W^T is the
layer's output without bias and ||dW X^T|| is exactly the output error a weight change causes;
the part of it from the inputs' mean is a constant a bias can take back."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Moments:
    gram: torch.Tensor  # X^T X, float64 [in * kernel, in * kernel]
    total: torch.Tensor  # the sum of the rows of X
    count: int  # rows
    samples: int  # calibration samples (a conv has one row per position: they are not independent)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def energy(self) -> float:
        """The inputs' mean square, over rows and dimensions."""
        return float(self.gram.diagonal().mean()) / max(self.count, 1)

    @property
    def centred(self) -> torch.Tensor:
        """(X - mean)^T (X - mean): what the input-dependent part of the output is made of."""
        return self.gram - torch.outer(self.total, self.mean)

    def covariance(self) -> torch.Tensor:
        """The inputs' covariance, shrunk towards a multiple of the identity by the oracle
        approximating shrinkage (Chen et al. 2010), counting calibration samples, not rows (a conv's
        positions are far from independent): with few samples per dimension (a classifier after
        global pooling sees one row per sample) the raw estimate spans only the calibration samples,
        and a rank fitted to it does not carry over to other inputs. Shrinking makes the output
        error it predicts larger than on the calibration data itself, closer to held-out data."""
        sample = self.centred / max(self.count, 1)
        d, n = len(sample), self.samples
        trace, trace_sq = float(sample.trace()), float((sample * sample).sum())
        denominator = (n + 1 - 2 / d) * (trace_sq - trace**2 / d)
        shrink = 1.0 if denominator <= 0 else min(1.0, ((1 - 2 / d) * trace_sq + trace**2) / denominator)
        return (1 - shrink) * sample + shrink * trace / d * torch.eye(d, dtype=sample.dtype)


def input_moments(model: nn.Module, layers: dict[str, nn.Module], batches) -> dict[str, Moments]:
    """{name: Moments} over every calibration batch, for Linear and Conv2d (groups = 1, string
    padding excepted) layers of the unchanged model."""
    moments: dict[str, Moments] = {}

    def hook(name):
        def collect(module, args):
            rows = patches(module, args[0].detach().float())
            gram, total, seen = (rows.T @ rows).double(), rows.double().sum(0), moments.get(name)
            batch = len(args[0])
            moments[name] = (Moments(gram, total, len(rows), batch) if seen is None else
                             Moments(seen.gram + gram, seen.total + total, seen.count + len(rows), seen.samples + batch))
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

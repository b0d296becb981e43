"""Empirical bias correction (Nagel et al. 2019, section 4.2): int8 shifts the mean of a layer's
output; measure that shift per channel on calibration data and take it out of the bias.

One pass over the calibration batch with the float model records each layer's mean output per
channel. A second pass runs the model as int8 sees it: each layer, in execution order, computes its
output with its weights on the runtime's grid from its (uint8-quantized) input, and its bias is moved
by the difference of the means before the output flows on, so every later layer sees the corrected
upstream. The weights stay float (every runtime quantizes them to the same grid)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from edgeport.pipeline.compress.configs import BiasCorrection
from edgeport.pipeline.compress.context import CompressContext
from edgeport.pipeline.compress.int8sim import (
    calibration_inputs, fake_quant_input, fold_batchnorm, layers_in_order, on_grid,
)


def channel_axis(module: nn.Module, y: torch.Tensor) -> int:
    return y.dim() - 1 if isinstance(module, nn.Linear) else 1


def channel_mean(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the channel axis (1 for conv maps, last for linear outputs)."""
    axis = channel_axis(module, y)
    return y.double().mean(tuple(d for d in range(y.dim()) if d != axis))


@torch.no_grad()
def bias_correction(model: nn.Module, config: BiasCorrection, context: CompressContext):
    model = model.eval()
    folded = fold_batchnorm(model)
    inputs = calibration_inputs(context, config.samples)
    layers = layers_in_order(model, inputs, config.ignore, "bias-correction")

    reference, hooks = {}, []

    def record(name, module, output):
        reference.setdefault(name, channel_mean(module, output))

    for name, module in layers:
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: record(name, m, o)))
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()

    shifts, busy = {}, set()

    def int8_layer(name, module, args, output):
        if name in busy:  # the functional call below runs this hook again
            return None
        x = fake_quant_input(args[0]) if config.quantize_inputs else args[0]
        params = {"weight": on_grid(module.weight)}
        if module.bias is not None:
            params["bias"] = module.bias
        busy.add(name)
        try:
            y = functional_call(module, params, (x,))
        finally:
            busy.discard(name)
        delta = (reference[name] - channel_mean(module, y)).to(y.dtype)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=module.weight.dtype))
        module.bias.add_(delta)
        shifts[name] = float(delta.abs().mean())
        shape = [1] * y.dim()
        shape[channel_axis(module, y)] = -1
        return y + delta.reshape(shape)

    hooks = [module.register_forward_hook(lambda m, a, o, name=name: int8_layer(name, m, a, o))
             for name, module in layers]
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    worst = max(shifts, key=shifts.get, default=None)
    return model, {"folded_batchnorm": len(folded), "corrected": len(shifts), "samples": len(inputs[0]),
                   "mean_abs_shift": sum(shifts.values()) / max(len(shifts), 1),
                   "largest_shift": {worst: shifts[worst]} if worst else {}}

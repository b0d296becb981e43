"""AdaRound (Nagel et al. 2020): rounding each weight to the nearest int8 level is not the best
choice for the layer's output. Per conv/linear, in execution order, learn a soft rounding
h in [0, 1] per weight (w = (floor(w/s) + h) * s) that makes the layer's output on its int8 input
(earlier layers already rounded) match the float layer's output on the float model's input, with an
annealed term that drives every h to 0 or 1; then round hard.

The scale s = max|w_c| / 127 per output channel is the runtimes' own, and the weight(s) at +-max keep
their value, so that scale does not move: a runtime's per-channel quantization of the result gives
back exactly the learned integers. Each step works on a random spatial window of a few samples'
layer inputs, which keeps a layer to seconds."""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn
from torch.func import functional_call

from edgeport.pipeline.compress.configs import AdaRound
from edgeport.pipeline.compress.context import CompressContext
from edgeport.pipeline.compress.int8sim import (
    calibration_inputs, fake_quant_input, fold_batchnorm, layer_input, layers_in_order, weight_scale,
)

GAMMA, ZETA = -0.1, 1.1  # the rectified sigmoid's stretch


def soft_rounding(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def windows(x_float: torch.Tensor, x_int8: torch.Tensor, batch: int, crop: int, generator: torch.Generator):
    """The same random samples (and spatial window) of both inputs."""
    index = torch.randint(0, len(x_float), (batch,), generator=generator)
    a, b = x_float[index], x_int8[index]
    if crop and a.dim() >= 3 and all(size > crop for size in a.shape[2:]):
        slices = [slice(None), slice(None)]
        for size in a.shape[2:]:
            start = int(torch.randint(0, size - crop + 1, (1,), generator=generator))
            slices.append(slice(start, start + crop))
        a, b = a[tuple(slices)], b[tuple(slices)]
    return a, b


def learn_rounding(module: nn.Module, x_float: torch.Tensor, x_int8: torch.Tensor, config: AdaRound,
                   generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """The layer's weight on the int8 grid with learned rounding, and the share of weights rounded
    differently from nearest."""
    weight = module.weight.detach()
    scale = weight_scale(weight)
    exact = weight / scale
    floor = torch.floor(exact)
    rest = exact - floor
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA).clamp_min(1e-6) - 1).clamp(-8, 8))
    optimiser = torch.optim.Adam([v], lr=config.lr)
    bias = {"bias": module.bias.detach()} if module.bias is not None else {}
    linear = isinstance(module, nn.Linear)
    if linear:  # rows of features, whatever the leading dimensions
        x_float, x_int8 = x_float.reshape(-1, x_float.shape[-1]), x_int8.reshape(-1, x_int8.shape[-1])
    warm = int(config.warmup * config.iterations)
    for step in range(config.iterations):
        a, b = windows(x_float, x_int8, config.batch * (64 if linear else 1), config.crop, generator)
        with torch.no_grad():
            target = functional_call(module, {"weight": weight, **bias}, (a,))
        h = soft_rounding(v)
        soft = torch.clamp(floor + h, -127, 127) * scale
        out = functional_call(module, {"weight": soft, **bias}, (b,))
        loss = (out - target).pow(2).sum(-1 if linear else 1).mean()
        if step >= warm and config.regularization:
            progress = (step - warm) / max(config.iterations - warm, 1)
            beta = 2 + 0.5 * (20 - 2) * (1 + math.cos(math.pi * progress))  # 20 -> 2
            # the floor keeps |2h-1|^beta out of denormal floats, which are 100x slower on a CPU
            loss = loss + config.regularization * (1 - (2 * h - 1).abs().clamp_min(0.05).pow(beta)).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learned = floor + (v.detach() >= 0).to(weight.dtype)
    nearest = torch.round(exact)
    peak = exact.abs() >= 127 - 1e-3  # the channel's max keeps its value: the runtime's scale stays s
    learned = torch.clamp(torch.where(peak, nearest, learned), -127, 127)
    return learned * scale, float((learned != nearest).float().mean())


def adaround(model: nn.Module, config: AdaRound, context: CompressContext):
    model = model.eval()
    folded = fold_batchnorm(model)
    reference = copy.deepcopy(model)  # the float model, for the targets
    inputs = calibration_inputs(context, config.samples)
    layers = layers_in_order(model, inputs, config.ignore, "adaround")
    float_layers = dict(reference.named_modules())
    generator = torch.Generator().manual_seed(config.seed)
    per_layer, started = {}, time.perf_counter()
    for name, module in layers:
        t0 = time.perf_counter()
        x_float = layer_input(reference, float_layers[name], inputs)
        x_int8 = layer_input(model, module, inputs)
        if config.quantize_inputs:
            x_int8 = fake_quant_input(x_int8)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # each step is small: on a busy machine two threads are 10x slower than one
        try:
            with torch.enable_grad():
                weight, flipped = learn_rounding(module, x_float, x_int8, config, generator)
        finally:
            torch.set_num_threads(threads)
        with torch.no_grad():
            module.weight.copy_(weight)
        per_layer[name] = {"flipped": round(flipped, 4), "seconds": round(time.perf_counter() - t0, 2)}
    seconds = time.perf_counter() - started
    return model, {"folded_batchnorm": len(folded), "layers": len(per_layer), "samples": len(inputs[0]),
                   "seconds": round(seconds, 1), "seconds_per_layer": round(seconds / max(len(per_layer), 1), 2),
                   "flipped_vs_nearest": sum(v["flipped"] for v in per_layer.values()) / max(len(per_layer), 1),
                   "per_layer": per_layer}


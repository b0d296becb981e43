"""Cross-layer equalization (Nagel et al. 2019, section 4.1). For two layers joined through ReLU (or
nothing), y = W2 relu(W1 x + b1) = (W2 S) relu(S^-1 (W1 x + b1)) for any positive diagonal S. With
s_i = sqrt(r1_i / r2_i), r1_i the range of W1's output channel i and r2_i that of W2's input channel
i, both become sqrt(r1_i r2_i): no channel is tiny next to the others any more, neither in the
weights nor in the activation between the two layers (one uint8 scale for all its channels).

ReLU6 is not scale-equivariant (relu6(z / s) * s clips at 6 s). With `through_relu6` a channel is
scaled only if the calibration data keeps its pre-activation below 6 / margin, and only so far that
it stays there (s >= max z * margin / 6); a channel that reaches the clip keeps s = 1. The float
model is then unchanged on the calibration data, not provably beyond it. By default ReLU6 pairs are
left alone."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgeport.pipeline.compress.configs import Equalize
from edgeport.pipeline.compress.context import CompressContext, modules_named
from edgeport.pipeline.compress.int8sim import LAYERS, calibration_inputs, fold_batchnorm, module_node, trace

PASS_THROUGH = (nn.Identity, nn.Dropout)


def activation(graph: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    """"identity", "relu", "relu6" or None (anything else) for a single-input node."""
    if node.op == "call_module":
        module = graph.get_submodule(node.target)
        if isinstance(module, PASS_THROUGH):
            return "identity"
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.ReLU6) or (isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0, 6)):
            return "relu6"
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return "relu"
    if node.op == "call_function" and node.target in (F.relu6,):
        return "relu6"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def input_channels_axis(layer: nn.Module) -> int | None:
    """The weight axis of a layer's input channels, if scaling them one by one is possible."""
    if isinstance(layer, nn.Linear) or layer.groups == 1:
        return 1
    if layer.groups == layer.in_channels == layer.out_channels:  # depthwise: input i is output i
        return 0
    return None


def pairs(model: nn.Module, ignore: set[str], relu6: bool) -> list[tuple[str, str, str]]:
    """(first, second, joint) for each first layer whose output reaches only the second layer,
    through pass-through modules and at most one ReLU (or ReLU6 when allowed)."""
    graph = trace(model)
    found = []
    for node in graph.graph.nodes:
        if module_node(graph, node, LAYERS) is None or node.target in ignore:
            continue
        joint, current = "identity", node
        while len(current.users) == 1:
            current = next(iter(current.users))
            second = module_node(graph, current, LAYERS)
            if second is not None:
                first = graph.get_submodule(node.target)
                fits = (first.weight.shape[0] == (second.weight.shape[1] if input_channels_axis(second) == 1
                                                  else second.weight.shape[0]))
                if fits and input_channels_axis(second) is not None and current.target not in ignore:
                    found.append((node.target, current.target, joint))
                break
            kind = activation(graph, current)
            if kind is None or (kind != "identity" and joint != "identity") or (kind == "relu6" and not relu6):
                break
            joint = kind if kind != "identity" else joint
    return found


@torch.no_grad()
def output_peaks(model: nn.Module, names: list[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Per-channel max of each named layer's output on the calibration inputs."""
    peaks, hooks = {}, []
    for name in names:
        def hook(module, args, y, name=name):
            axis = y.dim() - 1 if isinstance(module, nn.Linear) else 1
            peaks[name] = y.transpose(0, axis).reshape(y.shape[axis], -1).amax(1)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return peaks


def ranges(weight: torch.Tensor, axis: int) -> torch.Tensor:
    return weight.abs().transpose(0, axis).reshape(weight.shape[axis], -1).amax(1).clamp_min(1e-12)


@torch.no_grad()
def equalize(model: nn.Module, config: Equalize, context: CompressContext):
    model = model.eval()
    modules_named(model, config.ignore, "equalize ignore")
    folded = fold_batchnorm(model)
    found = pairs(model, set(config.ignore), config.through_relu6)
    clipped = [a for a, _, joint in found if joint == "relu6"]
    peaks = output_peaks(model, clipped, calibration_inputs(context, 64)) if clipped else {}
    limit = 6.0 / config.margin
    scales = {f"{a}->{b}": torch.ones(model.get_submodule(a).weight.shape[0]) for a, b, _ in found}
    for _ in range(config.iterations):
        for a, b, joint in found:
            first, second = model.get_submodule(a), model.get_submodule(b)
            axis = input_channels_axis(second)
            s = torch.sqrt(ranges(first.weight, 0) / ranges(second.weight, axis))
            s = s.clamp(1 / config.max_scale, config.max_scale)
            if joint == "relu6":
                s = torch.where(peaks[a] >= limit, torch.ones_like(s), torch.maximum(s, peaks[a] / limit))
                peaks[a] = peaks[a] / s
            shape = [-1] + [1] * (first.weight.dim() - 1)
            first.weight.div_(s.reshape(shape))
            if first.bias is not None:
                first.bias.div_(s)
            shape = [1] * second.weight.dim()
            shape[axis] = -1
            second.weight.mul_(s.reshape(shape))
            scales[f"{a}->{b}"] *= s
    spread = {k: round(float(v.max() / v.min()), 2) for k, v in scales.items()}
    return model, {"folded_batchnorm": len(folded), "pairs": len(found),
                   "through": {j: sum(1 for *_, x in found if x == j) for j in ("identity", "relu", "relu6")},
                   "scale_spread": spread}

"""What the int8-preparation steps share: the runtimes' int8 grid, BatchNorm folding, and the
conv/linear layers of a model with their inputs on calibration data.

The grid is the one ONNX Runtime, OpenVINO and TFLite use for weights: per output channel,
symmetric, integers in [-127, 127], scale max|w_c| / 127. Activations are per-tensor uint8 over
[min(0, lo), max(0, hi)] of the calibration data (ONNX Runtime's minmax QDQ)."""

from __future__ import annotations

import collections

import torch
from torch import nn

from edgeport.pipeline.compress.context import CompressContext, modules_named

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel, shaped to broadcast against the weight; 1 where a channel is all zero."""
    peak = weight.detach().abs().reshape(weight.shape[0], -1).amax(1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    return scale.reshape(-1, *[1] * (weight.dim() - 1))


def on_grid(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a runtime quantizes it (rounded to nearest)."""
    scale = weight_scale(weight)
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def fake_quant_input(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor uint8 over this data's range (with 0 in it), as minmax calibration sets it."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi - lo <= 0:
        return x
    scale = (hi - lo) / 255
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def trace(model: nn.Module, step: str = "int8 preparation",
          advice: str = "fold BatchNorm yourself and use bias-correction or adaround, which need no graph"
          ) -> torch.fx.GraphModule:
    """An fx graph of the model with every conv/linear (subclasses too) a single node."""
    from edgeport.errors import ConfigError

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, LAYERS) or super().is_leaf_module(m, qualname)

    try:
        return torch.fx.GraphModule(model, Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        raise ConfigError(f"{step} needs the model's graph, and torch.fx cannot trace it "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); {advice}") from e


def module_node(graph: torch.fx.GraphModule, node: torch.fx.Node, kinds) -> nn.Module | None:
    if node.op != "call_module":
        return None
    module = graph.get_submodule(node.target)
    return module if isinstance(module, kinds) else None


@torch.no_grad()
def fold_batchnorm(model: nn.Module, step: str = "int8 preparation") -> list[str]:
    """Fold every BatchNorm that is a conv's only reader into that conv (which gains a bias) and
    replace it by Identity, in place, as runtimes do before they quantize weights. Returns the
    folded norms' names. A model without BatchNorm is not traced."""
    if not any(isinstance(m, NORMS) for m in model.modules()):
        return []
    graph = trace(model, step)
    calls = collections.Counter(n.target for n in graph.graph.nodes if n.op == "call_module")
    folded = []
    for node in graph.graph.nodes:
        norm = module_node(graph, node, NORMS)
        source = node.args[0] if norm is not None else None
        conv = module_node(graph, source, (nn.Conv1d, nn.Conv2d)) if isinstance(source, torch.fx.Node) else None
        # a norm or conv the forward calls twice is shared: folding would change its other use
        if (conv is None or len(source.users) != 1 or not norm.track_running_stats
                or calls[node.target] != 1 or calls[source.target] != 1):
            continue
        gain = (norm.weight if norm.affine else 1) / torch.sqrt(norm.running_var + norm.eps)
        conv.weight.mul_(gain.reshape(-1, *[1] * (conv.weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        new_bias = (bias - norm.running_mean) * gain + (norm.bias if norm.affine else 0)
        conv.bias = nn.Parameter(new_bias.detach().clone())
        parent, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
        folded.append(node.target)
    return folded


def calibration_inputs(context: CompressContext, samples: int) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() if t.is_floating_point() else t for t in context.calibration_batch(samples))


class _Stop(Exception):
    pass


@torch.no_grad()
def layers_in_order(model: nn.Module, inputs: tuple[torch.Tensor, ...], ignore: list[str],
                    what: str) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers in the order a forward pass runs them (each once), minus `ignore`."""
    modules_named(model, ignore, f"{what} ignore")
    seen, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, LAYERS) and name not in ignore:
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: seen.append((name, m))))
    try:
        model(*(t[:1] for t in inputs))
    finally:
        for h in hooks:
            h.remove()
    order, names = [], set()
    for name, module in seen:
        if name not in names:
            names.add(name)
            order.append((name, module))
    return order


@torch.no_grad()
def layer_input(model: nn.Module, layer: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int = 32) -> torch.Tensor:
    """What `layer` reads on `inputs` (its first call), running the model only up to it."""
    got = []

    def hook(module, args):
        got.append(args[0].detach().clone())
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(inputs[0]), batch):
            try:
                model(*(t[start:start + batch] for t in inputs))
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(got)

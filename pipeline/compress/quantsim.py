"""A PyTorch int8 simulation that places quantizers where ONNX Runtime's QDQ quantizer does, trains
(LSQ: learnable ranges, straight-through rounding) and writes itself as a QDQ ONNX model that
ONNX Runtime and OpenVINO run in int8.

Scheme (what ORT's quantize_static(QDQ, per_channel, U8 activations, S8 weights) builds):
  - BatchNorm folded into the conv before it (what every runtime deploys anyway);
  - weights: per-output-channel symmetric int8 [-127, 127];
  - activations: per-tensor asymmetric uint8 at each graph input, after every Conv/Linear (after
    its ReLU/ReLU6 when that is its only user: the runtimes drop the Clip and the uint8 range
    clips), after every Add, and on any other tensor that feeds a Conv/Linear/Add. Model outputs
    stay float.

    sim = build_sim(model)          fx trace, fold BN, wrap Conv2d/Linear, insert ActQuant
    calibrate(sim, batches)         min/max ranges from float activations (as ORT's MinMax)
    freeze(sim)                     snap weights onto their int8 grid, fix every (scale, zero point)
    float_module(sim, model)        `model` with the sim's snapped weights, folded BN as Identity
    export_qdq(sim, path, ...)      QDQ ONNX with int8 weight initializers
"""

from __future__ import annotations

import copy
import operator
import warnings

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed

from edgeport.pipeline.compress.int8sim import fold_batchnorm, trace

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
ACTIVATION_FUNCTIONS = (F.relu, F.relu6, F.hardtanh, torch.relu)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward."""
    return (x.round() - x).detach() + x


class ActQuant(nn.Module):
    """Per-tensor affine uint8 fake quant with a learnable (log-parametrised) scale and zero point.
    Frozen: constant qparams through the decomposed quantize/dequantize ops, which the dynamo ONNX
    exporter turns into QuantizeLinear/DequantizeLinear (with a dynamic batch too)."""

    def __init__(self, qmin: int = 0, qmax: int = 255):
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        # log scale: Adam's step is then a relative change, whatever the tensor's magnitude
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.zero = nn.Parameter(torch.tensor(0.0))
        self.enabled = True
        self.observed: list[float] | None = None  # [min, max] while calibrating
        self.frozen: tuple[float, int] | None = None
        self.clips: tuple[float, float | None] | None = None  # (floor, ceiling) of the activation it follows

    def set_range(self, lo: float, hi: float) -> None:
        """ORT's rule: the range holds 0; scale = (hi - lo) / 255; zero point = round(-lo / scale)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = max(hi - lo, 1e-8) / (self.qmax - self.qmin)
        with torch.no_grad():
            self.log_scale.fill_(float(np.log(scale)))
            self.zero.fill_(float(np.clip(round(self.qmin - lo / scale), self.qmin, self.qmax)))

    def qparams(self) -> tuple[float, int]:
        return float(self.log_scale.detach().exp()), int(np.clip(round(float(self.zero.detach())), self.qmin, self.qmax))

    def forward(self, x):
        if self.observed is not None:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            self.observed = [min(self.observed[0], lo), max(self.observed[1], hi)]
        if not self.enabled:
            return x
        if self.frozen is not None:
            qd, (s, z) = torch.ops.quantized_decomposed, self.frozen
            q = qd.quantize_per_tensor(x, s, z, self.qmin, self.qmax, torch.uint8)
            return qd.dequantize_per_tensor(q, s, z, self.qmin, self.qmax, torch.uint8)
        s = self.log_scale.exp()
        if torch.is_grad_enabled():  # torch's fused LSQ+ op: the formula below with its gradients, faster
            return torch._fake_quantize_learnable_per_tensor_affine(x, s.reshape(1), self.zero.reshape(1),
                                                                     self.qmin, self.qmax, 1.0)
        z = round_ste(self.zero).clamp(self.qmin, self.qmax)
        return (torch.clamp(round_ste(x / s) + z, self.qmin, self.qmax) - z) * s


class QConv(nn.Module):
    """A Conv2d (or a subclass with `static_padding`, TF-"SAME" style) or Linear with per-output-
    channel symmetric int8 fake-quantized weights and a learnable per-channel scale (LSQ),
    initialised to max|w| / 127."""

    def __init__(self, mod: nn.Module):
        super().__init__()
        self.mod = mod
        w = mod.weight.detach()
        self.dims = tuple(range(1, w.dim()))
        self.log_wscale = nn.Parameter(torch.log(w.abs().amax(self.dims).clamp_min(1e-12) / 127))
        self.enabled = True
        self.frozen = False
        self.in_quant: ActQuant | None = None  # the quantizer feeding it (the bias must fit int32 with its scale)

    def scale(self) -> torch.Tensor:
        return self.log_wscale.exp().clamp_min(1e-12).reshape(-1, *[1] * len(self.dims))

    def weight(self) -> torch.Tensor:
        w = self.mod.weight
        if not self.enabled:
            return w
        if self.frozen:
            qd, s = torch.ops.quantized_decomposed, self.scale().flatten().detach()
            z = torch.zeros_like(s, dtype=torch.int64)
            # -128..127: the full range adds no Clip node; the snapped weights stay within +-127
            return qd.dequantize_per_channel(qd.quantize_per_channel(w, s, z, 0, -128, 127, torch.int8),
                                             s, z, 0, -128, 127, torch.int8)
        s = self.scale()
        if torch.is_grad_enabled():  # fused op with the LSQ gradient for the per-channel scale
            flat = s.flatten()
            return torch._fake_quantize_learnable_per_channel_affine(w, flat, torch.zeros_like(flat.detach()), 0,
                                                                      -127, 127, 1.0)
        return torch.clamp(round_ste(w / s), -127, 127) * s

    def forward(self, x):
        m, w = self.mod, self.weight()
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        if hasattr(m, "static_padding"):
            x = m.static_padding(x)
        return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)


def fold_bn(model: nn.Module) -> torch.fx.GraphModule:
    """A traced copy of `model` in which every BatchNorm fed only by a conv is folded into it (the
    names in `folded_bn`: float_module() makes them Identity in the user's model)."""
    advice = "quantization-aware training needs a traceable model: remove the qat step"
    model = copy.deepcopy(model).eval()
    folded = fold_batchnorm(model, "qat")
    gm = trace(model, "qat", advice)
    for node in list(gm.graph.nodes):  # the folded norms, now Identity, leave the graph
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.folded_bn = folded
    return gm.eval()


def quantizable(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros"
                                          and not isinstance(mod.padding, str))


def build_sim(model: nn.Module) -> torch.fx.GraphModule:
    """Fold BN, wrap every Conv2d/Linear in QConv, insert an ActQuant where ORT puts a QDQ pair.
    One ConfigError line on a model torch.fx cannot trace."""
    gm = fold_bn(model)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and quantizable(gm.get_submodule(node.target)):
            gm.add_submodule(node.target, QConv(gm.get_submodule(node.target)))
    graph, quantized, count = gm.graph, set(), [0]

    def is_act(node) -> bool:
        if node.op == "call_module":
            return isinstance(gm.get_submodule(node.target), ACTIVATIONS)
        return node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS

    def is_compute(node) -> bool:
        if node.op == "call_module":
            return isinstance(gm.get_submodule(node.target), QConv)
        return node.op == "call_function" and node.target in (operator.add, torch.add)

    def insert_after(node):
        name = f"aq{count[0]}_{node.name}"
        count[0] += 1
        gm.add_submodule(name, ActQuant())
        gm.get_submodule(name).clips = activation_bounds(gm, node)
        with graph.inserting_after(node):
            new = graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        quantized.update((new, node))  # the value is now only seen through its quantizer

    output = next(n for n in graph.nodes if n.op == "output")
    for node in list(graph.nodes):
        if node.op == "placeholder":
            insert_after(node)
        if not is_compute(node):
            continue
        for arg in node.all_input_nodes:
            if arg not in quantized and arg.op != "get_attr":
                insert_after(arg)
        users = list(node.users)
        if len(users) == 1 and is_act(users[0]):
            insert_after(users[0])
        elif output not in users:
            insert_after(node)
    graph.lint()
    gm.recompile()
    mods = dict(gm.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], QConv):
            src = node.args[0]
            while src.op == "call_module" and not isinstance(mods[src.target], ActQuant) and src.args:
                src = src.args[0]  # through Dropout, Flatten, ...
            if src.op == "call_module" and isinstance(mods[src.target], ActQuant):
                mods[node.target].in_quant = mods[src.target]
    return gm.eval()


def act_quants(sim: nn.Module) -> list[ActQuant]:
    return [m for m in sim.modules() if isinstance(m, ActQuant)]


def weight_quants(sim: nn.Module) -> list[QConv]:
    return [m for m in sim.modules() if isinstance(m, QConv)]


def set_enabled(sim: nn.Module, enabled: bool) -> None:
    for q in [*act_quants(sim), *weight_quants(sim)]:
        q.enabled = enabled


@torch.no_grad()
def calibrate(sim: nn.Module, batches) -> None:
    """Min/max activation ranges observed on float activations (every quantizer off, as ORT does)."""
    set_enabled(sim, False)
    quants = act_quants(sim)
    for a in quants:
        a.observed = [float("inf"), float("-inf")]
    for batch in batches:
        sim(*batch)
    for a in quants:
        a.set_range(*a.observed)
        a.observed = None
    set_enabled(sim, True)


def activation_bounds(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[float, float | None] | None:
    """(floor, ceiling) that a ReLU / ReLU6 / Hardtanh node clips its output to."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Hardtanh):  # ReLU6 too
            return module.min_val, module.max_val
        return (0.0, None) if isinstance(module, nn.ReLU) else None
    if node.target is F.relu6:
        return 0.0, 6.0
    if node.target in (F.relu, torch.relu):
        return 0.0, None
    if node.target is F.hardtanh:
        args = {**dict(zip(("input", "min_val", "max_val"), node.args)), **node.kwargs}
        return float(args.get("min_val", -1.0)), float(args.get("max_val", 1.0))
    return None


def fit_to_activation(a: ActQuant) -> None:
    """A quantizer after ReLU6 (or ReLU) must not reach beyond what the activation clips to: ONNX
    Runtime drops the Clip/Relu before a QuantizeLinear only then, and a Clip left between Conv and
    QuantizeLinear keeps the Conv in float (EfficientNet-Lite0: 7.4 ms instead of 2.3). Learned
    ranges drift a little past 6; pulling them back moves the scale by well under 1%."""
    if a.clips is None or a.clips[0] != 0:
        return
    scale, _ = a.qparams()
    if a.clips[1] is not None:
        scale = min(scale, a.clips[1] / (a.qmax - a.qmin))
    a.log_scale.fill_(float(np.log(scale)))
    a.zero.fill_(float(a.qmin))


@torch.no_grad()
def freeze(sim: nn.Module) -> None:
    """Snap every weight onto its int8 grid, widen a channel's scale where its bias would not fit
    int32 at scale s_in * s_w (ORT's rule), and fix every activation's (scale, zero point)."""
    for a in act_quants(sim):
        fit_to_activation(a)
    for q in weight_quants(sim):
        if not q.enabled:
            continue
        s = q.scale().flatten()
        if q.in_quant is not None and q.mod.bias is not None:
            s = torch.maximum(s, 1.0001 * 2 * q.mod.bias.abs() / (2.0 ** 32 - 2) / q.in_quant.qparams()[0])
        weight = q.weight()  # on the learned grid
        q.log_wscale.copy_(torch.log(s))
        q.mod.weight.copy_(torch.clamp(torch.round(weight / q.scale()), -127, 127) * q.scale())
        q.frozen = True
    for a in act_quants(sim):
        a.frozen = a.qparams()


def float_module(sim: torch.fx.GraphModule, model: nn.Module) -> nn.Module:
    """A copy of the user's `model` (same class and forward) holding the sim's trained, snapped
    parameters, its folded BatchNorms replaced by Identity. (A traced GraphModule would not pickle.)"""
    out = copy.deepcopy(model).eval()
    for name in sim.folded_bn:
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent), leaf, nn.Identity())
    wrapped = {name: q for name, q in sim.named_modules() if isinstance(q, QConv)}
    trained = {}
    for name, module in sim.named_modules():
        if isinstance(module, QConv):
            trained.update({f"{name}.{k}": p for k, p in module.mod.named_parameters()})
        elif not isinstance(module, ActQuant) and not any(name.startswith(f"{w}.") for w in wrapped):
            trained.update({f"{name}.{k}" if name else k: p for k, p in module.named_parameters(recurse=False)})
    with torch.no_grad():
        for name in wrapped:
            conv = out.get_submodule(name)
            if conv.bias is None and wrapped[name].mod.bias is not None:  # a folded BatchNorm's shift
                conv.bias = nn.Parameter(torch.zeros_like(wrapped[name].mod.bias))
        for name, p in out.named_parameters():
            if name in trained:
                p.copy_(trained[name])
    return out


def fold_weight_quantizers(model: onnx.ModelProto) -> None:
    """QuantizeLinear(float weight initializer) -> an int8 initializer, as ORT's own QDQ files
    carry their weights (and the Clip the decomposed per-channel op may add, folded too)."""
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    keep = []
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in init and n.input[1] in init:
            w = numpy_helper.to_array(init[n.input[0]]).astype(np.float64)
            s = numpy_helper.to_array(init[n.input[1]]).astype(np.float64)
            z = numpy_helper.to_array(init[n.input[2]]) if len(n.input) > 2 else np.zeros((), np.uint8)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if s.ndim == 1:
                shape[axis] = -1
            q = np.round(w / s.reshape(shape)) + z.astype(np.float64).reshape(shape if z.ndim else [])
            info = np.iinfo(z.dtype)
            init[n.output[0]] = numpy_helper.from_array(np.clip(q, info.min, info.max).astype(z.dtype), n.output[0])
            graph.initializer.append(init[n.output[0]])
            continue
        if n.op_type == "Clip" and all(i in init for i in n.input if i):
            v = numpy_helper.to_array(init[n.input[0]])
            lo, hi = (numpy_helper.to_array(init[i]) if i else None for i in [*n.input, "", ""][1:3])
            init[n.output[0]] = numpy_helper.from_array(np.clip(v, lo, hi).astype(v.dtype), n.output[0])
            graph.initializer.append(init[n.output[0]])
            continue
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)
    live = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def export_qdq(sim: torch.fx.GraphModule, path, example: tuple[torch.Tensor, ...], dynamic_batch: list[bool],
               input_names: list[str], output_names: list[str], opset: int) -> None:
    """The frozen sim as one QDQ ONNX file with int8 weights, named and shaped as the interchange
    export of the same model (the same input/output names, the same dynamic batch)."""
    import contextlib
    import io
    import logging

    from edgeport.pipeline.interchange import name_io, strip_metadata

    dynamic = any(dynamic_batch)
    shapes = tuple({0: torch.export.Dim.DYNAMIC} if d else None for d in dynamic_batch) if dynamic else None
    raw = path.with_name(f".{path.name}.raw")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(sim, example, str(raw), dynamo=True, external_data=False, opset_version=opset,
                              dynamic_shapes=shapes, verbose=False)
        model = onnx.load(str(raw))
    finally:
        raw.unlink(missing_ok=True)
    fold_weight_quantizers(model)
    strip_metadata(model)
    name_io(model, input_names, output_names)
    model.producer_name = "edgeport"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))

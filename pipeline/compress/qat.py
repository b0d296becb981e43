"""Quantization-aware training: the int8 simulation of quantsim.py, ranges initialised from the
calibration set, fine-tuned by distillation from the original model (no labels needed).

The step returns the float model with the trained weights (BN folded, every weight on its learned
int8 grid): every runtime can re-calibrate it. Beside it, in the step's folder, it writes
`learned.qdq.onnx`: the simulation as a QDQ model carrying the learned ranges, which ONNX Runtime
and OpenVINO build their int8 from (see `learned_model`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeport.errors import ConfigError
from edgeport.pipeline.compress.configs import Qat
from edgeport.pipeline.compress.context import CompressContext
from edgeport.pipeline.compress.distill import soft_loss, training_data
from edgeport.pipeline.compress.quantsim import (
    ActQuant, act_quants, build_sim, calibrate, export_qdq, float_module, freeze, set_enabled, weight_quants,
)
from edgeport.progress import report

LEARNED = "learned.qdq.onnx"


def outputs_of(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return list(result.values())
    return list(result)


def simulate(model: nn.Module, context: CompressContext) -> torch.fx.GraphModule:
    """The int8 simulation of `model`, or one ConfigError line saying why QAT cannot take it."""
    other = [f"{s.name} ({s.dtype})" for s in context.inputs if not s.dtype.startswith("float")]
    if other:
        raise ConfigError(f"qat: input(s) {', '.join(other)} are not float; quantization-aware training simulates "
                          "int8 activations from float inputs (CNNs): remove the qat step for this model")
    sim = build_sim(model)  # one ConfigError line if torch.fx cannot trace it
    if not weight_quants(sim):
        raise ConfigError("qat: the model has no Conv2d or Linear layer to quantize")
    for p in sim.parameters():  # a loaded model may come frozen
        p.requires_grad_(True)
    return sim


class Features:
    """What each activation quantizer of a module returns, captured by forward hooks."""

    def __init__(self, module: nn.Module):
        self.values: dict[str, torch.Tensor] = {}
        for name, m in module.named_modules():
            if isinstance(m, ActQuant):
                m.register_forward_hook(lambda _m, _i, out, name=name: self.values.__setitem__(name, out))

    def loss(self, reference: Features) -> torch.Tensor:
        terms = [F.mse_loss(v, reference.values[k]) / (reference.values[k].var() + 1e-8) for k, v in self.values.items()]
        return torch.stack(terms).mean()


def batched(module: nn.Module, tensors: list[torch.Tensor], size: int = 256) -> list[torch.Tensor]:
    with torch.no_grad():
        parts = [outputs_of(module(*(t[i:i + size] for t in tensors))) for i in range(0, len(tensors[0]), size)]
    return [torch.cat(column) for column in zip(*parts)]


def param_groups(sim: nn.Module, config: Qat) -> list[dict]:
    """Weights at `lr`; log-scales at `range_lr` (a relative step); zero points, on the 0..255 grid, 100x that."""
    scales = [q.log_wscale for q in weight_quants(sim)] + [a.log_scale for a in act_quants(sim)]
    zeros = [a.zero for a in act_quants(sim)]
    taken = {id(p) for p in scales + zeros}
    weights = [p for p in sim.parameters() if id(p) not in taken]
    return [{"params": weights, "lr": config.lr}, {"params": scales, "lr": config.range_lr},
            {"params": zeros, "lr": config.range_lr * 100}]


def qat(model: nn.Module, config: Qat, context: CompressContext):
    sim = simulate(model, context)
    names = [s.name for s in context.inputs]
    arrays = ({n: context.calibration.inputs[n] for n in names} if config.data == "calibration"
              else training_data(config, context)[0])
    tensors = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names]
    total = len(tensors[0])
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(total)
    n_val = max(1, int(total * config.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) < 2:
        raise ConfigError(f"qat: {total} training sample(s) leave nothing to train on after the validation split; "
                          "give more calibration samples or data = \"npy\"")

    teacher = batched(context.teacher.eval(), tensors)
    variance = [t.float().var().clamp_min(1e-8) for t in teacher]
    scores = [context.outputs.index(n) for n in context.class_scores if n in context.outputs]
    calibrate(sim, context.calibration_batches(64))
    reference = copy.deepcopy(sim)  # float activations at every quantizer, for the feature loss
    set_enabled(reference, False)
    features = (Features(sim), Features(reference)) if config.feature_weight > 0 else None

    def loss_of(student: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
        loss = sum(config.mse_weight * F.mse_loss(s, t) / v for s, t, v in zip(student, target, variance))
        for k in scores:
            loss = loss + config.kl_weight * soft_loss(student[k], target[k], config.temperature)
        return loss

    def validate() -> tuple[float, float]:
        """(top-1 agreement with the teacher on the first class-score output, -normalised MSE)."""
        out = batched(sim, [t[val_idx] for t in tensors])
        target = [t[val_idx] for t in teacher]
        agree = float((out[scores[0]].argmax(-1) == target[scores[0]].argmax(-1)).float().mean()) if scores else 0.0
        return agree, -float(sum(F.mse_loss(o, t) / v for o, t, v in zip(out, target, variance)))

    steps = config.steps or config.epochs * math.ceil(len(train_idx) / config.batch_size)
    every = max(1, steps // 10)
    warm = max(1, steps // 20)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(param_groups(sim, config))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warm if s < warm else
                                                 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    start = best = validate()
    best_state, best_step, history = copy.deepcopy(sim.state_dict()), 0, [round(start[0], 4)]
    report(0, steps, "quantization-aware training")
    batches: list = []
    sim.eval()  # BN is folded, dropout stays off: the deployed model's numerics
    for step in range(1, steps + 1):
        if not batches:
            batches = list(torch.from_numpy(rng.permutation(train_idx)).split(config.batch_size))
        batch = batches.pop()
        inputs = [t[batch] for t in tensors]
        loss = loss_of(outputs_of(sim(*inputs)), [t[batch] for t in teacher])
        if features is not None:
            with torch.no_grad():
                reference(*inputs)
            loss = loss + config.feature_weight * features[0].loss(features[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % every == 0 or step == steps:
            score = validate()
            history.append(round(score[0], 4))
            if score > best:
                best, best_state, best_step = score, copy.deepcopy(sim.state_dict()), step
            report(step, steps, f"qat step {step}: validation agreement {score[0]:.2%} (best {best[0]:.2%})")
    sim.load_state_dict(best_state)
    freeze(sim)
    notes = {"validation_agreement_ptq": start[0], "validation_agreement": best[0], "best_step": best_step,
             "steps": steps, "history": history, "train_samples": len(train_idx), "validation_samples": n_val,
             "quantized_layers": sum(q.enabled for q in weight_quants(sim)),
             "activation_quantizers": len(act_quants(sim)), "learned": None}
    where = "int8 simulation's top-1 agreement with the original on its validation split"
    summary = f"qat: {where} {start[0]:.2%} (calibrated) → {best[0]:.2%} (trained)" if scores else "qat: trained"
    if context.out_dir is not None:
        try:
            write_learned(sim, context, context.out_dir / LEARNED)
            notes["learned"] = LEARNED
            notes["note"] = (f"{summary}; ONNX Runtime and OpenVINO int8 take the learned ranges ({LEARNED}), "
                             "the other runtimes re-calibrate the QAT weights")
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; every runtime re-calibrates then
            notes["learned_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            notes["note"] = (f"{summary}; the learned ranges could not be exported ({notes['learned_error']}): "
                             "every runtime re-calibrates the QAT weights")
    return float_module(sim, model), notes


def write_learned(sim: torch.fx.GraphModule, context: CompressContext, path: Path) -> None:
    from edgeport.pipeline.interchange import OPSET

    dynamic = [s.dynamic_batch for s in context.inputs]
    example = context.example_inputs(2 if any(dynamic) else 1)
    export_qdq(sim, path, example, dynamic, [s.name for s in context.inputs], context.outputs, OPSET)


qat.code = ("edgeport.pipeline.compress.quantsim",)  # what else its cached step depends on

"""Structured channel pruning (torch-pruning) and unstructured magnitude pruning (torch.nn.utils.prune)."""

from __future__ import annotations

import warnings

import torch

from edgeport.errors import ConfigError, require
from edgeport.pipeline.compress.configs import PruneStructured, PruneUnstructured
from edgeport.pipeline.compress.context import CompressContext, modules_named, output_layer

PRUNABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def prune_structured(model: torch.nn.Module, config: PruneStructured, context: CompressContext):
    tp = require("torch_pruning", "compress")
    ignore_names = config.ignore if config.ignore is not None else output_layer(model)
    ignored = modules_named(model, ignore_names, "prune-structured ignore")
    ratios = dict(zip(modules_named(model, list(config.layer_ratios), "prune-structured layer_ratios"),
                      config.layer_ratios.values()))
    importance = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                  "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                  "taylor": tp.importance.TaylorImportance}[config.importance]()
    before = sum(p.numel() for p in model.parameters())
    try:
        warnings.filterwarnings("ignore", module="torch_pruning")
        pruner = tp.pruner.MetaPruner(
            model, context.example_inputs(), importance=importance, global_pruning=config.global_pruning,
            pruning_ratio=config.ratio, pruning_ratio_dict=ratios or None, ignored_layers=ignored,
        )
        if config.importance == "taylor":  # Taylor needs gradients: of the model's own output energy
            model.zero_grad()
            out = model(*context.calibration_batch())
            (out if isinstance(out, torch.Tensor) else out[0]).pow(2).mean().backward()
        pruner.step()
    except Exception as e:  # torch-pruning raises plain errors when it cannot trace the graph
        raise ConfigError(f"prune-structured: torch-pruning cannot trace this model ({e.__class__.__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from e
    model.zero_grad(set_to_none=True)
    if config.ratio > 0 and sum(p.numel() for p in model.parameters()) == before:
        raise ConfigError("prune-structured: torch-pruning cannot trace this model's layers through autograd "
                          "(no channel group found); nothing was pruned")
    return model.eval(), {"ignored": ignore_names, "importance": config.importance}


def prune_unstructured(model: torch.nn.Module, config: PruneUnstructured, context: CompressContext):
    from torch.nn.utils import prune

    ignore_names = config.ignore if config.ignore is not None else output_layer(model)
    ignored = set(map(id, modules_named(model, ignore_names, "prune-unstructured ignore")))
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE) and id(m) not in ignored]
    if not targets:
        raise ConfigError("prune-unstructured: no Linear or Conv layer left to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=config.ratio)
    for module, name in targets:
        prune.remove(module, name)  # make the zeros permanent: a plain weight tensor again
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return model.eval(), {
        "zero_weights": zeros, "of_weights": total,
        "note": "unstructured sparsity: dense runtimes store and compute the zeros; only compressed (zip) size shrinks",
    }

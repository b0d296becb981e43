"""Compression before quantization: one typed config per method behind one verb.

    model, report = compress(model, PruneStructured(ratio=0.5), context)

Each method returns the new module and what it measured; the pipeline chains them in
the order of the run config's [[compress]] list, each step its own cached stage.
"""

from __future__ import annotations

from edgeport.pipeline.compress.adaround import adaround
from edgeport.pipeline.compress.bias_correction import bias_correction
from edgeport.pipeline.compress.cluster import cluster
from edgeport.pipeline.compress.configs import (
    METHODS, AdaRound, BiasCorrection, CompressConfig, Distill, Equalize, LowRank, PruneStructured, PruneUnstructured,
    Qat, Cluster, Training,
)
from edgeport.pipeline.compress.context import CompressContext
from edgeport.pipeline.compress.distill import distill
from edgeport.pipeline.compress.equalize import equalize
from edgeport.pipeline.compress.lowrank import low_rank
from edgeport.pipeline.compress.pruning import prune_structured, prune_unstructured
from edgeport.pipeline.compress.qat import qat

HANDLERS = {
    PruneStructured: prune_structured,
    PruneUnstructured: prune_unstructured,
    LowRank: low_rank,
    Distill: distill,
    Qat: qat,
    Equalize: equalize,
    BiasCorrection: bias_correction,
    AdaRound: adaround,
    Cluster: cluster,
}


def compress(model, config: CompressConfig, context: CompressContext):
    """Apply one compression step; returns (new module, notes dict)."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        from edgeport.errors import ConfigError

        raise ConfigError(f"unknown compression config {type(config).__name__}; known: {', '.join(METHODS)}")
    return handler(model, config, context)


__all__ = ["compress", "CompressConfig", "CompressContext", "PruneStructured", "PruneUnstructured", "LowRank",
           "Distill", "Qat", "METHODS", "Equalize", "BiasCorrection", "AdaRound", "Cluster", "Training"]

"""The export and quantize stages: which artifacts a config asks for, and each one built (or
taken from the cache) by its target."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgeport import targets
from edgeport.errors import ConfigError, did_you_mean
from edgeport.pipeline.config import PRECISIONS, RunConfig
from edgeport.pipeline.data import DataSets
from edgeport.pipeline.stages import code_hash, key_hash
from edgeport.pipeline.workspace import Workspace
from edgeport.targets.base import RECALIBRATED, QuantizeRequest, SourceModel, TargetOptions
from edgeport.types import Artifact, artifact_name, sha256_file

PRECISION_ORDER = ("fp32", "fp16", "int8-dynamic", "int8", "full-int8", "mixed")


def precision_rank(precision: str) -> int:
    return PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)


@dataclass(frozen=True)
class Planned:
    """One artifact the config asks for: a target, a precision and the target's options for it."""

    target: str
    precision: str
    options: TargetOptions = field(hash=False, compare=False)
    variant: str | None = None

    @property
    def label(self) -> str:
        return artifact_name(self.target, self.precision, self.variant)

    @property
    def slug(self) -> str:
        return artifact_name(self.target, self.precision, self.variant, "-")


def check_precisions(wanted: list[str], configured: dict[str, list[str]]) -> None:
    """Each precision asked for (export -p) is known and built by one of the chosen targets."""
    built = sorted({p for ps in configured.values() for p in ps}, key=precision_rank)
    for p in wanted:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}{did_you_mean(p, PRECISIONS)}; precisions: {', '.join(PRECISIONS)}")
        if p not in built:
            raise ConfigError(f"no chosen target builds {p}: their [targets.X] precisions are {', '.join(built)}; "
                              "add it there or ask for one of those")


def plan(config: RunConfig, only_targets: list[str] | None = None,
         only_precisions: list[str] | None = None) -> list[Planned]:
    """Every configured (target, precision[, calibration method]); fp32 first as int8's parent.
    Fails on a missing runtime or an unknown precision before any work. A target whose
    calibration-method option holds a list builds one int8 artifact per method, side by side."""
    names = only_targets or list(config.targets)
    for name in names:
        targets.info(name)
    check_precisions(only_precisions or [], {name: config.target_options(name).precisions for name in names})
    planned: list[Planned] = []
    for name in names:
        target = targets.get(name)  # one line naming the extra when the runtime is missing
        options = config.target_options(name)
        wanted = [p for p in options.precisions if not only_precisions or p in only_precisions]
        for p in wanted:
            target.check_precision(p)
        method_option = target.search_axes().method_option
        for precision in sorted(wanted, key=precision_rank):
            methods = getattr(options, method_option, None) if method_option else None
            if isinstance(methods, list):
                one = options.model_copy(update={method_option: methods[0]})
                if precision not in target.float_precisions and len(methods) > 1:
                    planned += [Planned(name, precision, options.model_copy(update={method_option: m}), m)
                                for m in methods]
                    continue
                options_for = one
            else:
                options_for = options
            planned.append(Planned(name, precision, options_for))
    return planned


def build(ws: Workspace, source: SourceModel, data: DataSets, planned: Planned, scores: list[str]) -> Artifact:
    """One artifact (cached): a float export, or an integer one quantized from its target's fp32
    export (built first when needed). `scores` names the class-score outputs an accuracy-aware
    budget judges."""
    target = targets.get(planned.target)
    options, precision = planned.options, planned.precision
    code = code_hash(target.__module__, "edgeport.targets.base", "edgeport.pipeline.build")
    extras = target.cache_extras(precision, options, data.calibration)
    if precision in target.float_precisions:
        float_options = {k: v for k, v in options.build_options().items() if k == "converter"}
        key = {"stage": "export", "parent": sha256_file(source.onnx_path), "target": planned.target,
               "precision": precision, "options": float_options, "versions": ws.versions, "code": code, **extras}
        return store(ws, f"{planned.target}-{precision}", key,
                     lambda d: target.export(source, precision, d, options, data.calibration))
    parent = build(ws, source, data, Planned(planned.target, "fp32", options), scores)
    from edgeport.pipeline.compress.chain import learned_model

    learned, unusable = learned_model(ws, source.onnx_path)
    request = QuantizeRequest(data.calibration, scores, shared=ws.run_dir / "shared", learned=learned)
    key = {"stage": "quantize", "parent": parent.id, "calibration": data.calibration.digest, "precision": precision,
           "options": options.build_options(), "scores": scores, "versions": ws.versions, "code": code, **extras}
    if learned is not None:
        key["learned"] = sha256_file(learned)

    def quantize(folder: Path) -> Artifact:
        artifact = target.quantize(source, parent, request, precision, folder, options)
        if learned is not None or unusable:  # the model went through QAT: say whose ranges the file holds
            scheme = artifact.options.setdefault("quantization", {})
            scheme.setdefault("ranges", RECALIBRATED + (f" (the learned model is not usable: {unusable})"
                                                        if unusable else " (QAT weights)"))
        return artifact

    return store(ws, planned.slug, key, quantize, stage="quantize", variant=planned.variant)


def store(ws: Workspace, slug: str, key: dict, make, stage: str = "export", variant: str | None = None) -> Artifact:
    """Build into the cached folder artifacts/<slug>: id, variant and provenance recorded, every file hashed."""
    artifact_id = key_hash(key)[:16]

    def build_folder(folder: Path) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # converters print progress; stdout is the user's
            artifact = make(folder)
        artifact.id = artifact_id
        artifact.variant = variant
        artifact.provenance = {"stage": stage, "parent": key["parent"], "config_hash": key_hash(key["options"]),
                               "tool_versions": ws.versions}
        artifact.save(folder)

    return ws.stages.folder(stage, f"artifacts/{slug}", key, build_folder, Artifact.load)


def float_parent(ws: Workspace, source: SourceModel, data: DataSets, planned: Planned, scores: list[str]) -> Artifact:
    """The fp32 artifact an integer one is quantized from (from the cache once built)."""
    return build(ws, source, data, Planned(planned.target, "fp32", planned.options), scores)


def sensitivity(ws: Workspace, artifact: Artifact, parent: Artifact, data: DataSets) -> list[dict]:
    """Per-layer int8 sensitivity where the target offers it, worst first; cached."""
    target = targets.get(artifact.target)
    if not target.offers_sensitivity(artifact):
        return []
    key = {"artifact": artifact.id, "parent": parent.id, "calibration": data.calibration.digest,
           "versions": ws.versions, "code": code_hash(target.__module__)}
    result = ws.stages.record("verify", f"sensitivity/{artifact.slug}.json", key, lambda: {
        "layers": target.sensitivity(parent, artifact, data.calibration)})
    return result["layers"]

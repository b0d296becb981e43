"""Targets: one module per runtime behind one interface (edgeport.targets.base.Target).

The table below is static so that listing targets or printing --help never imports a backend;
adding a runtime is its module plus one line here. Third parties add a target through the
`edgeport.targets` entry-point group (name = "pkg.module:TargetClass").
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from edgeport.errors import ConfigError, MissingDependencyError, did_you_mean


@dataclass(frozen=True)
class TargetInfo:
    name: str
    path: str  # "module:Class"
    extra: str  # edgeport's pip extra that installs it
    runtime_module: str  # importable when the runtime is installed
    precisions: tuple[str, ...]
    description: str
    tools: tuple[str, ...] = ()  # pip packages whose versions an artifact depends on (cache keys, `edgeport env`)


BUILTIN = {t.name: t for t in (
    TargetInfo("onnxruntime", "edgeport.targets.onnxruntime:OnnxRuntimeTarget", "onnxruntime", "onnxruntime",
               ("fp32", "int8"), "ONNX Runtime (CPU execution provider); int8 as QDQ static quantization",
               ("onnxruntime",)),
    TargetInfo("openvino", "edgeport.targets.openvino:OpenVinoTarget", "openvino", "openvino",
               ("fp32", "fp16", "int8"), "OpenVINO IR (.xml/.bin); int8 through NNCF post-training quantization",
               ("openvino", "nncf")),
    TargetInfo("tflite", "edgeport.targets.tflite:TfliteTarget", "tflite", "ai_edge_litert",
               ("fp32", "fp16", "int8-dynamic", "int8", "full-int8"),
               "TFLite/LiteRT via litert-torch; full-int8 (int8 IO) via onnx2tf + TensorFlow",
               ("ai-edge-litert", "litert-torch", "ai-edge-quantizer", "tensorflow", "onnx2tf")),
    TargetInfo("executorch", "edgeport.targets.executorch:ExecuTorchTarget", "executorch", "executorch",
               ("fp32", "int8", "int8-dynamic"), "ExecuTorch (.pte) with the XNNPACK delegate; int8 through PT2E",
               ("executorch", "torchao")),
)}
DEFAULT = "onnxruntime"  # the target a config without [targets] builds


@cache
def available() -> dict[str, TargetInfo]:
    """Built-in targets plus those registered by other packages."""
    table = dict(BUILTIN)
    for ep in entry_points(group="edgeport.targets"):
        if ep.name not in table:
            cls = ep.load()
            table[ep.name] = TargetInfo(
                ep.name, ep.value, getattr(cls, "extra", ep.name), getattr(cls, "runtime", ep.name),
                tuple(cls.precisions), (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                tuple(getattr(cls, "tools", ())),
            )
    return table


def info(name: str) -> TargetInfo:
    table = available()
    if name not in table:
        raise ConfigError(f"unknown target {name!r}{did_you_mean(name, table)}; known: {', '.join(table)}")
    return table[name]


def is_installed(name: str) -> bool:
    """Whether the target's runtime can be imported, without importing it."""
    try:
        return importlib.util.find_spec(info(name).runtime_module) is not None
    except (ImportError, ValueError):
        return False


def target_class(name: str):
    """The target's class; importing its module imports no backend (they load inside methods)."""
    module_name, class_name = info(name).path.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def options_model(name: str):
    """The schema of `[targets.NAME]`."""
    return target_class(name).Options


def get(name: str):
    """An instance of the named target; one line naming the pip extra when its runtime is missing."""
    entry = info(name)
    if not is_installed(name):
        raise MissingDependencyError(
            f"target {name} needs {entry.runtime_module}, which is not installed: pip install 'edgeport[{entry.extra}]'"
        )
    return target_class(name)()


def tools() -> tuple[str, ...]:
    """Every target's tool packages, for cache keys and `edgeport env`."""
    return tuple(dict.fromkeys(t for info_ in available().values() for t in info_.tools))

"""Load the source model from a factory, a TorchScript file, a torch.export .pt2, or a state_dict."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeport.errors import ConfigError, first_line
from edgeport.pipeline.config import ModelConfig
from edgeport.types import TensorSpec

FORMS = "pkg.module:factory, path/to/file.py:factory, model.pt (TorchScript) or model.pt2 (torch.export)"
MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class LoadedModel:
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    digest: str  # content hash of architecture + weights: the cache key of everything downstream


def is_factory(source: str) -> bool:
    """`module:factory` or `file.py:factory` (a Windows drive letter is not a factory)."""
    return ":" in source and not re.match(r"^[A-Za-z]:[\\/]", source)


def source_file(source: str, base_dir: Path) -> Path | None:
    """The file a model.source names (a model file, or a factory's .py), which must exist; None
    for pkg.module:factory. A malformed source is a ConfigError."""
    if is_factory(source):
        target, _, attr = source.rpartition(":")
        if not target or not IDENTIFIER.match(attr) or not (target.endswith(".py") or MODULE_PATH.match(target)):
            raise ConfigError(f"model.source {source!r} is malformed; expected {FORMS}")
        if not target.endswith(".py"):
            return None
        path = Path(target)
    elif source.endswith((".pt", ".pth", ".pt2", ".ts")):
        path = Path(source)
    else:
        raise ConfigError(f"model.source {source!r} is malformed; expected {FORMS}")
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    return path


def import_factory(source: str, base_dir: Path):
    target, _, attr = source.rpartition(":")
    path = source_file(source, base_dir)
    try:
        if path is not None:
            spec = importlib.util.spec_from_file_location(f"edgeport_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            # Like `python -m`, look in the config's folder and the working folder too.
            for folder in (str(base_dir), os.getcwd()):
                if folder not in sys.path:
                    sys.path.append(folder)
            module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise ConfigError(f"model.source {source!r}: cannot import {target!r} ({e})") from e
    except Exception as e:  # the user's module raised while it was imported: their error, kept as the cause
        raise ConfigError(f"model.source {source!r}: importing {target} raised {e.__class__.__name__}: "
                          f"{first_line(e)}") from e
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ConfigError(f"model.source {source!r}: {target} has no attribute {attr!r}")
        factory = getattr(factory, part)
    return factory


def file_kind(path: Path) -> str:
    """What a model file is, from its bytes: torchscript, zip (torch.save or torch.export),
    pickle (a legacy torch.save), truncated (a zip without its end) or other."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return "truncated"
        return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else "zip"
    return "pickle" if head[:1] == b"\x80" else "other"


def first_bytes(path: Path) -> str:
    with open(path, "rb") as f:
        return repr(f.read(8))


def load_file(path: Path, trust: bool) -> torch.nn.Module:
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    kind = file_kind(path)
    if kind == "truncated":
        raise ConfigError(f"{path} is truncated or damaged: it starts as a zip archive (what torch.jit.save, "
                          "torch.export.save and torch.save write) but its end is missing; save the model again")
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:  # torch raises several kinds for a bad archive
            raise ConfigError(f"{path}: not a torch.export program ({e.__class__.__name__}: {first_line(e)})") from e
    if kind == "other":
        raise ConfigError(f"{path} is not a TorchScript, torch.export or torch.save file (it starts with {first_bytes(path)}); "
                          f"expected {FORMS}")
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises several kinds for a damaged archive (RuntimeError, UnicodeDecodeError)
            raise ConfigError(f"{path} is a TorchScript archive that does not load ({first_line(e)}); "
                              "save it again with torch.jit.save") from e
    if not trust:
        raise ConfigError(
            f"{path} is not TorchScript; a pickled model can run arbitrary code when loaded, so it loads only with --trust-model"
        )
    try:
        model = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling runs the file's own code: whatever it raises is the file's problem
        raise ConfigError(f"{path}: cannot unpickle the model ({e.__class__.__name__}: {first_line(e)})") from e
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module; give a factory and weights instead")
    return model


def state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(module).encode())  # the architecture as printed
    return h.hexdigest()


def example_inputs(specs: list[TensorSpec], batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(s.concrete_shape(batch), dtype=getattr(torch, s.dtype)) for s in specs)


def as_list(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, tuple | list) and all(isinstance(o, torch.Tensor) for o in outputs):
        return list(outputs)
    raise ConfigError(f"the model returns {type(outputs).__name__}; edgeport needs a tensor or a tuple of tensors")


def load_model(config: ModelConfig, base_dir: Path) -> LoadedModel:
    """Build the module, load weights, and check the configured input shapes by running it once."""
    source = config.source
    if is_factory(source):
        factory = import_factory(source, base_dir)
        try:
            module = factory()
        except Exception as e:
            raise ConfigError(f"model.source {source!r}: the factory raised {e.__class__.__name__}: {first_line(e)}") from e
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"model.source {source!r} returned {type(module).__name__}, not a torch.nn.Module")
    else:
        module = load_file(source_file(source, base_dir), config.trust_model)
    if config.weights:
        path = Path(config.weights) if Path(config.weights).is_absolute() else base_dir / config.weights
        if not path.is_file():
            raise ConfigError(f"model.weights file not found: {path}")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as e:
            raise ConfigError(f"model.weights {path}: cannot load into the model ({first_line(e)})") from e
    try:
        module.eval()
    except NotImplementedError:
        pass  # a torch.export program's module() is already in inference form and refuses eval()

    try:
        with torch.no_grad():
            outputs = as_list(module(*example_inputs(config.inputs, 1)))
    except ConfigError:
        raise
    except Exception as e:
        shapes = ", ".join(f"{s.name} {s.shape}" for s in config.inputs)
        last = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"the model does not accept the configured inputs ({shapes}): {last}") from e
    names = config.output_names or (["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))])
    if len(names) != len(outputs):
        raise ConfigError(f"model.output_names has {len(names)} names; the model returns {len(outputs)} outputs")
    batch_dim = config.inputs[0].shape[0] if config.inputs[0].dynamic_batch else None
    out_specs = [
        TensorSpec(name=n, shape=[batch_dim or o.shape[0], *o.shape[1:]] if o.dim() else [],
                   dtype=str(o.dtype).removeprefix("torch."))
        for n, o in zip(names, outputs)
    ]
    return LoadedModel(module, list(config.inputs), out_specs, state_digest(module))


def save_program(module: torch.nn.Module, specs: list[TensorSpec], path: Path) -> None:
    """Save the module as a torch.export program (.pt2) that loads without its Python source."""
    dynamic = any(s.dynamic_batch for s in specs)
    shapes = tuple({0: torch.export.Dim.DYNAMIC} if s.dynamic_batch else None for s in specs) if dynamic else None
    program = torch.export.export(module, example_inputs(specs, 2 if dynamic else 1), dynamic_shapes=shapes)
    torch.export.save(program, str(path))

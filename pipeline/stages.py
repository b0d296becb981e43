"""The stage runner: every stage output is keyed by a hash of its inputs, written under a
temporary name and renamed when complete, so a re-run skips what is unchanged and a killed
run resumes without ever seeing half a result under a final name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeVar

from edgeport.progress import reporting
from edgeport.types import write_text_atomic

T = TypeVar("T")
STAMP = ".stage.json"

CORE_TOOLS = ("edgeport", "torch", "onnx", "onnxscript", "numpy", "scikit-learn")


def tool_names() -> tuple[str, ...]:
    """edgeport's own tools and every target's (the target table names them)."""
    from edgeport import targets

    return CORE_TOOLS + targets.tools()


@cache
def tool_versions() -> dict[str, str]:
    """Versions of the installed tools (without importing them): part of every cache key."""
    found = {}
    for name in tool_names():
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@cache
def code_hash(*modules: str) -> str:
    """A hash of these modules' source files: a stage's key holds the code that computes it, so a
    changed stage is redone without anyone bumping a version."""
    import importlib.util

    digest = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            digest.update(name.encode() + Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def key_hash(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Event:
    """What the pipeline reports; the CLI turns these into progress bars, the library prints nothing.
    A "progress" event counts the steps of a long loop: `done` of `total`."""

    kind: Literal["plan", "start", "done", "cached", "progress", "warning"]
    stage: str
    label: str = ""
    detail: str = ""
    total: int = 0
    seconds: float = 0.0
    done: int = 0


Listener = Callable[[Event], None]


def remove_dead_partials(final: Path) -> None:
    """Partial (and replaced) folders left by killed runs (their process is gone)."""
    for partial in [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.old-*")]:
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(partial, ignore_errors=True)


def read_json(path: Path) -> dict | None:
    """A cache record, or None when it is missing or unreadable (then the stage is built again)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def saved_key(stamp: Path) -> str | None:
    return (read_json(stamp) or {}).get("key")


def replace_folder(new: Path, final: Path) -> None:
    """Put `new` at `final`; an old folder there is moved aside first and removed after, so
    `final` is never half of either."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


class Stages:
    def __init__(self, run_dir: Path, on_event: Listener | None = None, rebuild: bool = False):
        self.run_dir = run_dir
        self.emit = on_event or (lambda event: None)
        self.rebuild = rebuild
        self.built: list[str] = []  # rel paths built in this run (not cache hits)

    def counter(self, stage: str, rel: str):
        """Where a loop inside this stage reports its counts (`edgeport.progress.report`)."""
        return lambda done, total, detail: self.emit(Event("progress", stage, rel, detail, total=total, done=done))

    def folder(self, stage: str, rel: str, key: Any, build: Callable[[Path], None], load: Callable[[Path], T]) -> T:
        """A stage whose output is a folder: reuse it when its stamp holds the same key."""
        final = self.run_dir / rel
        digest = key_hash(key)
        stamp = final / STAMP
        if not self.rebuild and saved_key(stamp) == digest:
            self.emit(Event("cached", stage, rel))
            return load(final)
        self.emit(Event("start", stage, rel))
        started = time.perf_counter()
        # One partial folder per process: parallel workers (tune) may build into one run folder.
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        remove_dead_partials(final)
        partial.mkdir(parents=True)
        try:
            with reporting(self.counter(stage, rel)):
                build(partial)
            write_text_atomic(partial / STAMP, json.dumps({"key": digest, "stage": stage, "inputs": key}, indent=2,
                                                          default=str))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a failed build leaves nothing behind
            raise
        if not self.rebuild and saved_key(stamp) == digest:
            shutil.rmtree(partial)  # another worker finished the same stage first
        else:  # --rebuild replaces what is there, even with the same key: it may fail its hashes
            replace_folder(partial, final)
        self.built.append(rel)
        self.emit(Event("done", stage, rel, seconds=time.perf_counter() - started))
        return load(final)

    def record(self, stage: str, rel: str, key: Any, compute: Callable[[], dict]) -> dict:
        """A stage whose output is one JSON document."""
        path = self.run_dir / rel
        digest = key_hash(key)
        saved = read_json(path) if not self.rebuild else None
        if saved is not None and saved.get("key") == digest and "result" in saved:
            self.emit(Event("cached", stage, rel))
            return saved["result"]
        self.emit(Event("start", stage, rel))
        started = time.perf_counter()
        with reporting(self.counter(stage, rel)):
            result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"key": digest, "result": result}, indent=2, default=str))
        self.built.append(rel)
        self.emit(Event("done", stage, rel, seconds=time.perf_counter() - started))
        return result

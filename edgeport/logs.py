"""Quiet by default: the terminal shows edgeport's own progress and results; what third-party
libraries say goes to the run's log file, `runs/NAME/logs/<time>.log`.

Third parties talk three ways, and each is routed here, in one place:
- Python logging (torchao, onnxscript, NNCF) and Python warnings (`logging.captureWarnings`):
  one handler on the root logger writes every record to the log file; edgeport's own records
  (logger `edgeport`), and with `-v` every record, also go to the terminal.
- C++ code writes straight to file descriptors 1 and 2 (absl, TensorFlow's oneDNN notice,
  XNNPACK, OpenVINO), and so do Python handlers a library set up at import (torch's own):
  while a command works, `captured()` points fds 1 and 2 at the log file and gives edgeport's
  console a duplicate of the original stderr, so only edgeport's lines reach the terminal.
- The environment, set before TensorFlow is imported: no C++ INFO lines.

`-v` leaves the file descriptors alone (everything shows) but keeps onnxscript and onnx_ir at
WARNING: their INFO lines run to hundreds per export.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

# setdefault: the user's own environment wins.
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "1", "GRPC_VERBOSITY": "ERROR"}
CAPPED = ("onnxscript", "onnx_ir")  # WARNING even with -v
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Router(logging.Handler):
    """The root logger's one handler: every record to the log file (held back until there is
    one), edgeport's own (every record with -v) to the terminal."""

    def __init__(self, verbose: bool):
        super().__init__(logging.DEBUG)
        self.verbose = verbose
        self.file = None
        self.console = None  # edgeport's rich console while a command works, else sys.stderr
        self.held: deque[str] = deque(maxlen=10_000)
        self.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self.file is not None:
                self.file.write(line + "\n")
                self.file.flush()
            else:
                self.held.append(line)
            if self.verbose or record.name == "edgeport" or record.name.startswith("edgeport."):
                shown = f"{record.levelname} {record.name}: {record.getMessage()}"
                if self.console is not None:
                    self.console.print(shown, markup=False, highlight=False)
                else:
                    sys.stderr.write(shown + "\n")
        except Exception:  # a log line must never break a run
            self.handleError(record)

    def attach(self, file) -> None:
        with self.lock:  # a library's thread may be logging right now
            self.file = file
            if file is not None:
                file.writelines(line + "\n" for line in self.held)
                file.flush()
                self.held.clear()


def router() -> Router | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h, Router)), None)


def setup(verbose: bool) -> None:
    """Environment, logging and warnings for a command; call it before heavy libraries are imported."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, Router):
            root.removeHandler(handler)
    root.addHandler(Router(verbose))
    root.setLevel(logging.INFO)
    logging.getLogger("edgeport").setLevel(logging.INFO if verbose else logging.WARNING)
    for name in CAPPED:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


def stamp() -> str:
    """Local time for file names, sortable: 20261127-120304."""
    return time.strftime("%Y%m%d-%H%M%S")


def real_std_streams() -> bool:
    """Whether sys.stdout/sys.stderr are the process's fds 1 and 2 (not a test runner's buffers)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def captured(folder: Path, console):
    """While the block runs, third-party output goes to `folder/logs/<time>.log` and `console`
    (edgeport's rich console) still writes to the terminal. Yields the log's path. Folders made
    here are removed again when nothing was logged (a command that failed on its arguments)."""
    handler = router()
    verbose = handler.verbose if handler else False
    log = folder / "logs" / f"{stamp()}.log"
    made = [p for p in (log.parent, *log.parent.parents) if not p.exists()]
    log.parent.mkdir(parents=True, exist_ok=True)
    file = open(log, "a", encoding="utf-8")
    redirect = not verbose and real_std_streams()
    if handler:
        handler.attach(file)
        handler.console = console
    saved = None
    if redirect:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        terminal = os.fdopen(os.dup(saved[1]), "w", encoding=sys.stderr.encoding, errors="replace", buffering=1)
        console.file = terminal
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    try:
        yield log
    finally:
        if saved is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            console.file = None  # back to following sys.stderr
            terminal.close()
        if handler:
            handler.attach(None)
            handler.console = None
        file.close()
        if log.stat().st_size == 0:
            log.unlink()
            for path in made:
                try:
                    path.rmdir()
                except OSError:
                    break

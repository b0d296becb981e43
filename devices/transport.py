"""One small interface for every way of reaching a device: run a command, push, pull.

Commands are argv lists. Locally they run without a shell; on a remote device each argument
is quoted (`shlex.join`) for the remote shell, so a profile value such as `; rm -rf ~` is a
file name there, never a command.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from edgeport.devices.profiles import BaseProfile
from edgeport.errors import DeviceError


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: str
    killed: bool = False  # ended by a signal (kill -9, the OOM killer), not by exiting

    def __post_init__(self) -> None:
        # A signal shows as -N from subprocess, or 128+N through a shell.
        self.killed = self.killed or self.returncode < 0 or self.returncode in (128 + 9, 128 + 15)

    def tail(self, lines: int = 3) -> str:
        """The last lines of stderr on one line (what an error message quotes)."""
        return " | ".join(self.stderr.strip().splitlines()[-lines:]) or f"exit code {self.returncode}"


class Device(ABC):
    """A device edgeport can push files to and run the runner on."""

    def __init__(self, profile: BaseProfile):
        self.profile = profile
        self.name = profile.name

    @property
    def python(self) -> str:
        return self.profile.python or "python3"

    @property
    def workdir(self) -> str:
        return self.profile.workdir

    @abstractmethod
    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        """Run argv on the device; a transport failure (unreachable, timed out) raises DeviceError,
        the command's own exit code is returned."""

    def check(self, argv: list[str], timeout: float = 60, stdin: bytes | None = None, what: str = "") -> bytes:
        """Run argv and return its stdout; a non-zero exit is a DeviceError quoting stderr."""
        done = self.run(argv, timeout, stdin)
        if done.returncode != 0:
            raise DeviceError(f"device {self.name}: {what or shlex.join(argv)} failed: {done.tail()}")
        return done.stdout

    def push(self, files: dict[str, Path], remote_dir: str) -> None:
        """Copy local files to remote_dir/<name> (names may hold sub-folders), as one tar stream."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, path in files.items():
                tar.add(path, arcname=name)
        self.check(["mkdir", "-p", remote_dir], what=f"creating {remote_dir}")
        self.check(["tar", "-x", "-f", "-", "-C", remote_dir], timeout=600, stdin=buffer.getvalue(),
                   what=f"copying {len(files)} files to {remote_dir}")

    def read(self, remote_path: str) -> bytes:
        """A remote file's bytes."""
        return self.check(["cat", remote_path], timeout=300, what=f"reading {remote_path}")

    def remove(self, remote_path: str) -> None:
        """Best effort: a cleanup failure must not hide the error that led to it."""
        try:
            self.run(["rm", "-rf", remote_path], timeout=60)
        except DeviceError:
            pass

    def close(self) -> None:
        """Release connections (an SSH master)."""

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_local(argv: list[str], timeout: float, stdin: bytes | None, what: str) -> Completed:
    """subprocess.run with one DeviceError for a missing program or a timeout."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except FileNotFoundError as e:
        raise DeviceError(f"{what}: {argv[0]} not found; is it installed and on PATH?") from e
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"{what}: no answer within {timeout:.0f} s ({shlex.join(argv[:3])} …)") from e
    return Completed(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))

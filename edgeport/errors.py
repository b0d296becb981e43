"""One error family. A user error carries exit code 2; the CLI prints its message as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeportError(Exception):
    """Base for errors a user can fix; the CLI shows the message and exits with `exit_code`."""

    exit_code = 2


class ConfigError(EdgeportError):
    """A config file, option or model spec is wrong."""


class DataError(EdgeportError):
    """Calibration or evaluation data is unusable."""


class MissingDependencyError(EdgeportError):
    """An optional package is not installed."""


class ExportError(EdgeportError):
    """A converter failed on this model."""


class ArtifactIntegrityError(EdgeportError):
    """A file on disk no longer matches the hash recorded for it."""


class DeviceError(EdgeportError):
    """A device could not be reached or a command on it failed."""


class DeviceUnreachableError(DeviceError):
    """No connection to the device (refused, timed out, lost): nothing more can run there."""


class BundleError(EdgeportError):
    """A bundle is malformed, tampered with, or unsafe to unpack."""


class RunFolderBusyError(EdgeportError):
    """Another edgeport process is working in the same run folder."""


class BudgetNotMetError(EdgeportError):
    """`edgeport tune`: no candidate meets the [search] budget (the closest is named). `result` is
    the search's result (every candidate judged and timed), for reporting."""

    def __init__(self, message: str, result=None):
        self.result = result
        super().__init__(message)


class VerificationError(EdgeportError):
    """An artifact does not compute what the original did (outside tolerance), or could not be
    built, verified or timed. `failures` names each; `result` is the run's result, for reporting."""

    exit_code = 3

    def __init__(self, failures: list[str], result=None):
        self.failures, self.result = list(failures), result
        super().__init__(f"{len(self.failures)} failure(s): " + "; ".join(self.failures))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line, for quoting it in an error of ours."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else error.__class__.__name__


def require(module: str, extra: str):
    """Import an optional module, or raise one line naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'edgeport[{extra}]'"
        ) from e

"""report.json as a typed record (a public interface: `schema_version` 1; fields may be added,
none renamed without a version bump). `package` and `tune` read a run through this, never as a
loose dict."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeport.errors import ConfigError
from edgeport.types import BenchResult, TensorSpec

SCHEMA_VERSION = 1


class Entry(BaseModel):
    """One artifact of the run; one that could not be built has its error (and log) instead of files."""

    model_config = ConfigDict(extra="allow")

    id: str | None
    target: str
    precision: str
    variant: str | None = None
    converter: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    zip_bytes: int | None = None  # the model files deflated into one zip
    path: str | None = None  # the artifact folder, relative to the run folder
    files: list[dict] = Field(default_factory=list)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    options: dict = Field(default_factory=dict)
    verify: dict | None = None  # VerifyReport.summary()
    sensitivity: list[dict] = Field(default_factory=list)
    bench: list[BenchResult] = Field(default_factory=list)
    error: str | None = None
    log: str | None = None
    bench_errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.verify and self.verify.get("passed"))

    @property
    def best_p50_ms(self) -> float:
        return min((b.p50_ms for b in self.bench if b.p50_ms is not None), default=float("inf"))


class Baseline(BaseModel):
    target: str = "pytorch"
    precision: str = "fp32"
    verify: dict = Field(default_factory=dict)
    bench: list[BenchResult] = Field(default_factory=list)


class Report(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    run: str
    model: dict
    baseline: Baseline
    artifacts: list[Entry]
    compression: list[dict] = Field(default_factory=list)
    search: dict | None = None

    @classmethod
    def load(cls, run_dir: Path) -> Report:
        """A finished run's report.json; a missing or damaged one is one line."""
        path = run_dir / "report.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no report.json; is this a finished run folder?")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError and ValidationError are ValueErrors
            what = "not an edgeport report" if isinstance(e, ValidationError) else "truncated or not JSON"
            raise ConfigError(f"{path} is {what} ({e.__class__.__name__}); run the pipeline again") from e

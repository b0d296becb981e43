"""What every stage function is handed: the resolved config, the run folder's stage cache, the
listener for events and the tool versions. Stages take records and return records; none calls
back into a run object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeport.errors import ConfigError
from edgeport.pipeline.config import RunConfig
from edgeport.pipeline.stages import Event, Listener, Stages, tool_versions


@dataclass
class Workspace:
    config: RunConfig
    stages: Stages
    emit: Listener
    versions: dict = field(default_factory=tool_versions)

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @classmethod
    def open(cls, config: RunConfig, on_event: Listener | None = None, rebuild: bool = False) -> Workspace:
        """Check what can be checked before any work, and make the run folder."""
        from edgeport.pipeline.preflight import preflight

        preflight(config)  # a missing file or an unknown device fails before any work
        try:
            config.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {config.run_dir}: {e.strerror}; set runs_dir "
                              "(or --runs-dir) to a folder you can write") from e
        emit = on_event or (lambda event: None)
        return cls(config, Stages(config.run_dir, emit, rebuild), emit)

    def timed(self, stage: str, label: str, work):
        """Run `work()` between start and done events (for steps that are not cached stages)."""
        import time

        self.emit(Event("start", stage, label))
        started = time.perf_counter()
        result = work()
        self.emit(Event("done", stage, label, seconds=time.perf_counter() - started))
        return result

"""Device profiles: TOML files that say how to reach a device and what it runs.

Built-ins live in `devices/profiles/` (templates to copy); users keep theirs in a folder they
name (`--devices-dir`, `[devices] dir` in a run config, or EDGEPORT_DEVICES_DIR). A user
profile with a built-in's name wins. Each file holds one profile; its name defaults to the
file's stem.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeport.errors import ConfigError, did_you_mean
from edgeport.validation import explain, read_toml



def plain_word(value: str | None, tool: str, what: str) -> str | None:
    """A value `tool` gets as an argument of its own: never an option, never more than one word."""
    if value is None:
        return value
    if value.startswith("-"):
        raise ValueError(f"{value!r} must not start with '-' ({tool} would read it as an option); give {what}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} holds whitespace or control characters; give {what}")
    return value


class BaseProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    arch: str | None = Field(None, description="expected `uname -m` (x86_64, aarch64, armv7l); checked on connect")
    threads: int = Field(0, ge=0, description="inference threads; 0 = every core of the device")
    python: str = Field("python3", description="the interpreter on the device that runs edgeport's runner")
    workdir: str = Field("/tmp/edgeport", description="where pushed files go (each job in its own folder, removed after)")
    runtimes: list[str] = Field(default_factory=list, description="targets whose runtime the device is expected to have")

    @field_validator("runtimes")
    @classmethod
    def known_runtimes(cls, names: list[str]) -> list[str]:
        from edgeport import targets  # the target table: names only, no backend

        known = targets.available()
        for name in names:
            if name not in known:
                raise ValueError(f"unknown runtime {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
        return names
    timeout: float = Field(900.0, gt=0, description="seconds one benchmark may take on the device")
    source: str = Field("", exclude=True)  # the file it came from

    @property
    def address(self) -> str:
        return "this machine"


class LocalProfile(BaseProfile):
    transport: Literal["local"] = "local"
    python: str = Field("", description="empty = the Python running edgeport")
    workdir: str = ""  # empty = a fresh temporary folder


class SshProfile(BaseProfile):
    transport: Literal["ssh"]
    host: str | None = Field(None, description="host name or address (or use ssh_alias)")
    ssh_alias: str | None = Field(None, description="a Host entry of ~/.ssh/config: user, port, key and jump hosts from there")
    port: int | None = Field(None, gt=0, lt=65536)
    user: str | None = None
    identity_file: str | None = Field(None, description="private key file (~ is expanded)")
    ssh_config: str | None = Field(None, description="an ssh_config file to use instead of ~/.ssh/config (ssh -F)")
    connect_timeout: int = Field(10, gt=0, description="seconds to wait for the device to answer")
    options: dict[str, str] = Field(default_factory=dict, description="extra `ssh -o Key=Value` options")

    @field_validator("host", "ssh_alias", "user")
    @classmethod
    def not_an_option(cls, value: str | None, info) -> str | None:
        what = {"host": "a host name or address", "ssh_alias": "a Host entry of ~/.ssh/config",
                "user": "a user name"}[info.field_name]
        return plain_word(value, "ssh", what)

    @field_validator("options")
    @classmethod
    def option_names(cls, options: dict[str, str]) -> dict[str, str]:
        for key, value in options.items():
            if not key.isalnum() or "\n" in value:
                raise ValueError(f"ssh option {key!r}: names are letters and digits, values one line")
        return options

    def model_post_init(self, _context) -> None:
        if not (self.host or self.ssh_alias):
            raise ValueError("an ssh profile needs host or ssh_alias")

    @property
    def address(self) -> str:
        if self.ssh_alias:
            return f"ssh alias {self.ssh_alias}"
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"


class AdbProfile(BaseProfile):
    transport: Literal["adb"]
    serial: str | None = Field(None, description="adb serial (`adb devices`); empty = the only device attached")
    benchmark_model: str | None = Field(
        "/data/local/tmp/benchmark_model",
        description="path on the device of TFLite's benchmark_model binary (used for tflite artifacts)")
    python: str = Field("", description="a Python on the device (e.g. Termux) to run the runner instead; empty = none")
    workdir: str = "/data/local/tmp/edgeport"

    @field_validator("serial")
    @classmethod
    def not_an_option(cls, value: str | None) -> str | None:
        return plain_word(value, "adb", "the serial `adb devices` lists")

    @property
    def address(self) -> str:
        return f"adb {self.serial or '(only device)'}"


DeviceProfile = LocalProfile | SshProfile | AdbProfile
SCHEMAS: dict[str, type[BaseProfile]] = {"local": LocalProfile, "ssh": SshProfile, "adb": AdbProfile}


def parse_profile(data: dict, where: str, default_name: str) -> DeviceProfile:
    """Validate one profile mapping; every problem is one ConfigError line naming the file."""
    transport = data.get("transport", "local")
    schema = SCHEMAS.get(transport) if isinstance(transport, str) else None
    if schema is None:
        raise ConfigError(f"{where}: transport {transport!r} is not one of local, ssh, adb{did_you_mean(str(transport), SCHEMAS)}")
    try:
        return schema.model_validate({"name": default_name, **data, "source": where})
    except ValidationError as e:
        raise explain(e, where, schema) from None


def read_profile(path: Path) -> DeviceProfile:
    return parse_profile(read_toml(path), str(path), path.stem)


def builtin_dir() -> Path:
    return Path(str(files("edgeport.devices") / "profiles"))


def user_dir(devices_dir: str | Path | None) -> Path | None:
    chosen = devices_dir or os.environ.get("EDGEPORT_DEVICES_DIR")
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ConfigError(f"devices folder not found: {path}")
    return path


def all_profiles(devices_dir: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles, then the user's (which win on a name clash)."""
    found: dict[str, DeviceProfile] = {}
    for folder in (builtin_dir(), user_dir(devices_dir)):
        if folder is not None:
            for path in sorted(folder.glob("*.toml")):
                profile = read_profile(path)
                if folder == builtin_dir():
                    profile.source = f"built-in ({path.name})"
                found[profile.name] = profile
    found.setdefault("local", LocalProfile(name="local", description="this machine", source="built-in"))
    return found


def get_profile(name: str, devices_dir: str | Path | None = None) -> DeviceProfile:
    profiles = all_profiles(devices_dir)
    if name not in profiles:
        where = f" (profiles in {user_dir(devices_dir)} and the built-ins)" if user_dir(devices_dir) else ""
        raise ConfigError(f"unknown device {name!r}{did_you_mean(name, profiles)}; known: {', '.join(profiles)}{where}")
    return profiles[name]

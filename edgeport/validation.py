"""Turn a pydantic ValidationError into one line a user can act on (shared by run configs and
device profiles)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edgeport.errors import ConfigError, did_you_mean


def read_toml(path: Path) -> dict:
    """A TOML file's table; a file that is not UTF-8 text or not TOML is one ConfigError line."""
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from None


def known_keys(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` in `schema`, for suggesting the nearest one."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = schema.model_fields.get(part)
        if field is None:
            break
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            break
        schema = inner[0]
    return list(schema.model_fields)


def explain(error: ValidationError, where: str, schema: type[BaseModel]) -> ConfigError:
    """One line for the first problem pydantic found, with the nearest valid key for a typo."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    dotted = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        hint = did_you_mean(key, known_keys(schema, loc))
        message = f"{where}: unknown key {dotted!r}{hint}"
    elif first["type"] == "missing":
        message = f"{where}: missing required key {dotted!r}"
    else:
        got = first.get("input")
        shown = f" (got {got!r})" if first["type"] != "value_error" and not isinstance(got, dict | list) else ""
        text = first["msg"].removeprefix("Value error, ")
        message = f"{where}: {dotted + ': ' if dotted else ''}{text}{shown}"
    more = len(error.errors()) - 1
    return ConfigError(message + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""))

"""Typed configuration: dataclasses filled from a YAML preset plus `key=value` overrides.

Every job's config is a tree of dataclasses. Loading checks every key and value against the
dataclass types, so a typo or a wrong type is an error that names the key, never a silently
ignored setting. Presets live in `configs/<job>/NAME.yaml` (installed as the package `reelmill_configs`,
so they are found from any working directory and from a wheel); `--config` also takes a path.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.resources
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

CONFIG_ROOT = Path(os.fspath(importlib.resources.files("reelmill_configs")))
"""configs/ in the source tree; a wheel installs its files on disk, so this is a plain directory."""


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds (used by __post_init__ range checks)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML value to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{name}'{hint}")
        kwargs[name] = _convert(value, hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default is missing
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config, as written to run.json."""
    return dataclasses.asdict(cfg)


def fingerprint(cfg: Any, ignore: tuple[str, ...] = ()) -> str:
    """A stable hash of a config, used to refuse resuming a run under a different config; sections and
    dotted keys in `ignore` (settings that do not change what a run writes to its shards, such as
    `report` or `io.request_timeout_s`) are left out."""
    data = to_dict(cfg)
    for dotted in ignore:
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested mapping in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set: malformed key {dotted!r}")
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set: '{'.'.join(keys[: i + 1])}' is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def resolve_preset(job: str, name_or_path: str | None) -> Path | None:
    """A preset name under configs/<job>/ or a path to a YAML file."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_ROOT / job / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    available = sorted(p.stem for p in (CONFIG_ROOT / job).glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset ({', '.join(available)})")


def load(cls: type[T], job: str, preset: str | None = None, overrides: list[str] | None = None) -> T:
    """Load a job config: dataclass defaults, then the preset (name or path), then `--set` overrides."""
    data: dict = {}
    path = resolve_preset(job, preset)
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    for assignment in overrides or []:
        apply_override(data, assignment)
    return from_dict(cls, data)

"""Typed run configs: frozen dataclasses, named presets, and checked ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from vlmkit.errors import InputError

__all__ = ["apply_overrides", "preset_config", "check_at_least", "config_to_dict", "config_from_dict"]

C = TypeVar("C")


def _parse(name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(name, raw, arg)
            except InputError:
                continue
        raise InputError(f"{name}: cannot read {raw!r} as {kind}")
    if origin is typing.Literal:
        if raw not in args:
            raise InputError(f"{name}: must be one of {', '.join(map(str, args))}, got {raw!r}")
        return raw
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{name}: expected true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise InputError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
    if kind is str:
        return raw
    raise InputError(f"{name}: cannot be set from the command line")


def apply_overrides(config: C, overrides: list[str]) -> C:
    """Return ``config`` with ``key=value`` overrides applied; unknown keys and bad values are errors."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise InputError(f"override {item!r}: expected key=value")
        if key not in fields:
            raise InputError(f"unknown config key {key!r}; known: {', '.join(sorted(fields))}")
        changes[key] = _parse(key, raw.strip(), hints[key])
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def preset_config(presets: dict[str, C], preset: str, overrides: list[str] | None = None) -> C:
    """The named preset with ``key=value`` overrides applied; an unknown name is a one-line error."""
    if preset not in presets:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    return apply_overrides(presets[preset], overrides or [])


def check_at_least(config: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """Refuse a config whose named fields (counts, sizes, steps) are below ``minimum``."""
    for name in names:
        if getattr(config, name) < minimum:
            raise InputError(f"{name} must be at least {minimum}, got {getattr(config, name)}")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - fields
    if unknown:
        raise InputError(f"unknown config keys: {', '.join(sorted(unknown))}")
    return cls(**data)


def dumps(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=1)

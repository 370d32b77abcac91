"""Typed run configs: frozen dataclasses, named presets, and checked ``key=value`` overrides.

Every recipe's config nests the same two parts: :class:`RunConfig` (how long and how the run
optimises) as ``run`` and :class:`DataConfig` (which training examples it reads) as ``data``. An
override names a field by its path: ``run.lr=3e-4``, ``data.name=easy-vqa``, ``mapper=mlp``. Older
scripts' flat names still work: a field of ``run`` or ``data`` named alone (``lr=3e-4``,
``train_size=500``), and the names in :data:`ALIASES` (``data=easy-vqa`` for ``data.name``, say).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from vlmkit.errors import InputError

__all__ = [
    "RunConfig", "DataConfig", "apply_overrides", "preset_config", "check_at_least", "config_to_dict", "config_from_dict",
    "data_seed", "dumps",
]

C = TypeVar("C")

#: Flat names of older scripts that now live under another path (used where that path exists).
ALIASES = {
    "seed": "run.seed", "data_seed": "data.seed", "data": "data.name",
    "qformer_init": "qformer.init", "scratch_layers": "qformer.layers", "scratch_hidden": "qformer.hidden",
}


@dataclass(frozen=True)
class RunConfig:
    """How a run optimises, the same fields for every recipe: AdamW with no decay on norms, biases
    and learned tokens, a cosine schedule after ``warmup_steps`` of linear warm-up."""

    #: Sets the initialisation, the batch order and every sampling draw (and the data when
    #: ``data.seed`` is unset): two runs with the same seed and config train the same model.
    seed: int = 0
    batch_size: int = 32  # per process; the global batch is batch_size x processes x grad_accum
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int = 500
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = 0  # steps between resumable checkpoints; 0 saves only at the end
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("batch_size", "grad_accum", "max_steps", "log_every"))
        check_at_least(self, ("warmup_steps", "save_every"), 0)
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must not be negative, got {self.weight_decay}")


@dataclass(frozen=True)
class DataConfig:
    """Which training examples a run reads (:func:`vlmkit_train.data.training_examples`): a
    built-in set, or any dataset :func:`vlmkit.data.read_dataset` reads."""

    #: "shapes" (the generated shapes world) or "easy-vqa" (the easy-vqa package's train split).
    name: Literal["shapes", "easy-vqa"] = "shapes"
    #: At most this many examples are read (the first ones), from ``name`` or ``spec``.
    train_size: int = 2000
    image_size: int = 64  # shapes scenes' side in pixels
    #: The shapes scenes' stream; None uses ``run.seed``, so runs that set it apart from the seed
    #: differ only in initialisation and batch order, not in data.
    seed: int | None = None
    #: A :func:`vlmkit.data.read_dataset` spec to train on instead of ``name`` (``coco:ANN.json:IMAGES``,
    #: ``folder:DIR``, ``wds:SHARDS``, a ``vlmkit bootstrap`` dataset's spec, ...): its first
    #: ``train_size`` examples with what the task needs (captions, or question-answer pairs).
    spec: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "image_size"))


def data_seed(config: Any) -> int:
    """The seed of a config's training data: ``data.seed``, else ``run.seed``."""
    return config.run.seed if config.data.seed is None else config.data.seed


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


def _nested(config: Any) -> dict[str, Any]:
    """The config's fields that are configs themselves (``run``, ``data``), by name."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))}


def _paths(config: Any, prefix: str = "") -> list[str]:
    paths = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        paths.extend(_paths(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name])
    return paths


def _resolve(config: Any, key: str) -> str:
    """The full path an override key names: itself, an alias, or the one nested field of that name."""
    known = _paths(config)
    if key in known:
        return key
    if key in ALIASES and ALIASES[key] in known:
        return ALIASES[key]
    owners = [name for name, part in _nested(config).items() if key in {f.name for f in dataclasses.fields(part)}]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if owners:
        raise InputError(f"config key {key!r} is ambiguous; name it by its path: {', '.join(f'{o}.{key}' for o in owners)}")
    raise InputError(f"unknown config key {key!r}; known: {', '.join(sorted(known))}")


def _replace(config: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if rest:
        return dataclasses.replace(config, **{head: _replace(getattr(config, head), rest, value)})
    return dataclasses.replace(config, **{head: value})


def apply_overrides(config: C, overrides: list[str]) -> C:
    """Return ``config`` with ``key=value`` overrides applied; unknown keys and bad values are errors."""
    changes: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise InputError(f"override {item!r}: expected key=value")
        changes[_resolve(config, key)] = raw.strip()
    # Nested parts check their fields together (a part's __post_init__ runs once per replace), so
    # every value is parsed first and each part is rebuilt with all of its changes at once.
    parsed: dict[str, dict[str, Any]] = {}
    for path, raw in changes.items():
        *parents, name = path.split(".")
        owner: Any = config
        for part in parents:
            owner = getattr(owner, part)
        parsed.setdefault(".".join(parents), {})[name] = _parse(path, raw, typing.get_type_hints(type(owner))[name])
    top = parsed.pop("", {})
    for parent, fields in parsed.items():
        owner = config
        for part in parent.split("."):
            owner = getattr(owner, part)
        top[parent] = dataclasses.replace(owner, **fields)
    return dataclasses.replace(config, **top)  # type: ignore[type-var]


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
    """A config from its dict (nested parts as dicts); unknown keys are an error at every level."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise InputError(f"unknown config keys: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    values = {
        name: config_from_dict(hints[name], value) if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) else value
        for name, value in data.items()
    }
    return cls(**values)


def dumps(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=1)

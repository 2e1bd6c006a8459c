"""Typed configuration: defaults (dataclasses) -> YAML file(s) -> ``--set a.b=c`` overrides.

Every stage owns a nested dataclass. ``resolve`` merges the layers as plain dicts, then builds
the dataclass while checking every key and type, so an error names the exact key to change
(``example.num_videos: expected int, got 'ten'``). The resolved config is saved with each
artifact via ``to_dict``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union

from .errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A resolved config as plain JSON-able data."""
    return dataclasses.asdict(cfg)


def omit_when(data: dict, **values: Any) -> dict:
    """``data`` without each key ``k`` whose value is ``values[k]``: how an artifact key leaves out
    a setting at the value every run had before the setting existed, so older keys stay valid."""
    return {k: v for k, v in data.items() if not (k in values and v == values[k])}


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


class Override(str):
    """A ``--set`` value: the text as typed, plus its YAML reading.

    A string field takes the text verbatim (``--set jsonl.path=2024-01-01.jsonl`` stays a path,
    not a date); every other field takes the YAML value (``3``, ``true``, ``[1, 2]``, ``null``).
    """

    parsed: Any

    def __new__(cls, raw: str, parsed: Any) -> "Override":
        obj = super().__new__(cls, raw)
        obj.parsed = parsed
        return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], Override("c")), the value kept as text and as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set example.train_videos=12")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        parsed = raw
    return key.split("."), Override(raw, parsed)


def merge(base: dict, update: dict) -> dict:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve(
    cls: type[T],
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    layers: Iterable[dict] = (),
) -> T:
    """Build ``cls`` from its defaults, then ``layers`` (dicts), YAML ``files``, then ``overrides``."""
    # Start from the defaults as data so a mapping-valued field (e.g. a split table) can be
    # changed one entry at a time with --set.
    data: dict = to_dict(cls())
    for layer in layers:
        data = merge(data, layer)
    for path in files:
        data = merge(data, load_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = merge(data, nested)
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known at this level: {known})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _convert(tp: Any, value: Any, key: str) -> Any:
    if isinstance(value, Override):
        if tp is str:
            value = str(value)
        elif typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp):
            value = None if str(value).strip() in ("null", "~") else str(value)
        else:
            value = value.parsed
    origin = typing.get_origin(tp) or (tp if tp in (list, tuple, dict) else None)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}': expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads '2e-3' (no dot) as a string
        raise ConfigError(f"config key '{key}': expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def check(condition: bool, key: str, message: str) -> None:
    """Validation helper for ``__post_init__``: raises a ConfigError naming ``key``."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _value_text(value: Any) -> str:
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return json.dumps(value)


def config_keys(cls: type, marked: Iterable[str] = (), leave_out: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(group, "key (default), ...")`` of a config dataclass for ``--help``: one group for the
    top-level keys (``""``), then one per nested section (``"loader"``: its keys, deeper ones
    dotted). A ``Literal`` key shows its choices: ``segment_mode (clips | chunks; clips)``;
    keys in ``marked`` get ``*``; keys in ``leave_out`` are not listed."""
    marked, leave_out = set(marked), set(leave_out)
    defaults = cls()
    groups: dict[str, list[str]] = {"": []}

    def walk(obj: Any, group: str, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                if not group:
                    groups.setdefault(f.name, [])
                walk(value, group or f.name, f"{prefix}{f.name}." if group else "")
                continue
            text = _value_text(value)
            if typing.get_origin(hints.get(f.name)) is Literal:
                text = f"{' | '.join(str(c) for c in typing.get_args(hints[f.name]))}; {text}"
            name = f"{prefix}{f.name}"
            full = f"{group}.{name}" if group else name
            if full in leave_out:
                continue
            star = "*" if full in marked else ""
            groups[group].append(f"{name}{star} ({text})")

    walk(defaults, "", "")
    return [(group, ", ".join(items)) for group, items in groups.items() if items]

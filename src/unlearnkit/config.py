"""Configs: YAML presets, ``key=value`` overrides, and dataclass validation with helpful errors."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.errors import ConfigError, did_you_mean

PRESET_PACKAGE = "unlearnkit.presets"


def preset_names() -> list[str]:
    root = resources.files(PRESET_PACKAGE)
    out = []
    for p in _walk(root):
        rel = str(p).split("presets/", 1)[-1]
        if rel.endswith(".yaml"):
            out.append(rel[: -len(".yaml")])
    return sorted(out)


def _walk(node):
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def load_preset(name_or_path: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset by name (``vision/salun``) or a YAML file path; ``inherit: BASE`` merges it over BASE.

    An empty file and an inheritance cycle are ConfigErrors."""
    p = Path(name_or_path)
    me = str(p.resolve()) if p.suffix in (".yaml", ".yml") else str(name_or_path)
    if me in _chain:
        cycle = " -> ".join([*_chain[_chain.index(me) :], me])
        raise ConfigError(f"preset {name_or_path!r} inherits itself ({cycle}); remove the cycle of inherit:")
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file {name_or_path!r} not found")
        text = p.read_text()
    else:
        node = resources.files(PRESET_PACKAGE).joinpath(f"{name_or_path}.yaml")
        if not node.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}: {did_you_mean(name_or_path, preset_names())}"
            )
        text = node.read_text()
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{name_or_path!r} is not valid YAML{where}: {problem}") from None
    if cfg is None:
        raise ConfigError(
            f"{name_or_path!r} is empty: write the config in it (e.g. 'inherit: vision/ga'), or pass --preset"
        )
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name_or_path!r} must hold a YAML mapping at the top level")
    base = cfg.pop("inherit", None)
    if base:
        cfg = merge(load_preset(base, (*_chain, me)), cfg)
    return cfg


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, recursively. A section of another ``kind`` (``split: {kind: class}`` over
    a ``kind: random`` split) replaces the base section instead of mixing the options of two kinds."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and _same_kind(out[k], v):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _same_kind(base: dict, over: dict) -> bool:
    return "kind" not in over or "kind" not in base or base["kind"] == over["kind"]


def refuse_ignored(overrides: list[str], ignored: dict[str, str]) -> None:
    """A one-line ConfigError for an override of a key the command sets itself, which would change
    nothing (``ignored``: key -> what sets it instead); a composite part's ``PART:key=value`` too."""
    for o in overrides:
        key = o.split("=", 1)[0].strip().rsplit(":", 1)[-1]
        if key in ignored:
            raise ConfigError(f"{o!r} would change nothing: {ignored[key]}")


NAMED_SECTIONS = ("model", "data")  # sections whose ``name`` picks a builder or loader with its own options


def _resets(key: str) -> bool:
    """Whether an override of ``key`` that changes its value resets its section (see apply_overrides)."""
    parts = key.strip().split(".")
    if len(parts) > 1 and parts[-1] == "kind":
        return True
    return len(parts) == 2 and parts[0] in NAMED_SECTIONS and parts[1] == "name"


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML (``0.1``, ``true``, ``[1, 2]``).

    ``sec.kind=...`` overrides go first: one that changes the kind of a section resets that section to the
    new kind alone (``split.kind=class split.classes=3`` over a random split drops ``split.forget``). So do
    ``model.name=`` and ``data.name=``, whose options belong to the builder or loader they name:
    ``model.name=resnet-tiny`` over the vision presets' MLP drops its ``hidden`` and ``depth``."""
    out = copy.deepcopy(cfg)
    kinds = [o for o in overrides if _resets(o.split("=", 1)[0])]
    for item in kinds + [o for o in overrides if o not in kinds]:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. method.lr=0.01)")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is a value, not a section")
            node = nxt
        if _resets(key) and node.get(parts[-1], value) != value:
            node.clear()
        node[parts[-1]] = value
    return out


def build_dataclass(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Instantiate a config dataclass, rejecting unknown keys and wrong types with a clear message."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"unknown option {where}.{unknown[0]}: {did_you_mean(unknown[0], list(fields))}")
    hints = typing.get_type_hints(cls)
    clean = {}
    for k, v in values.items():
        clean[k] = _coerce(v, hints.get(k, Any), f"{where}.{k}")
    try:
        obj = cls(**clean)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {where}: {exc}") from exc
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def _coerce(v: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any or hint is None:
        return v
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {v!r}")
    if hint is float:
        if isinstance(v, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be a number, got {v!r}")
        return float(v)
    if hint is int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ConfigError(f"{where} must be an integer, got {v!r}")
        return int(v)
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where} must be true or false, got {v!r}")
        return v
    if hint is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where} must be a string, got {v!r}")
        return v
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a sub-section (eval.lm_eval)
        if not isinstance(v, dict):
            names = ", ".join(f.name for f in dataclasses.fields(hint))
            raise ConfigError(f"{where} must be a section with the options {names}, got {v!r}")
        return build_dataclass(hint, v, where)
    if origin is list:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {v!r}")
        (inner,) = typing.get_args(hint) or (Any,)
        return [_coerce(x, inner, where) for x in v]
    return v


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def call_with_options(fn: Any, args: tuple, options: dict[str, Any], what: str) -> Any:
    """Call ``fn(*args, **options)`` after checking ``options`` against its signature.

    An unknown or missing option becomes a ConfigError that lists what ``fn`` accepts (``what`` names the
    config section, e.g. "dataset 'tofu'"); TypeErrors raised *inside* ``fn`` are not mislabelled.
    """
    sig = inspect.signature(fn)
    try:
        sig.bind(*args, **options)
    except TypeError as exc:
        accepted = [
            p.name
            for p in list(sig.parameters.values())[len(args) :]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [k for k in options if k not in accepted]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            raise ConfigError(
                f"{what} has no option {unknown[0]!r}: {did_you_mean(unknown[0], accepted)}"
            ) from None
        raise ConfigError(f"bad options for {what}: {exc}; it accepts {', '.join(accepted)}") from None
    return fn(*args, **options)

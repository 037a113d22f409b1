"""Registries of methods, families, datasets and models, filled by decorators at import time."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from unlearnkit.errors import UnlearnkitError, did_you_mean

_METHODS: dict[str, type] = {}
_FAMILIES: dict[str, type] = {}
_DATASETS: dict[str, Callable[..., Any]] = {}
_MODELS: dict[str, Callable[..., Any]] = {}

# Modules whose import registers the built-in entries. Kept lazy so `import unlearnkit` stays fast.
_BUILTIN_MODULES = (
    "unlearnkit.families.vision",
    "unlearnkit.families.text",
    "unlearnkit.methods.retrain",
    "unlearnkit.methods.ft",
    "unlearnkit.methods.ga",
    "unlearnkit.methods.rl",
    "unlearnkit.methods.salun",
    "unlearnkit.methods.l1_sparse",
    "unlearnkit.methods.iu",
    "unlearnkit.methods.boundary",
    "unlearnkit.methods.scrub",
    "unlearnkit.methods.graddiff",
    "unlearnkit.methods.npo",
    "unlearnkit.methods.simnpo",
    "unlearnkit.methods.dpo",
    "unlearnkit.methods.rmu",
    "unlearnkit.methods.idknll",
    "unlearnkit.methods.wga",
    "unlearnkit.methods.satimp",
    "unlearnkit.methods.ceu",
    "unlearnkit.methods.undial",
    "unlearnkit.methods.pdu",
    "unlearnkit.data.digits",
    "unlearnkit.data.cifar",
    "unlearnkit.data.imagefolder",
    "unlearnkit.data.tofu",
    "unlearnkit.data.synthetic_authors",
    "unlearnkit.data.muse",
    "unlearnkit.data.synthetic_muse",
    "unlearnkit.models.cnn",
    "unlearnkit.models.resnet",
    "unlearnkit.models.mlp",
    "unlearnkit.models.tiny_lm",
    "unlearnkit.families.diffusion",
    "unlearnkit.methods.esd",
    "unlearnkit.methods.advunlearn",
    "unlearnkit.methods.uce",
    "unlearnkit.methods.fmn",
    "unlearnkit.data.shapes",
    "unlearnkit.data.class_prompts",
    "unlearnkit.models.t2i",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def _register(table: dict, kind: str, name: str) -> Callable:
    def deco(obj):
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        return obj

    return deco


def register_method(name: str) -> Callable:
    """Class decorator: ``@register_method("salun")``."""

    def deco(cls):
        cls.name = name
        return _register(_METHODS, "method", name)(cls)

    return deco


def register_family(name: str) -> Callable:
    def deco(cls):
        cls.name = name
        return _register(_FAMILIES, "family", name)(cls)

    return deco


def register_dataset(name: str) -> Callable:
    return _register(_DATASETS, "dataset", name)


def register_model(name: str) -> Callable:
    return _register(_MODELS, "model", name)


def _get(table: dict, kind: str, name: str):
    _load_builtins()
    if name not in table:
        raise UnlearnkitError(f"unknown {kind} {name!r}: {did_you_mean(name, list(table))}")
    return table[name]


def get_method(name: str) -> type:
    return _get(_METHODS, "method", name)


def get_family(name: str) -> type:
    return _get(_FAMILIES, "family", name)


def get_dataset(name: str) -> Callable[..., Any]:
    return _get(_DATASETS, "dataset", name)


def get_model(name: str) -> Callable[..., Any]:
    return _get(_MODELS, "model", name)


def list_methods() -> list[dict[str, Any]]:
    """One dict per registered method: name, families, summary and its paper reference."""
    _load_builtins()
    out = []
    for name in sorted(_METHODS):
        cls = _METHODS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        fams = sorted(_FAMILIES) if "*" in cls.families else list(cls.families)
        out.append(
            {
                "name": name,
                "families": fams,
                "summary": doc[0] if doc else "",
                "paper": getattr(cls, "paper", ""),
                "exact": bool(getattr(cls, "exact", False)),
            }
        )
    return out


def supports(method_cls: type, family: str) -> bool:
    return "*" in method_cls.families or family in method_cls.families


def list_names(kind: str) -> list[str]:
    _load_builtins()
    table = {"method": _METHODS, "family": _FAMILIES, "dataset": _DATASETS, "model": _MODELS}[kind]
    return sorted(table)

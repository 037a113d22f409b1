"""The registry of suite kinds (``kind:`` in a suite preset): ``plain``, ``worstcase``, ``sequential`` and
``composite``, each a function registered with :func:`register_kind` that runs a :class:`SuiteRequest`.

``bench/suite.py`` imports every kind module (which registers it) and dispatches through :func:`get_kind`;
the kinds import only this module, ``results``, ``rows`` and ``loop``, never ``suite``. A composite suite
runs its parts through the request's ``run_suite`` (handed in by ``bench/suite.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.bench.rows import RowRunner
from unlearnkit.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class SuiteRequest:
    """One ``run_suite`` call: the suite's config (loaded with its methods and overrides, or the raw preset
    for a kind with ``parts``), where it writes, and the row runner that computes its rows."""

    name: str
    cfg: dict[str, Any]
    seeds: int | None
    out: Path
    methods: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    progress: bool = True
    fresh: bool = False
    runner: RowRunner = field(default_factory=RowRunner)
    run_suite: Callable[..., dict[str, Any]] | None = None  # for kinds made of other suites
    report: Callable[[Path], dict[str, Path]] | None = None  # writes a report of a folder of suites
    tune: bool = False  # plain suites: each method's lr and epochs from ``tune`` (no oracle), per seed

    @property
    def n_seeds(self) -> int:
        """The seed count of a single suite: ``seeds``, default 1."""
        return 1 if self.seeds is None else self.seeds


@dataclass(frozen=True)
class SuiteKind:
    """A registered kind. ``parts``: the kind runs other suites (its config is the raw preset, not loaded
    as one suite, and ``seeds=None`` means each part's own count)."""

    name: str
    run: Callable[[SuiteRequest], dict[str, Any]]
    parts: bool = False


_KINDS: dict[str, SuiteKind] = {}


def register_kind(name: str, parts: bool = False) -> Callable:
    """Function decorator: ``@register_kind("sequential")`` registers ``fn(request) -> result``."""

    def deco(fn: Callable[[SuiteRequest], dict[str, Any]]) -> Callable[[SuiteRequest], dict[str, Any]]:
        if name in _KINDS and _KINDS[name].run is not fn:
            raise ValueError(f"suite kind {name!r} is registered twice")
        _KINDS[name] = SuiteKind(name, fn, parts)
        return fn

    return deco


def get_kind(name: str | None) -> SuiteKind:
    """The registered kind ``name`` (None: ``plain``); an unknown kind is a one-line ConfigError."""
    name = name or "plain"
    if name not in _KINDS:
        raise ConfigError(f"unknown suite kind {name!r}: {did_you_mean(name, sorted(_KINDS))}")
    return _KINDS[name]


def kind_names() -> list[str]:
    return sorted(_KINDS)

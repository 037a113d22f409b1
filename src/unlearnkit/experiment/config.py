"""A run's config: the defaults, merged with the user's sections and checked before any work starts.

Every section is validated against a schema: ``engine``, ``train`` and ``method`` against their config
dataclasses, ``eval`` against the protocol's, ``split`` against the family's split kinds, ``data`` and
``model`` against the loader's and the builder's signatures (at set-up), so a typo is one line with a
did-you-mean, never silently ignored."""

from __future__ import annotations

from typing import Any

from unlearnkit.attacks.relearn import check_attack
from unlearnkit.config import merge
from unlearnkit.errors import ConfigError, did_you_mean
from unlearnkit.experiment.oracle_source import parse_section

DEFAULTS: dict[str, Any] = {
    "family": "vision",
    "seed": 0,
    "data": {"name": "digits"},
    "split": {"kind": "random", "forget": 0.1},
    "model": {"name": "resnet-tiny", "path": None},
    "train": {
        "epochs": 30,
        "lr": 0.1,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "scheduler": "cosine",
    },
    "method": {"name": "salun"},
    "engine": {},
    "eval": {},
    "out": None,
    "family_options": {},
}
# ``oracle`` has no default (configs without it resolve as before): see experiment/oracle_source.py
TOP_KEYS = set(DEFAULTS) | {"suite", "methods", "description", "oracle", "attack"}
SECTIONS = ("data", "split", "model", "train", "method", "engine", "eval")
# a suite's own keys, which a single run never reads
SUITE_KEYS = ("suite", "methods", "kind", "parts", "plot", "requests", "mode", "caption", "keys")


def check_single_run(cfg: dict[str, Any], source: str | None) -> None:
    """Refuse a suite's keys in a single run's config (``unlearn``, ``tune``, ``train``, ``evaluate``):
    the run would ignore them and use ``method:``, by default SalUn. ``source``: where the config came
    from, for the message (``--preset NAME``, or None for an override)."""
    found = [k for k in SUITE_KEYS if k in cfg]
    if not found:
        return
    if source is None:
        hint = "; a single run's method is set with method.KEY=VALUE, e.g. method.lr=0.01"
        raise ConfigError(
            f"{found[0]!r} is a suite's key: it takes effect in unlearnkit bench SUITE, not in a single run"
            + (hint if found[0] == "methods" else "")
        )
    raise ConfigError(
        f"{source} is a suite (it has {found[0]!r}): run it with unlearnkit bench, or one of its methods "
        "with --preset vision/NAME (unlearnkit list presets)"
    )


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` over :data:`DEFAULTS` (a section of another ``kind`` replaces the default one, see
    :func:`unlearnkit.config.merge`); unknown top-level keys and non-mapping sections are refused."""
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise ConfigError(f"unknown config section {k!r}: {did_you_mean(k, sorted(TOP_KEYS))}")
    out = merge(DEFAULTS, cfg)
    for sec in SECTIONS:
        if not isinstance(out[sec], dict):
            raise ConfigError(f"config section {sec!r} must be a mapping, got {out[sec]!r}")
    parse_section(out.get("oracle"))  # an unknown oracle.* key or two sources fail here, before any work
    if out.get("attack") is not None:  # attack.relearn.*: its options checked and typed, before any training
        out["attack"] = check_attack(out["attack"])
    return out

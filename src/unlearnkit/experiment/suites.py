"""Loading a suite preset: its config with overrides applied and its ``methods:`` resolved to specs.

Here, below both the selection layer (``unlearnkit select worstcase`` reads a suite) and the bench layer
(``unlearnkit bench`` runs one), so that neither imports the other."""

from __future__ import annotations

from typing import Any

from unlearnkit.attacks.relearn import check_attack
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.errors import ConfigError


def suite_preset(name: str) -> str:
    """The preset path of suite ``name`` (a bare name lives in ``presets/suites/``)."""
    return name if "/" in name or name.endswith(".yaml") else f"suites/{name}"


def load_suite(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Suite ``name`` with ``overrides``; each ``methods:`` entry becomes a method spec with its ``name``
    (a string value names the preset whose ``method:`` section to use). The specs are resolved before the
    overrides apply, so ``methods.ga.lr=0.01`` changes one option of the preset's GA; a ``method.*``
    override, which a suite would ignore, is refused."""
    overrides = list(overrides or [])
    ignored = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] == "method"]
    if ignored:
        raise ConfigError(
            f"a suite runs the methods under its 'methods:', not 'method:' ({ignored[0]!r} would change "
            "nothing): set methods.NAME.KEY=VALUE, e.g. methods.ga.lr=0.01"
        )
    cfg = _resolve_methods(name, load_preset(suite_preset(name)), required=False)
    cfg = _resolve_methods(name, apply_overrides(cfg, overrides))
    if cfg.get("attack") is not None:  # a typo in attack.relearn.* failed after every row had trained
        cfg["attack"] = check_attack(cfg["attack"])
    return cfg


def _resolve_methods(name: str, cfg: dict[str, Any], required: bool = True) -> dict[str, Any]:
    if not isinstance(cfg.get("methods"), dict) or not cfg["methods"]:
        if not required:  # overrides may still give them
            return cfg
        raise ConfigError(f"suite {name!r} must list its methods under 'methods:'")
    for key, spec in list(cfg["methods"].items()):
        if isinstance(spec, str):  # the name of a preset whose method section to use
            spec = load_preset(spec).get("method", {})
        spec = dict(spec or {})
        spec.setdefault("name", key)
        cfg["methods"][key] = spec
    return cfg

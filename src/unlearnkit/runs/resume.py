"""Honest resumes: a run folder is continued only with the config it was started with.

``--resume`` compares the whole resolved config with the one saved in the run folder (``config.yaml``, written
when the run starts): any difference is refused with the list of differing keys, and another method always
is. ``--resume-with-changes`` continues anyway and records the change (both configs, the keys, and the
optimizer step of the checkpoint the run went on from) in ``config-changes.json``; the receipt, the
``config.yaml`` header and the model card repeat it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.errors import ConfigError

# keys that cannot change a result: the progress bar, where the run is written
IGNORED = ("engine.progress", "out")
_STEP = re.compile(r"^step-(\d+)$")


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from ``config.yaml`` (tuples become lists, 1e-3 a float)."""
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False)) or {}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (``{"method": {"lr": 1}}`` -> ``{"method.lr": 1}``)."""
    if not isinstance(config, dict) or (prefix and not config):
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in config.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two configs (a key missing on one side differs)."""
    a, b = flatten(normalized(saved)), flatten(normalized(current))
    keys = a.keys() | b.keys()
    return sorted(k for k in keys if k not in IGNORED and a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def check_resume(
    saved: dict[str, Any], current: dict[str, Any], allow_changes: bool, where: Path
) -> list[str]:
    """The changed keys, after refusing another method and (unless ``allow_changes``) any change."""
    old = (saved.get("method") or {}).get("name")
    new = (current.get("method") or {}).get("name")
    if old != new:
        raise ConfigError(
            f"--resume: {str(where)!r} holds a run of method {old!r}, not {new!r}; resume it with "
            f"method.name={old}, or pass --overwrite (or another --out) to start a {new} run"
        )
    keys = config_diff(saved, current)
    if keys and not allow_changes:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(current, k)!r})" for k in keys[:6])
        more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
        raise ConfigError(
            f"--resume with a config that differs from the run's in {len(keys)} key(s): {shown}{more}; "
            "resume with the saved config (config.yaml), or pass --resume-with-changes to continue and "
            "record both"
        )
    return keys


def _get(config: dict[str, Any], key: str) -> Any:
    return flatten(normalized(config)).get(key, "<absent>")


def latest_step(work: Path) -> int:
    """The optimizer step of the newest checkpoint under ``work/checkpoints`` (0 when there is none)."""
    steps = [
        int(m.group(1))
        for d in (work / "checkpoints").glob("*")
        if d.is_dir()
        for p in d.iterdir()
        if (m := _STEP.match(p.name))
    ]
    return max(steps, default=0)


def changes_header(changes: list[dict[str, Any]]) -> str:
    """YAML comment lines for ``config.yaml`` recording each resume with changes (the file stays loadable)."""
    if not changes:
        return ""
    lines = ["# This run was resumed with a changed config (see receipt.json, config_changes):"]
    for c in changes:
        lines.append(f"# at step {c['at_step']}, changed {', '.join(c['changed_keys'])}; the config before:")
        lines += [f"#   {ln}" for ln in yaml.safe_dump(c["before"], sort_keys=False).splitlines()]
    return "\n".join(lines) + "\n"

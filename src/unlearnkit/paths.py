"""Where unlearnkit keeps what it can rebuild: one cache root for originals, oracles, worlds and data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$UNLEARNKIT_CACHE``, else ``~/.cache/unlearnkit``."""
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit")).expanduser()

"""User-facing errors.

Every problem a user can fix (bad config, bad data, unknown name, missing file) raises
:class:`UnlearnkitError` with a message that says what is wrong *and* how to fix it. The CLI prints
these without a traceback and exits with status 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re


class UnlearnkitError(Exception):
    """A problem with the user's input, reported without a traceback by the CLI."""


class ConfigError(UnlearnkitError):
    """An invalid configuration value or key."""


class DataError(UnlearnkitError):
    """Invalid data or an invalid forget/retain split."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """A short hint listing close matches (or all choices) for an unknown name."""
    close = difflib.get_close_matches(name, choices, n=3)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}? (choices: {', '.join(sorted(choices))})"
    return f"choose one of: {', '.join(sorted(choices))}"


class ArgumentError(UnlearnkitError, ValueError):
    """A bad value passed to the Python API; the message names the API argument (``forget=``), not a
    config key. A ``ValueError`` for API users, and still an UnlearnkitError (exit 2) for the CLI."""


class ArgumentTypeError(UnlearnkitError, TypeError):
    """An API argument of the wrong type; the message names the argument and the accepted types."""


_METHOD_KEY = re.compile(r"\bmethod(?:\(\w+\))?\.(\w+)")


def api_phrased(message: str) -> str:
    """A method config message phrased for the Python API, where options are keyword arguments:
    ``method(ga).lr`` and ``method.lr`` become ``lr=``, ``method.name`` becomes ``method=``."""
    return _METHOD_KEY.sub(lambda m: "method=" if m.group(1) == "name" else f"{m.group(1)}=", message)

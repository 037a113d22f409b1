"""A trade-off figure per suite: each method's mean (± std) on two metrics, the oracle marked.

The axes are the protocol's (``Protocol.axes`` = (forgetting, utility)): utility on x, forgetting on y,
e.g. UA against TA for classifiers, forget quality against model utility for TOFU. A suite may name its own
with ``plot: {x: ..., y: ...}``. matplotlib is optional (``unlearnkit[plots]``): without it no figure is
written and the tables stay the whole result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnkit.bench.results import summarize
from unlearnkit.io import _atomic
from unlearnkit.registry import get_protocol


def axes_for(result: dict[str, Any]) -> tuple[str, str] | None:
    """(x, y) of the suite's trade-off plot: its ``plot`` section, else its protocol's (utility,
    forgetting); None when the result names no protocol with axes."""
    spec = result.get("plot")
    if spec:
        return spec["x"], spec["y"]
    name = result.get("protocol")
    axes = get_protocol(name).axes if name else None
    return None if axes is None else (axes[1], axes[0])


def tradeoff_plot(result: dict[str, Any], path: str | Path) -> Path | None:
    """Write a PNG scatter of the suite's methods on its two headline metrics; None if not possible."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xy = axes_for(result)
    if xy is None:
        return None
    x, y = xy
    summary = summarize(result["rows"], (x, y))
    pts = {m: d for m, d in summary.items() if x in d and y in d}
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for m, d in pts.items():
        style = {"marker": "*", "s": 220, "color": "black", "zorder": 3} if m == "retrain" else {"s": 60}
        ax.errorbar(d[x][0], d[y][0], xerr=d[x][1], yerr=d[y][1], fmt="none", alpha=0.4, ecolor="grey")
        ax.scatter(d[x][0], d[y][0], label=m, **style)
        ax.annotate(m, (d[x][0], d[y][0]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(
        f"{result['suite']}\n{y} vs {x}, mean ± std over {result['seeds']} seed(s); ★ = retrain", fontsize=10
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path

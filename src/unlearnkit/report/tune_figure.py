"""``tune.png``: a calibration's trials against the targets they were scored by (``unlearnkit tune --out``).

Four panels over the step size (log scale): the score (lower is better; the chosen trial starred), the
forget accuracy as UA with the band the score accepts, the membership verdict with its target, and RA and
TA with the floors below which the guards count. Each trial is a point coloured by its epochs, so a run
scored after every epoch reads as a column of points at one step size; the other published form of RL and
SalUn (``schedule=concat``) is drawn with squares. Reading it: the chosen step should sit where UA and MIA
reach their targets before RA and TA cross their floors.
"""

from __future__ import annotations

import math
from typing import Any

from unlearnkit.report.figures import Figure, _figure, _png
from unlearnkit.tuning import TuneResult, step_knob


def tune_figure(result: TuneResult) -> Figure | None:
    """The trials of ``result`` in four panels (module doc), or None when no trial finished."""
    drawn = draw(result)
    if drawn is None:
        return None
    fig, _, title, caption = drawn
    return Figure("tune", title, caption, _png(fig))


def draw(result: TuneResult) -> tuple[Any, list[Any], str, str] | None:
    """(matplotlib figure, four axes, title, caption) of :func:`tune_figure` (None: no trial finished)."""
    knob = step_knob(result.method)
    done = [t for t in result.trials if math.isfinite(t.score) and knob in t.options]
    if not done:
        return None
    aims = result.targets
    epochs = [int(t.options.get("epochs", 0)) for t in done]
    lo, hi = min(epochs), max(epochs)
    fig, axes = _figure(2, 2, width=9.0, height=6.4)
    panels: list[tuple[Any, str, list[tuple[str, str]], str]] = [
        (axes[0], "score (lower is better)", [("score", "o")], ""),
        (axes[1], "UA: 100 − forget accuracy", [("UA", "o")], "UA"),
        (axes[2], "MIA-Efficacy on the forget set", [("MIA", "o")], "MIA"),
        (axes[3], "RA (filled) and TA (open)", [("RA", "o"), ("TA", "open")], ""),
    ]
    points = None
    for ax, title, series, target in panels:
        for key, style in series:
            for concat in (False, True):
                rows = [
                    t for t in done if (t.options.get("schedule") == "concat") == concat and key in _values(t)
                ]
                if not rows:
                    continue
                x = [t.options[knob] for t in rows]
                y = [_values(t)[key] for t in rows]
                c = [int(t.options.get("epochs", 0)) for t in rows]
                marker = "s" if concat else "o"
                kw: dict[str, Any] = {"c": c, "cmap": "viridis", "vmin": lo, "vmax": max(hi, lo + 1)}
                if style == "open":  # TA: the colour on the edge only
                    kw = {"facecolors": "none", "edgecolors": _colours(c, lo, hi)}
                sc = ax.scatter(x, y, marker=marker, s=28, zorder=3, **kw)
                points = points if style == "open" else sc
        if target:
            _target(ax, aims, target, result.protocol)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    best = [t for t in done if t.options == result.best]
    if best:
        b = best[0]
        axes[0].scatter([b.options[knob]], [b.score], marker="*", s=220, c="red", zorder=4, label="chosen")
        axes[0].legend(fontsize=8)
    axes[3].axhline(aims["RA_min"], color="tab:blue", ls="--", lw=1, label=f"RA floor {aims['RA_min']:.1f}")
    axes[3].axhline(aims["TA_min"], color="tab:orange", ls=":", lw=1, label=f"TA floor {aims['TA_min']:.1f}")
    axes[3].legend(fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel(knob, fontsize=9)
    if points is not None and hi > lo:
        bar = fig.colorbar(points, ax=axes, label="epochs", shrink=0.6)
        from matplotlib.ticker import MaxNLocator

        ticks = MaxNLocator(nbins=8, integer=True).tick_values(lo, hi)
        bar.set_ticks([t for t in ticks if lo <= t <= hi])
    diverged = len(result.trials) - len(done)
    title = f"tune {result.method} ({result.protocol} forgetting): {len(result.trials)} trials"
    title += f", {diverged} diverged (not drawn)" if diverged else ""
    fig.suptitle(title, fontsize=10)
    concat = "; squares: schedule=concat" if any("schedule" in t.options for t in done) else ""
    caption = (
        f"{len(done)} trials of {result.method}'s {knob} and epochs, scored without a retrained model. "
        "Dashed lines and bands: the targets the score aims at and the RA/TA floors (tuning.aims); the star "
        f"is the chosen trial{concat}"
    )
    return fig, axes, title, caption + "."


def _values(t: Any) -> dict[str, float]:
    return t.signals | {"score": t.score}


def _colours(c: list[int], lo: int, hi: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap((v - lo) / (hi - lo)) if hi > lo else cmap(0.0) for v in c]


def _target(ax: Any, aims: dict[str, float], key: str, protocol: str) -> None:
    """The target of ``key``: a line, and for random UA the band the score accepts (± ``UA_spread``)."""
    ax.axhline(aims[key], color="black", ls="--", lw=1, label=f"target {aims[key]:.1f}")
    if key == "UA" and "UA_spread" in aims:
        s = aims["UA_spread"]
        ax.axhspan(aims[key] - s, aims[key] + s, color="grey", alpha=0.2, label=f"± {s:.1f}")
    ax.legend(fontsize=8, title=f"{protocol} forgetting", title_fontsize=8)

"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Each builder takes a :class:`~unlearnkit.report.collect.SuiteResult` and returns a :class:`Figure` (PNG
bytes plus a caption that says what is plotted and which direction is better), or None when the suite has
no data for it. :func:`suite_figures` runs every builder that applies.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unlearnkit.bench.results import summarize
from unlearnkit.registry import get_protocol
from unlearnkit.report.collect import SuiteResult, finite

ORACLE, ORIGINAL = "retrain", "original"
DPI = 110
MARKERS = "osD^vP<>Xph"

# What a lower or higher value of a metric means (for captions and panel titles).
DIRECTION = {
    "UA": "closer to the oracle is better",
    "TA": "higher is better",
    "RA": "higher is better",
    "gap": "lower is better",
    "forget_quality": "higher is better",
    "model_utility": "higher is better",
    "forget_truth_ratio": "closer to the oracle is better",
    "forget_rouge": "lower = more forgotten",
    "forget_prob": "lower = more forgotten",
    "verbmem_f": "lower = more forgotten, the oracle's level is the target",
    "knowmem_f": "lower = more forgotten",
    "knowmem_r": "higher is better",
    "verbmem_r": "higher is better",
    "privleak": "closer to 0 is better",
}


@dataclass
class Figure:
    """A rendered figure: ``slug`` names its PNG file, ``caption`` explains it."""

    slug: str
    title: str
    caption: str
    png: bytes


# -- helpers ------------------------------------------------------------------------------------------------
def _figure(ncols: int = 1, nrows: int = 1, width: float = 7.0, height: float = 4.3):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def stats(
    rows: list[dict[str, Any]], keys: list[str] | tuple[str, ...]
) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> key -> (mean, std over seeds), finite values only (bench.results.summarize)."""
    clean = [r | {"metrics": {k: v for k, v in r["metrics"].items() if finite(v)}} for r in rows]
    return summarize(clean, tuple(keys))


def colors(methods: list[str]) -> dict[str, Any]:
    """One colour per method, fixed within a suite: the oracle black, the original grey."""
    import matplotlib

    others = [m for m in methods if m not in (ORACLE, ORIGINAL)]
    if len(others) <= 9:  # tab10 without its grey, which is the original's
        palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    else:
        palette = list(matplotlib.colormaps["tab20"].colors)
    out: dict[str, Any] = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    out[ORACLE], out[ORIGINAL] = "black", "dimgray"
    return out


def _seeds_text(suite: SuiteResult) -> str:
    n = suite.seeds
    return f"mean ± std over {n} seeds" if n > 1 else "one seed (no error bars)"


def _direction(key: str) -> str:
    base = key.removesuffix("_relearned")
    return DIRECTION.get(base, "")


def _scatter(ax: Any, st: dict, x: str, y: str, col: dict[str, Any], logy: bool = False) -> None:
    """Each method's mean (x, y) with std error bars; the oracle a big black star, the original grey."""
    k = 0
    spots: dict[tuple[float, float], list[str]] = {}
    for m, d in st.items():
        if x not in d or y not in d:
            continue
        (mx, sx), (my, sy) = d[x], d[y]
        spots.setdefault((round(mx, 9), round(my, 9)), []).append(m)
        if logy:
            my = max(my, 1e-300)
            sy = (min(sy, my * 0.999), sy)  # keep the lower bar above 0 on a log axis
        if m == ORACLE:
            style = {"marker": "*", "markersize": 16, "zorder": 4}
        elif m == ORIGINAL:
            style = {"marker": "X", "markersize": 10, "zorder": 3}
        else:
            style = {"marker": MARKERS[k % len(MARKERS)], "markersize": 8, "zorder": 3}
            k += 1
        ax.errorbar(
            mx,
            my,
            xerr=sx,
            yerr=[[sy[0]], [sy[1]]] if logy else sy,
            color=col.get(m),
            label=m,
            linestyle="none",
            capsize=3,
            elinewidth=1,
            alpha=0.9,
            **style,
        )
    for (px, py), names in spots.items():  # methods on the same spot would hide each other: name them
        if len(names) > 1:
            ax.annotate(" = ".join(names), (px, py), textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.grid(alpha=0.3)


def _err(stds: list[float]) -> list[float] | None:
    """Error bars only where some std is non-zero (one seed draws none)."""
    return stds if any(s > 0 for s in stds) else None


def _legend(ax: Any, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, **kw)


def _bars(ax: Any, methods: list[str], st: dict, key: str, col: dict[str, Any]) -> None:
    xs = [m for m in methods if key in st.get(m, {})]
    means = [st[m][key][0] for m in xs]
    errs = [st[m][key][1] for m in xs]
    ax.bar(range(len(xs)), means, yerr=_err(errs), capsize=3, color=[col.get(m) for m in xs], alpha=0.85)
    ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


# -- trade-off ----------------------------------------------------------------------------------------------
LOG_AXES = ("forget_quality",)  # p-values: a log scale shows how far below 0.05 a method sits
Y_LABELS = {
    "UA": "UA (%, closest to ★ retrain is best)",
    "forget_quality": "forget_quality (log scale, higher is better)",
    "verbmem_f": "verbmem_f (down to ★ retrain's level is best)",
}
TRADEOFF_CAPTIONS = {
    "classification": (
        "Forgetting vs utility on {name}: unlearning accuracy UA (% of forget examples misclassified) "
        "against test accuracy TA (%), {seeds}; {oracle}. Better: UA closest to the oracle's (over- and "
        "under-forgetting are both visible to a membership attacker) and higher TA."
    ),
    "tofu": (
        "Forgetting vs utility on {name}: forget quality (KS-test p-value of the forget truth ratios against "
        "the oracle's; log scale) against model utility, {seeds}; {oracle}, whose forget quality is 1 by "
        "definition. Higher is better on both axes (top right); below the dotted line p = 0.05 the model is "
        "distinguishable from the oracle."
    ),
    "muse": (
        "Forgetting vs utility on {name}: VerbMem on the forget articles (ROUGE-L × 100) against {x} "
        "(utility), {seeds}; {oracle}. Better: verbmem_f down to the oracle's level and higher {x}."
    ),
}


def tradeoff(suite: SuiteResult) -> Figure | None:
    """Forgetting vs utility on the axes of the suite's protocol (``Protocol.axes``): UA vs TA
    (classification), forget quality vs model utility (TOFU), VerbMem vs KnowMem (MUSE), and for concept
    erasure UA and ASR vs utility. Plain suites only (the other kinds have their own figures)."""
    name = suite.protocol
    axes = get_protocol(name).axes if name and suite.kind == "plain" else None
    if axes is None:
        return None
    if name == "erasure":
        return _tradeoff_t2i(suite, axes)
    y, x = axes
    if not suite.has(x, y):
        return None
    logy = y in LOG_AXES
    st = stats(suite.rows, [x, y])
    fig, (ax,) = _figure()
    _scatter(ax, st, x, y, colors(suite.methods), logy=logy)
    if logy:
        ax.set_yscale("log")
        ax.axhline(0.05, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "p = 0.05",
            (1.0, 0.05),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel(f"{x} ({DIRECTION.get(x, '')})")
    ax.set_ylabel(Y_LABELS.get(y, f"{y} ({DIRECTION.get(y, '')})"))
    ax.set_title(f"{suite.name}: {y} vs {x}", fontsize=10)
    _legend(ax)
    png = _png(fig)
    oracle = "★ = retrain, the oracle" if ORACLE in st else "no oracle row"
    default = "Forgetting vs utility on {name}: {y} against {x}, {seeds}; {oracle}."
    caption = TRADEOFF_CAPTIONS.get(name, default).format(
        name=suite.name, seeds=_seeds_text(suite), oracle=oracle, x=x, y=y
    )
    return Figure("tradeoff", f"{suite.name}: forgetting vs utility", caption, png)


def _tradeoff_t2i(suite: SuiteResult, axes: tuple[str, str]) -> Figure | None:
    forgetting, utility = axes
    panels = [p for p in ((utility, forgetting), (utility, "ASR")) if suite.has(*p)]
    if not panels:
        return None
    st = stats(suite.rows, ["utility", "UA", "ASR", "pre_ASR"])
    col = colors(suite.methods)
    fig, boxes = _figure(ncols=len(panels), width=5.2 * len(panels) + 1.5)
    for ax, (x, y) in zip(boxes, panels, strict=True):
        _scatter(ax, st, x, y, col)
        if y == "ASR":
            for m, d in st.items():  # hollow marker at the ASR before the attack, joined to the ASR after
                if "pre_ASR" in d and "utility" in d and "ASR" in d:
                    ux, pre, post = d["utility"][0], d["pre_ASR"][0], d["ASR"][0]
                    ax.plot([ux, ux], [pre, post], color=col.get(m), linewidth=1, alpha=0.6)
                    ax.plot(ux, pre, marker="o", markersize=9, markerfacecolor="none", color=col.get(m))
            ax.set_ylabel("ASR (%): ○ before attack (pre_ASR), filled = after")
            ax.set_title("attack success vs utility (lower ASR is better)", fontsize=10)
        else:
            ax.set_ylabel("UA (%): erased-concept samples not recognised")
            ax.set_title("erasure vs utility (higher UA is better)", fontsize=10)
        ax.set_xlabel("utility (%, higher is better)")
    _legend(boxes[-1])
    caption = (
        f"Concept erasure on {suite.name}, {_seeds_text(suite)}. Left: UA (% of samples of the erased "
        "concept the judge does not recognise) against utility (% of other-caption samples the judge gets "
        "right); higher is better on both (top right). Right: attack success rate of the prompt attack, "
        "hollow = without the adversarial prefix (pre_ASR), filled = with it (ASR); lower is better, so a "
        "robust method sits bottom right with a short line. 'original' = the model before unlearning."
    )
    if len(panels) == 1:
        caption = caption.replace("Left: ", "").replace("Right: ", "")
    return Figure("tradeoff", f"{suite.name}: erasure, robustness and utility", caption, _png(fig))


# -- gap to the oracle --------------------------------------------------------------------------------------
GAP_BARS = ("gap", "privleak")  # gap keys drawn as bars (TOFU's forget quality is the trade-off's y axis)


def oracle_gap(suite: SuiteResult) -> Figure | None:
    """The protocol's comparison with the oracle per method, ± std: Avg. Gap to retrain (classification)
    or PrivLeak (MUSE, 0 = like the oracle). Plain suites only."""
    name = suite.protocol
    key = get_protocol(name).gap_key if name and suite.kind == "plain" else None
    if key not in GAP_BARS or not suite.has(key):
        return None
    st = stats(suite.rows, [key])
    methods = [m for m in suite.methods if m != ORACLE and key in st.get(m, {})]
    if not methods:
        return None
    fig, (ax,) = _figure(width=max(5.0, 0.6 * len(methods) + 2.5), height=3.8)
    _bars(ax, methods, st, key, colors(suite.methods))
    ax.axhline(0, color="black", linewidth=0.8)
    if key == "gap":
        ax.set_ylabel("Avg. Gap to retrain (pp, lower is better)")
        caption = (
            f"Gap to the oracle on {suite.name}: Avg. Gap = mean absolute difference from the retrained "
            f"model over UA, RA, TA and MIA (percentage points), {_seeds_text(suite)} (error bars = std). "
            "Lower is better; the oracle itself scores 0."
        )
    else:
        ax.set_ylabel("PrivLeak (%, closer to 0 is better)")
        caption = (
            f"Gap to the oracle on {suite.name}: PrivLeak = relative difference of the forget-vs-holdout "
            f"Min-40% AUC from the retrained model's, in %, {_seeds_text(suite)} (error bars = std). "
            "0 = indistinguishable from the oracle (better); negative = under-unlearned (the forget set is "
            "still memorised), positive = over-unlearned."
        )
    ax.set_title(f"{suite.name}: {key} per method", fontsize=10)
    return Figure("gap", f"{suite.name}: gap to the oracle", caption, _png(fig))


# -- relearning attack --------------------------------------------------------------------------------------
def relearn(suite: SuiteResult) -> Figure | None:
    """Each forget metric before and after the relearning attack, per attacked method."""
    pairs = [k for k in suite.keys if not k.endswith("_relearned") and suite.has(k, f"{k}_relearned")]
    if not pairs:
        return None
    pairs = pairs[:4]
    st = stats(suite.rows, pairs + [f"{k}_relearned" for k in pairs])
    methods = [m for m in suite.methods if any(f"{k}_relearned" in st.get(m, {}) for k in pairs)]
    ncols = min(2, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    width = max(5.0, 0.45 * len(methods) + 2.5) * ncols
    fig, axes = _figure(ncols=ncols, nrows=nrows, width=width, height=3.6 * nrows)
    col = colors(suite.methods)
    xs = range(len(methods))
    for ax, key in zip(axes, pairs, strict=False):
        before = [st[m].get(key, (math.nan, 0.0)) for m in methods]
        after = [st[m].get(f"{key}_relearned", (math.nan, 0.0)) for m in methods]
        mcol = [col.get(m) for m in methods]
        ax.bar(
            [i - 0.2 for i in xs],
            [b[0] for b in before],
            0.4,
            yerr=_err([b[1] for b in before]),
            color=mcol,
            capsize=2,
            label="before attack",
        )
        ax.bar(
            [i + 0.2 for i in xs],
            [a[0] for a in after],
            0.4,
            yerr=_err([a[1] for a in after]),
            color=mcol,
            alpha=0.45,
            hatch="//",
            edgecolor="black",
            linewidth=0.5,
            capsize=2,
            label="after relearning",
        )
        if key in st.get(ORACLE, {}):
            ax.axhline(st[ORACLE][key][0], color="black", linestyle="--", linewidth=1, label="retrain")
        if key == "forget_quality":
            ax.set_yscale("log")
        ax.set_xticks(list(xs), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{key} ({_direction(key)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{suite.name}: relearning attack", fontsize=10)
    directions = "; ".join(f"{k}: {_direction(k)}" for k in pairs if _direction(k))
    caption = (
        f"Relearning attack on {suite.name}: each forget metric of the unlearned model before the attack "
        "(solid bars) and after fine-tuning the unlearned model on part of the forget set (hatched), "
        f"{_seeds_text(suite)}; dashed line = the oracle (retrain, not attacked). A robust method changes "
        f"little under the attack. {directions}."
    )
    if "forget_quality" in pairs:
        caption += " forget_quality on a log scale."
    return Figure("relearn", f"{suite.name}: relearning before/after", caption, _png(fig))


# -- random vs worst-case forget sets -----------------------------------------------------------------------
def random_vs_worst(suite: SuiteResult) -> Figure | None:
    """Grouped bars: UA (and the gap to retrain) on a random and on the worst-case forget set."""
    if not suite.has("UA_random", "UA_worst"):
        return None
    bases = ["UA"] + (["gap"] if suite.has("gap_random", "gap_worst") else [])
    st = stats(suite.rows, [f"{b}_{s}" for b in bases for s in ("random", "worst")])
    fig, axes = _figure(ncols=len(bases), width=6.0 * len(bases), height=3.9)
    for ax, base in zip(axes, bases, strict=True):
        methods = [m for m in suite.methods if not (base == "gap" and m == ORACLE)]
        methods = [m for m in methods if f"{base}_random" in st.get(m, {})]
        xs = range(len(methods))
        for off, tag, color, hatch in ((-0.2, "random", "tab:blue", None), (0.2, "worst", "tab:red", "//")):
            vals = [st[m].get(f"{base}_{tag}", (math.nan, 0.0)) for m in methods]
            ax.bar(
                [i + off for i in xs],
                [v[0] for v in vals],
                0.4,
                yerr=_err([v[1] for v in vals]),
                capsize=2,
                color=color,
                alpha=0.8,
                hatch=hatch,
                label=f"{'worst-case' if tag == 'worst' else tag} forget set",
            )
        ax.set_xticks(list(xs), methods, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if base == "UA":
            ax.set_title("UA (%): lower on the worst-case set = harder to forget", fontsize=9)
        else:
            ax.set_title("Avg. Gap to retrain on the same set (lower is better)", fontsize=9)
    axes[0].legend(fontsize=8, frameon=False)
    size = suite.data.get("size")
    gran = suite.data.get("granularity", "example")
    caption = (
        f"Random vs worst-case forget sets on {suite.name}"
        + (f" (size {size}, {gran}-wise)" if size else "")
        + f", {_seeds_text(suite)}. Left: unlearning accuracy UA on a random forget set (blue) and on the "
        "bi-level worst-case set of the same size (red, hatched); a lower UA on the worst-case set means it "
        "is harder to forget, and for retrain it shows how much of the set the model generalises to anyway."
    )
    if len(bases) == 2:
        caption += " Right: Avg. Gap to the retrained model on the same set; lower is better."
    else:
        caption = caption.replace("Left: ", "")
    return Figure("worstcase", f"{suite.name}: random vs worst-case forget set", caption, _png(fig))


# -- MUSE sequential requests -------------------------------------------------------------------------------
SEQ_PANELS = ("verbmem_f", "privleak", "verbmem_r", "knowmem_r", "knowmem_f")


def sequential(suite: SuiteResult) -> Figure | None:
    """Each metric after request 1..K, one line per method (mean ± std band over seeds)."""
    if suite.kind != "sequential":
        return None
    keys = [k for k in SEQ_PANELS if suite.has(k)][:4]
    if not keys:
        return None
    requests = sorted({r["request"] for r in suite.rows})
    names = suite.data.get("requests") or []
    col = colors(suite.methods)
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, width=5.2 * ncols + 1.5, height=3.4 * nrows)
    for ax, key in zip(axes, keys, strict=False):
        for m in suite.methods:
            xs, mean, std = [], [], []
            for k in requests:
                d = stats([r for r in suite.rows if r["method"] == m and r["request"] == k], [key])
                if key in d.get(m, {}):
                    xs.append(k)
                    mean.append(d[m][key][0])
                    std.append(d[m][key][1])
            if not xs:
                continue
            style = {"linestyle": "--", "marker": "*"} if m == ORACLE else {"marker": "o"}
            ax.plot(xs, mean, color=col.get(m), label=m, markersize=5, **style)
            ax.fill_between(
                xs,
                [a - b for a, b in zip(mean, std, strict=True)],
                [a + b for a, b in zip(mean, std, strict=True)],
                color=col.get(m),
                alpha=0.12,
            )
        if key == "privleak":
            ax.axhline(0, color="grey", linewidth=0.8)
        ticks = [f"{k}\n{names[k - 1]}" if 0 < k <= len(names) else str(k) for k in requests]
        ax.set_xticks(requests, ticks, fontsize=7)
        ax.set_title(f"{key} ({DIRECTION.get(key, '')})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    _legend(axes[ncols - 1])
    mode = suite.data.get("mode", "sequential")
    scope = (
        "on the articles of requests 1..k, each request starting from the model the previous one left"
        if mode == "sustainability"
        else "on request k's own articles, each request starting from the original model"
    )
    caption = (
        f"MUSE {mode} on {suite.name}: each metric after unlearning request k (x axis), forget metrics "
        f"{scope}; {_seeds_text(suite)} (band = std). "
        + "; ".join(f"{k}: {DIRECTION.get(k, '')}" for k in keys)
        + ". retrain (dashed) = the retain-only oracle."
    )
    fig.suptitle(f"{suite.name}: {mode} over requests", fontsize=10)
    return Figure("sequential", f"{suite.name}: metrics over unlearning requests", caption, _png(fig))


# -- training curves ----------------------------------------------------------------------------------------
def training_curves(suite: SuiteResult) -> Figure | None:
    """Loss against optimizer step: one figure per suite, a small panel per method (objectives differ in
    scale and sign across methods, so a shared axis would hide every curve but the largest)."""
    curves = [c for c in suite.curves if len(c.points) > 1]  # one point (a one-step method) is no curve
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    order = {m: i for i, m in enumerate(suite.methods)}
    methods = sorted({c.method for c in curves}, key=lambda m: (order.get(m, len(order)), m))
    single = sorted({c.method for c in suite.curves} - set(methods))
    groups = sorted({(p[2], c.tag or "") for c in curves for p in c.points})
    # colour = the row's tag (forget set, request) when rows have several, else the training phase;
    # line style = the phase when colour is taken by the tag
    tags = sorted({g[1] for g in groups})
    phases = sorted({g[0] for g in groups})
    by_tag = len(tags) > 1
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
    keyed = tags if by_tag else phases
    gcol = {g: palette[keyed.index(g[1] if by_tag else g[0]) % len(palette)] for g in groups}
    gls = {g: ("-", "--", ":", "-.")[phases.index(g[0]) % 4] if by_tag else "-" for g in groups}
    names = {g: " / ".join(x for x in g if x) or "loss" for g in groups}
    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, width=3.3 * ncols, height=2.5 * nrows + 0.5)
    seeds = {c.seed for c in curves}
    for ax, method in zip(axes, methods, strict=False):
        shown: set[tuple[str, str]] = set()
        values: list[float] = []
        for c in (c for c in curves if c.method == method):
            for g in groups:
                pts = [(st, v) for st, v, ph in c.points if (ph, c.tag or "") == g]
                if not pts:
                    continue
                values += [v for _, v in pts]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=gcol[g],
                    linestyle=gls[g],
                    linewidth=1.1,
                    alpha=0.8 if len(seeds) > 1 else 1.0,
                    label=None if g in shown else names[g],
                )
                shown.add(g)
        mags = [abs(v) for v in values if v != 0]
        if mags and max(mags) / min(mags) > 1e4 and min(values) < 0 < max(values):
            ax.set_yscale("symlog", linthresh=max(min(mags), 1e-6))
        ax.set_title(method, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(shown) > 1:
            ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    fig.supxlabel("optimizer step", fontsize=9)
    fig.supylabel("training loss (the method's own objective)", fontsize=9)
    fig.suptitle(f"{suite.name}: training curves", fontsize=10)
    nseeds = len(seeds)
    caption = (
        f"Training curves on {suite.name}: the loss each method minimises against the optimizer step, one "
        f"panel per method, {'one line per seed' if nseeds > 1 else 'one seed'}"
        + (
            ", colour = the forget set or request, line style = the training phase"
            if by_tag
            else ", colour = the training phase"
            if len(groups) > 1
            else ""
        )
        + ". Within a panel lower is better: a curve that falls and settles shows the objective being "
        "optimised, a flat or exploding one flags a failed run. Levels are not comparable across panels: "
        "the objectives differ (gradient ascent's loss is the negated forget loss, so it goes down as the "
        "model forgets)."
    )
    if single:
        caption += f" No panel for {', '.join(single)}: a single logged step, no curve."
    return Figure("curves", f"{suite.name}: training curves", caption, _png(fig))


BUILDERS: tuple[Callable[[SuiteResult], Figure | None], ...] = (
    tradeoff,
    oracle_gap,
    random_vs_worst,
    relearn,
    sequential,
    training_curves,
)


def suite_figures(suite: SuiteResult) -> list[Figure]:
    """Every figure the suite's data supports, in reading order."""
    return [f for f in (build(suite) for build in BUILDERS) if f is not None]

"""``unlearnkit tune``: the API (:func:`tune`), the CLI (:func:`tune_config`), the trial table and
``tune.json``/``tune.md``/``tune.png``, over the oracle-free scoring and plan of :mod:`unlearnkit.tuning`
(whose docstring is the design; its validation is in docs/tune-validation.md)."""

from __future__ import annotations

import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.api_args import adapt_model, check_out, check_seed, engine_config, method_spec, tuning_split
from unlearnkit.bench.progress import duration
from unlearnkit.errors import ArgumentError, ConfigError, UnlearnkitError
from unlearnkit.experiment import make_setup, original_model
from unlearnkit.io import write_bytes, write_json, write_text
from unlearnkit.report.tune_figure import tune_figure
from unlearnkit.runs.store import open_store, store_path
from unlearnkit.tuning import (
    MAX_SHADOW,
    Trial,
    TuneResult,
    aims,
    check_tunable,
    choice_key,
    damage,
    score,
    signals,
    tune_setup,
    tune_split,
)
from unlearnkit.tuning_store import PARTIAL

__all__ = [
    "MAX_SHADOW",
    "Trial",
    "TuneResult",
    "aims",
    "check_tunable",
    "choice_key",
    "damage",
    "print_trials",
    "score",
    "signals",
    "tune",
    "tune_config",
    "tune_setup",
    "tune_split",
    "write_tune",
]


def tune(
    model: nn.Module,
    method: str | None = None,
    forget: Any = None,
    retain: Any = None,
    test: Any = None,
    *,
    train_set: Any = None,
    heldout: Any = None,
    forget_class: int | None = None,
    preset: str | None = None,
    num_classes: int | None = None,
    options: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    seed: int = 0,
    max_trials: int = 10,
    every_epoch: bool = True,
    max_shadow: int | None = MAX_SHADOW,
    out: str | Path | None = None,
    image_processor: Any = None,
    **method_options: Any,
) -> TuneResult:
    """Calibrate ``method`` for ``model`` and the data without a retrained model; returns the trials and
    ``best``, the options to pass on: ``unlearnkit.unlearn(model, method, ..., **result.best)``.

    Data arguments as in :func:`unlearnkit.unlearn`. The held-out examples the trials are scored against
    (the targets, TA kept, the membership attack's non-members) are ``test=``, or ``heldout=`` when given
    (then ``test=`` may be left out): a validation set that the model never trained on, to keep the test set
    for reporting; examples equal to a training example are refused. ``options`` and ``method_options``
    (keyword arguments) are held fixed (e.g. ``mask_ratio``), as in :func:`unlearnkit.unlearn`; ``preset``
    (or ``lr``/``alpha`` among them) gives the starting point of the sweep. ``max_trials`` bounds the
    training runs; ``every_epoch`` scores methods that allow it after each epoch of a run
    (:func:`tune_split`); ``max_shadow`` caps the membership attack's shadow sets in the scoring (a fixed
    random subset of the held-out set and as many retain examples; None: all, as reported). ``out`` writes
    ``tune.json``, ``tune.md`` and ``tune.png`` and indexes every trial in the run store. A Hugging Face
    ``*ForImageClassification`` model and ``image_processor=`` are taken as :func:`unlearnkit.unlearn`
    takes them. The input model is never modified."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
    if out is not None:
        check_out(out, overwrite=True)
    check_seed(seed)
    spec, eng = method_spec(method, preset, options, method_options)
    engine_config(eng | (engine or {}))  # a bad engine= key before any work
    base, prepare = adapt_model(model, image_processor)  # a Hugging Face classifier: wrapped for logits
    data = (forget, retain, test, heldout, train_set, forget_class, num_classes, prepare)
    split, k = tuning_split(base, *data)
    budget = (seed, max_trials, every_epoch, max_shadow)
    on = "test" if heldout is None else "heldout"
    result = tune_split(base, spec, split, k, eng | (engine or {}), *budget, scored_on=on, keep_in=out)
    if out is not None:
        write_tune(out, result, {"family": "vision", "seed": seed, "method": spec, "preset": preset})
    return result


def tune_config(
    cfg: dict[str, Any],
    max_trials: int = 10,
    out: str | Path | None = None,
    every_epoch: bool = True,
    max_shadow: int | None = MAX_SHADOW,
    progress: bool = False,
) -> TuneResult:
    """``unlearnkit tune``: calibrate the config's method on its data and original model (no oracle);
    ``every_epoch=False`` is ``--end-only``; ``progress`` prints a line per training run on stderr."""

    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(f"--max-trials must be >= 1, got {max_trials}")
    if out is not None:  # before minutes of training: a folder tune cannot write into
        _check_tune_out(Path(out))
    setup = make_setup(cfg)
    check_tunable(setup)
    model = original_model(setup).model
    spec = dict(setup.cfg["method"])
    on_run = run_printer(spec["name"]) if progress else None
    if progress and out is not None and (Path(out) / PARTIAL).is_file():
        print(
            f"tune {spec['name']}: {Path(out) / PARTIAL} holds the runs of a stopped tuning; if they are "
            "this tuning's (the same model, data and options), they are replayed, not trained again",
            file=sys.stderr,
            flush=True,
        )
    res = tune_setup(setup, model, spec, max_trials, every_epoch, max_shadow, on_run, out)
    if out is not None:
        write_tune(out, res, setup.cfg)
    return res


def _check_tune_out(out: Path) -> None:
    """``--out`` must be a folder, or a path where one can be made (no file in its place or above it)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = f"--out {str(out)!r}" if p == out else f"--out {str(out)!r}: its parent {str(p)!r}"
                raise ConfigError(
                    f"{what} is a file; tune writes tune.json, tune.md and tune.png into a folder: choose a "
                    "folder path"
                )
            return


def _fmt(value: Any, digits: int) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _options(t: Trial) -> str:
    """A trial's options as ``lr=0.0013 epochs=7``."""
    return " ".join(f"{k}={_fmt(v, 3)}" for k, v in t.options.items())


def run_printer(method: str, stream: Any = None) -> Callable[[int, int, Trial, Trial], None]:
    """``tune``'s progress: one flushed line per training run (on stderr by default), e.g. ``tune salun:
    run 3 of at most 10 (lr=0.0013 epochs=7) score 0.80; best 0.45 (lr=0.0022 epochs=2); 12.3 s``."""
    t0 = time.perf_counter()

    def show(done: int, budget: int, trial: Trial, best: Trial) -> None:
        print(
            f"tune {method}: run {done} of at most {budget} ({_options(trial)}) score {trial.score:.2f}; "
            f"best {best.score:.2f} ({_options(best)}); {duration(time.perf_counter() - t0)}",
            file=stream if stream is not None else sys.stderr,
            flush=True,
        )

    return show


def _aims_line(t: dict[str, float]) -> str:
    """One line: what the score aims at, and the floors of RA and TA (``tuning.aims``)."""
    ua = f"UA {t['UA']:.1f}" + (f" ± {t['UA_spread']:.1f}" if "UA_spread" in t else "")
    rest = f", TA_forgotten {t['TA_forgotten']:.0f}" if "TA_forgotten" in t else ""
    spread = " (±: two binomial std of the held-out accuracy it is read from)" if "UA_spread" in t else ""
    return (
        f"aims at: {ua}, MIA {t['MIA']:.1f}{rest}; RA >= {t['RA_min']:.1f}, TA >= {t['TA_min']:.1f}" + spread
    )


def trial_lines(res: TuneResult) -> list[str]:
    """The trials as a table, the chosen one marked, and the overrides that use it. Of a run scored
    after every epoch, the rows are its end and its best earlier epoch (all are in ``tune.json``)."""
    keys = ("UA", "RA", "TA", "MIA", "MIA_heldout", "TA_forgotten", "RA_rest", "TA_rest")
    lines = [
        f"{res.method} ({res.protocol} forgetting), {len(res.trials)} trials from {res.runs} runs, scored on "
        f"the {'validation set (heldout)' if res.scored_on == 'heldout' else 'test set'}; original: "
        + ", ".join(f"{k} {res.original[k]:.1f}" for k in keys if k in res.original),
        _aims_line(res.targets),
    ]
    if res.resumed:
        lines.insert(1, f"resumed: {res.resumed} of the runs were replayed from a stopped tuning ({PARTIAL})")
    if res.shadow and res.shadow[0] < res.shadow[1]:
        lines.append(
            f"membership attack fit on {res.shadow[0]} of the {res.shadow[1]} test examples and as many "
            "retain examples (--max-shadow, max_shadow=)"
        )
    shown = 0
    for r in dict.fromkeys(t.run for t in res.trials):
        of_run = [t for t in res.trials if t.run == r]
        *earlier, end = of_run
        rows = [t for t in earlier if t.options == res.best]  # the chosen one, and the run's best
        if earlier and min(t.score for t in earlier) < end.score:
            rows.append(min(earlier, key=lambda t: t.score))
        unique = {id(t): t for t in [*rows, end]}.values()
        for t in sorted(unique, key=lambda t: t.options.get("epochs", 0)):
            mark = "*" if t.options == res.best else " "
            opts = _options(t)
            sig = " ".join(f"{k} {t.signals[k]:.1f}" for k in keys if k in t.signals)
            lines.append(f"{mark} {opts:<38} score {t.score:7.2f}  {sig}")
            shown += 1
    if shown < len(res.trials):
        lines.append(f"  ({len(res.trials) - shown} more: the other epochs of the runs, in tune.json)")
    lines.append("use: " + " ".join(f"method.{k}={_fmt(v, 4)}" for k, v in res.best.items()))
    return lines


def write_tune_files(out: Path, result: TuneResult, config: dict[str, Any]) -> None:
    """``out/tune.json``, the trial table as ``tune.md`` and the trials plotted as ``tune.png``
    (:mod:`unlearnkit.report.tune_figure`, with matplotlib), each written atomically."""
    write_json(out / "tune.json", {"config": config} | result.to_dict())
    md = [f"# unlearnkit tune: {result.method}", "", "```text", *trial_lines(result), "```", ""]
    try:
        fig = tune_figure(result)
    except ImportError:  # matplotlib is an extra
        fig = None
        md.append("(no figure: matplotlib is not installed; pip install 'unlearnkit[plots]')")
    if fig is not None:
        write_bytes(out / "tune.png", fig.png)
        md.append(f"![{fig.title}](tune.png)\n\n{fig.caption}")
    write_text(out / "tune.md", "\n".join(md) + "\n")


def print_trials(res: TuneResult) -> None:
    """:func:`trial_lines`, printed."""
    print("\n".join(trial_lines(res)))


def write_tune(out: str | Path, result: TuneResult, config: dict[str, Any]) -> None:
    """:func:`write_tune_files` into ``out``, and one row per trial in the run store (kind ``tune``)."""

    out = Path(out)
    write_tune_files(out, result, config)
    folder = out.resolve()
    try:
        with open_store(store_path(folder, single_run=True)) as store:
            for i, t in enumerate(result.trials):
                store.upsert(
                    kind="tune",
                    key=f"tune:{folder}:{i}",
                    config=config | {"method": config.get("method", {}) | t.options},
                    family="vision",
                    method=result.method,
                    seed=config.get("seed"),
                    metrics={k: v for k, v in t.signals.items() if isinstance(v, float)} | {"score": t.score},
                    fields={"trial": i, "chosen": t.options == result.best, "protocol": result.protocol},
                    wall=t.seconds,
                    path=folder,
                )
    except (sqlite3.Error, UnlearnkitError, OSError) as exc:
        warnings.warn(f"the tuning in {str(folder)!r} was not indexed in the run store: {exc}", stacklevel=2)
    (out / PARTIAL).unlink(missing_ok=True)  # the runs kept for a resume: all written now

"""Oracle-free calibration: pick a method's step size and length for the user's model and data.

(The scoring and the plan; ``unlearnkit.calibration`` is the API and CLI over them: ``tune``,
``tune_config``, the trial table and ``tune.json``.) Every rule below was chosen and measured against the
retrained model with ``benchmarks/tune_validate.py``; the numbers, and what was tried and not kept, are in
docs/tune-validation.md.

The papers tune against the retrained model: SalUn and Unlearn-WorstCase grid-search the learning rate
(about [1e-4, 1e-1], 10 epochs; SalUn's mask ratio 0.1–0.9) on the random forget set for the smallest Avg.
Gap to retraining (classification.md §1.5, WorstCase issue #4). A user has no retrained model (retraining
is what they came to avoid), so ``tune`` scores each trial with signals that need none:

- **random forgetting**: a retrained model has never seen the forget set, so the forget set should look
  like held-out data. Targets, fixed from the original model (a trial's own would drift with the damage
  it does): forget accuracy = its test accuracy (UA ≈ 100 − TA), and the membership attack's verdict on
  the forget set = its verdict on held-out examples (the SVC MIA of the SalUn protocol; on held-out
  examples it is cross-fitted over two halves of the test set). RA and TA should not fall below the
  original's.
- **class-wise forgetting**: a model that never saw the class never predicts it: accuracy 0 on the
  class's training and test examples (0, not "chance or below": a target at chance stopped at the gentlest
  trial that reached it), and the attack calls all of them non-members (MIA-Efficacy 100, SalUn's retrained
  rows). Nor can it mistake the other classes for it, so RA and TA should keep the original's accuracy *over
  the remaining classes* (its argmax with the forgotten classes' logits removed, ``RA_rest``/``TA_rest``).

Each term is a distance in percentage points; the score is their mean, on the Avg. Gap's scale, with the
guards (RA and TA not below what they keep) counted ``GUARD_WEIGHT`` (1.5) times and a dead zone of two
binomial standard deviations of the quantity compared (what the held-out set itself spreads), so noise
alone is never penalised. RA and TA are measured on sets 5–10 times the forget set's size, so a trial that
buys a few points of UA with many points of RA is more often a lucky draw than what retraining does.

The plan, at most ``max_trials`` (10) training runs, each at half the method's epochs (a fraction of one
run): a sweep of the step size over four decades (×0.01 … ×100 around the method's default, or the
preset's), then half- and quarter-decade steps around the best, then the best at a quarter of the epochs.
Per method:

- **FT and ℓ1-sparse** forget only through training on D_r, and mid-run their RA dips and comes back, so
  half-length trials understate them: their last run is the best step at the full epochs, and the
  refinement and that run start from the best trial that moved the forget set (UA above the original's by
  more than two binomial standard deviations), if any did.
- **RL and SalUn** have two published forms (methods/rl.py): unless the user fixes ``schedule`` the sweep
  runs the authors' sequential form, three trials run the reference code's ``concat`` at ×1, ×√10 and ×10
  the sweep's best step (concat dilutes the forget term in each batch), then two quarter-decade steps refine
  the best of either, in place of the half-decade steps.
- **GA** ascends the forget loss with nothing to bound it and has a cliff (one quarter-decade step from
  30% forgotten to collapsed): when its best trial and a neighbouring step straddle the target, its last
  run tries the step halfway between them (``Method.ascent_cliff``).
- **IU**, a single step: ``alpha`` is swept instead.

Every epoch is a trial where the method allows it: when the first e epochs of a run, passed through
``Method.finished``, are an e-epoch run (``Method.prefix_consistent``: FT, GA, RL, SalUn and both boundary
methods with a constant schedule; not ℓ1-sparse, whose penalty decays over the run's length, or SCRUB's
step schedule), each run is also scored after each of its epochs through the engine's ``epoch_end`` hook,
and the chosen ``epochs`` reproduce that state exactly; their last run is the best step at the full epochs.
It costs 1.3–3.2× the wall time of the end-scored plan (``benchmarks/tune_cost.py``); ``every_epoch=False``
(CLI ``--end-only``) gives that plan. Ties, which epoch scoring makes common in class-wise forgetting, go to
the least RA/TA lost, measured without the dead zone, then to the gentlest step (step size × epochs). The
attack's SVC, whose fit grows about quadratically with its shadow sets, fits on at most ``MAX_SHADOW``
(5,000) test examples and as many retain examples (``benchmarks/tune_scoring.py``); RA, TA and the forget
set are always scored whole.

How this differs from the papers' protocols: they grid-search a fixed grid for the smallest gap to the
retrained model; this searches a small adaptive grid against held-out data, at half the epochs, with
SalUn's mask ratio held at its value (the user may pass one). It is validated against the oracle where one
is known, not guaranteed to match it: with ~100 forget examples the forget-side signals carry a few points
of binomial noise, and the lowest-scoring of ten trials is sometimes a lucky one. Scored on the test set
that the metrics are then reported on, TA and MIA are optimistic; ``heldout=`` (a validation set) keeps
them apart, at the cost measured in docs/tune-validation.md ("Tuned on a validation split").
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import DivergenceError, Engine, EngineConfig
from unlearnkit.errors import ArgumentError, ConfigError, UnlearnkitError, api_phrased
from unlearnkit.experiment import build_method
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task
from unlearnkit.metrics.mia import mia_efficacy
from unlearnkit.metrics.vision import accuracy
from unlearnkit.tuning_store import TrialStore, fingerprint

# the membership attack's shadow sets in tune's scoring: at most this many non-members (a fixed random subset
# of the test set) and as many members. Its SVC's fit grows about quadratically with them (1-D features, one
# core: 10,000 of each 8 s, 5,000 3 s, ``benchmarks/tune_scoring.py``) and runs after every epoch of every
# run; the validation worlds' sets are smaller, so it changes nothing there
MAX_SHADOW = 5000
SWEEP = (0.01, 0.1, 1.0, 10.0, 100.0)  # four decades around the default: defaults are often 100× off
REFINE = ((10**-0.5, 10**0.5), (10**-0.25, 10**0.25))  # then half and quarter decades around the best
# concat dilutes the forget term in each batch (D_f is a small part of D_f ∪ D_r): it wants a larger step
OTHER_FORM = (1.0, 10**0.5, 10.0)
# the guards (RA and TA kept) count 1.5× the forget-side terms: they are measured on sets 5–10× the forget
# set's size, and the forget-side targets carry its binomial noise and the held-out set's offset (chosen by
# replaying the stored trials of half the validation seeds: docs/tune-validation.md, "RA and TA kept")
GUARD_WEIGHT = 1.5
# said when tune scored its trials on the test set that the run's metrics are then reported on
ON_TEST = (
    "tune scored its trials on the test set that the metrics are reported on, so TA and MIA are optimistic "
    "(docs/tune-validation.md); {fix}"
)


@dataclass
class Trial:
    options: dict[str, Any]
    score: float
    signals: dict[str, float]
    seconds: float
    run: int = 0  # which training run it comes from (one run is scored after each of its epochs)


def trial_dict(t: Trial) -> dict[str, Any]:
    """A trial as JSON holds it: a diverged trial's score (inf) is None."""
    d = asdict(t)
    return d | {"score": d["score"] if math.isfinite(d["score"]) else None}


def trial_from(d: dict[str, Any]) -> Trial:
    """The trial of :func:`trial_dict`'s dict."""
    return Trial(**(d | {"score": math.inf if d["score"] is None else float(d["score"])}))


@dataclass
class TuneResult:
    """``best``: the options to pass to ``unlearn`` (``unlearn(..., **result.best)``)."""

    method: str
    protocol: str
    best: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    original: dict[str, float] = field(default_factory=dict)
    # the membership attack's shadow non-members, of the test examples (``max_shadow``): [n, of]
    shadow: list[int] = field(default_factory=list)
    # the held-out set the trials were scored against: "test", or "heldout" (a validation set)
    scored_on: str = "test"
    # training runs replayed from a stopped tuning of the same model, data and options (``keep_in``)
    resumed: int = 0

    @property
    def runs(self) -> int:
        """Training runs spent (the budget); one run may give several trials, one per epoch."""
        return len({t.run for t in self.trials})

    @property
    def targets(self) -> dict[str, float]:
        """What the score aimed each signal at (:func:`aims` of ``original``)."""
        return aims(self.original, self.protocol)

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it: a diverged trial's score (inf) is None."""
        trials = [trial_dict(t) for t in self.trials]
        return asdict(self) | {"trials": trials, "runs": self.runs, "targets": self.targets}


def _binom_pp(p_percent: float, n: int) -> float:
    """Two binomial standard deviations, in percentage points, of a rate ``p`` measured on ``n`` items."""
    p = min(max(p_percent / 100.0, 0.0), 1.0)
    return 200.0 * math.sqrt(max(p * (1 - p), 0.25 / max(n, 1)) / max(n, 1))


@torch.no_grad()
def signals(
    model: nn.Module,
    split: Split,
    k: int,
    seed: int = 0,
    targets: bool = True,
    max_shadow: int | None = None,
) -> dict[str, float]:
    """UA, RA, TA (percent), MIA on the forget set and on held-out examples, set sizes; TA_forgotten for a
    class-wise split. ``MIA`` is the reported MIA-Efficacy (shadow non-members: the test set, or a fixed
    random ``max_shadow`` of it, and as many retain examples as members);
    ``MIA_heldout`` is the same attack's verdict on held-out data, cross-fitted over two random halves of
    the test set (shadow on one half, verdict on the other, and back). For a class-wise split,
    ``RA_rest``/``TA_rest`` are RA/TA with the forgotten classes' logits removed (the argmax over the
    remaining classes). These are targets, read from the original model only: ``targets=False`` skips them
    for the trials (``score`` never reads a trial's own; the held-out verdict costs two SVC fits)."""

    fam = VisionFamily(num_classes=k)
    lf = fam.predict_logits(model, split.forget)
    lr = fam.predict_logits(model, split.retain)
    lt = fam.predict_logits(model, split.test)
    yf, yr, yt = split.forget.labels, split.retain.labels, split.test.labels
    perm = torch.as_tensor(np.random.RandomState(seed).permutation(len(yt)))
    shadow = perm if max_shadow is None else perm[:max_shadow]  # all: the reported protocol
    shadow = shadow.sort().values if len(shadow) < len(yt) else torch.arange(len(yt))
    out = {
        "UA": 100.0 - accuracy(lf, yf),
        "RA": accuracy(lr, yr),
        "TA": accuracy(lt, yt),
        "MIA": mia_efficacy(lr, yr, lt[shadow], yt[shadow], lf, yf),  # all: as reported (evaluate_classifier)
        "n_forget": len(yf),
        "n_retain": len(yr),
        "n_test": len(yt),
    }
    if targets:  # cross-fitted: shadow on one half of the test set, verdict on the other, and back
        a, b = perm[: len(yt) // 2], perm[len(yt) // 2 :]
        sa, sb = (a, b) if max_shadow is None else (a[:max_shadow], b[:max_shadow])
        out["MIA_heldout"] = 0.5 * (
            mia_efficacy(lr, yr, lt[sa], yt[sa], lt[b], yt[b])
            + mia_efficacy(lr, yr, lt[sb], yt[sb], lt[a], yt[a])
        )
        out["n_heldout"] = len(b)
    if split.test_forgotten is not None and len(split.test_forgotten):
        tf = split.test_forgotten
        out["TA_forgotten"] = accuracy(fam.predict_logits(model, tf), tf.labels)
        out["n_test_forgotten"] = len(tf)
        if targets:  # what a model that never saw the classes would predict among the others
            gone = split.forget.labels.unique().long()
            out["RA_rest"] = accuracy(lr.index_fill(1, gone, -math.inf), yr)
            out["TA_rest"] = accuracy(lt.index_fill(1, gone, -math.inf), yt)
    return out


def _kept(original: dict[str, float]) -> tuple[float, float]:
    """The RA and TA a trial should keep: the original's, or for class-wise forgetting its accuracy over
    the remaining classes (``RA_rest``/``TA_rest``)."""
    return original.get("RA_rest", original["RA"]), original.get("TA_rest", original["TA"])


def _forget_targets(original: dict[str, float], protocol: str) -> dict[str, float]:
    """What the forget set's signals should read. Class-wise, a model that never saw the class: accuracy 0
    on it (UA 100, TA_forgotten 0), MIA-Efficacy 100. Random, targets fixed from the original model (as a
    trial damages the model its own TA falls and its held-out MIA verdict rises, and targets taken from
    the trial would drift with the damage): UA = 100 − its TA, MIA = its verdict on held-out data."""
    if protocol == "class":
        return {"UA": 100.0, "MIA": 100.0, "TA_forgotten": 0.0}
    return {"UA": 100.0 - original["TA"], "MIA": original["MIA_heldout"]}


def _forget_terms(s: dict[str, float], original: dict[str, float], protocol: str) -> list[float]:
    """The score's forget-side terms: distances of the forget set's signals from their targets."""
    return [abs(s[k] - v) for k, v in _forget_targets(original, protocol).items() if k in s]


def _floor(kept: float, n: int) -> float:
    """The accuracy below which a guard counts: what it keeps less two binomial std of ``n`` items."""
    return kept - _binom_pp(kept, n)


def aims(original: dict[str, float], protocol: str) -> dict[str, float]:
    """What the score aims each signal at, from the original's signals: the forget-side targets (random:
    with ``UA_spread``, two binomial standard deviations of the test accuracy the UA target is read from)
    and the floors of RA and TA below which the guards count (``RA_min``, ``TA_min``)."""
    out = _forget_targets(original, protocol)
    if "TA_forgotten" not in original:  # no test example of the class (or random forgetting)
        out.pop("TA_forgotten", None)
    if protocol != "class":
        out["UA_spread"] = _binom_pp(original["TA"], original["n_test"])
    ra, ta = _kept(original)
    return out | {"RA_min": _floor(ra, original["n_retain"]), "TA_min": _floor(ta, original["n_test"])}


def score(s: dict[str, float], original: dict[str, float], protocol: str) -> float:
    """Distance of a trial's signals ``s`` from what unseen data would show (see the module docstring)."""
    ra, ta = _kept(original)
    keep_ra = max(0.0, _floor(ra, s["n_retain"]) - s["RA"])
    keep_ta = max(0.0, _floor(ta, s["n_test"]) - s["TA"])
    terms = _forget_terms(s, original, protocol)
    return float((sum(terms) + GUARD_WEIGHT * (keep_ra + keep_ta)) / (len(terms) + 2))


def damage(s: dict[str, float], original: dict[str, float]) -> float:
    """Points of RA and TA lost against what the score guards (``_kept``), without its dead zone (inf if
    diverged)."""
    if "RA" not in s:
        return math.inf
    ra, ta = _kept(original)
    return max(0.0, ra - s["RA"]) + max(0.0, ta - s["TA"])


def choice_key(t: Trial, original: dict[str, float], knob: str) -> tuple[float, float, float]:
    """Order of preference: the lowest score; among equal scores the least RA/TA lost (inside the
    dead zone, where the score cannot see it); then the gentlest step (step size × epochs)."""
    gentle = t.options[knob] * t.options.get("epochs", 1)
    return round(t.score, 6), round(damage(t.signals, original), 6), gentle


def _best(trials: list[Trial], original: dict[str, float], knob: str) -> Trial:
    """The chosen trial: the first by :func:`choice_key` among those that did not diverge."""
    done = [t for t in trials if math.isfinite(t.score)] or trials
    return min(done, key=lambda t: choice_key(t, original, knob))


def _moved(t: Trial, original: dict[str, float]) -> bool:
    """The trial moved the forget set: its UA is above the original's by more than two binomial standard
    deviations of the forget set (a diverged trial did not)."""
    s = t.signals
    return "UA" in s and s["UA"] - original["UA"] > _binom_pp(original["UA"], s["n_forget"])


def _centre(trials: list[Trial], original: dict[str, float], knob: str, retain_only: bool) -> Trial:
    """The trial the next runs refine or lengthen: the best, or for a method that forgets only through
    training on D_r (FT, l1-sparse) the best that moved the forget set, if any did. Their half-length
    states understate what the full length reaches (RA dips mid-run and comes back), so the best of them
    can be a step that does nothing, and its full-length run does nothing too."""
    movers = [t for t in trials if _moved(t, original) and math.isfinite(t.score)] if retain_only else []
    return _best(movers or trials, original, knob)


def _form(t: Trial, knob: str) -> dict[str, Any]:
    """A trial's options other than the step and the length (e.g. ``schedule``), kept by the runs after it."""
    return {key: v for key, v in t.options.items() if key not in (knob, "epochs")}


def _bracket(
    trials: list[Trial], b: Trial, original: dict[str, float], knob: str, protocol: str
) -> float | None:
    """For a method that ascends the forget loss unbounded (GA): the step halfway (geometrically) between
    the best trial's and a neighbouring step of the same form whose best trial straddles the target with
    it (it loses less RA/TA but forgets less, or the reverse; the lower-scoring such neighbour), or None.
    One step of the refinement can take such a method from not forgetting to collapsed."""
    same = [t for t in trials if _form(t, knob) == _form(b, knob) and math.isfinite(t.score)]
    steps = sorted({t.options[knob] for t in same})
    i = steps.index(b.options[knob])
    near = [
        min((t for t in same if t.options[knob] == steps[j]), key=lambda t: choice_key(t, original, knob))
        for j in (i - 1, i + 1)
        if 0 <= j < len(steps)
    ]
    fb, db = sum(_forget_terms(b.signals, original, protocol)), damage(b.signals, original)
    across = [
        t
        for t in near
        if (damage(t.signals, original) - db) * (sum(_forget_terms(t.signals, original, protocol)) - fb) < 0
    ]
    if not across:
        return None
    other = min(across, key=lambda t: choice_key(t, original, knob))
    return math.sqrt(b.options[knob] * other.options[knob])


def _last_run(
    base: Any,
    trials: list[Trial],
    b: Trial,
    original: dict[str, float],
    knob: str,
    protocol: str,
    by_epoch: bool,
) -> tuple[float, int] | None:
    """The plan's last run, (step, epochs) from the anchor ``b``: FT and l1-sparse, which forget only
    through training on D_r, the best step at the full length; so for methods scored every epoch, whose
    quarter-length state the half-length runs have shown, unless the method ascends the forget loss
    unbounded (GA) and the best trial's neighbours straddle the target: then the step between them, at
    half length (a cliff); others the best step at a quarter of the epochs."""
    full, short = int(base.cfg.epochs), max(1, int(base.cfg.epochs) // 2)
    if by_epoch and base.ascent_cliff:
        mid = _bracket(trials, b, original, knob, protocol)
        if mid is not None:
            return mid, short
    if base.retain_only or by_epoch:
        return b.options[knob], full
    return (b.options[knob], max(1, short // 2)) if short > 1 else None


def step_knob(method: str) -> str:
    """The option ``tune`` sweeps for a method: its learning rate, or IU's single step ``alpha``."""
    return "alpha" if method == "iu" else "lr"


def _other_form(method: Any, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The method's other published form, tried unless the user fixed one: RL and SalUn in the reference
    code's CIFAR-100 ``concat`` schedule (relabelled D_f shuffled into D_r) next to the authors' stated
    sequential one (methods/rl.py)."""
    if method.name in ("rl", "salun") and "schedule" not in spec and method.cfg.schedule == "sequential":
        return {"schedule": "concat"}
    return None


def _check_budget(max_trials: Any, every_epoch: Any, max_shadow: Any = None) -> None:
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ArgumentError(f"max_trials= must be an int >= 1, got {max_trials!r}")
    if max_shadow is not None and (
        isinstance(max_shadow, bool) or not isinstance(max_shadow, int) or max_shadow < 1
    ):
        raise ArgumentError(f"max_shadow= must be None (all) or an int >= 1, got {max_shadow!r}")
    if not isinstance(every_epoch, bool):
        raise ArgumentError(f"every_epoch= must be True or False, got {every_epoch!r}")


@dataclass
class _Runs:
    """The training runs of one tuning: its trials, the budget spent, and the runs replayed from ``store``."""

    model: nn.Module
    spec: dict[str, Any]
    split: Split
    k: int
    seed: int
    ecfg: EngineConfig
    knob: str
    original: dict[str, float]
    protocol: str
    max_shadow: int | None
    by_epoch: bool  # also score after each epoch (the method is prefix consistent)
    has_epochs: bool
    max_trials: int
    store: TrialStore | None = None
    on_run: Callable[[int, int, Trial, Trial], None] | None = None
    trials: list[Trial] = field(default_factory=list)
    spent: int = 0  # training runs so far (the budget); a run scored after each epoch adds several trials
    resumed: int = 0

    def best(self) -> Trial:
        return _best(self.trials, self.original, self.knob)

    def run(self, value: float, epochs: int, form: dict[str, Any] | None = None) -> Trial:
        """The trial of one training run (and those of its epochs); a run done before is not repeated."""
        opts = {self.knob: float(value)} | ({"epochs": epochs} if self.has_epochs else {}) | (form or {})
        existing = next((t for t in self.trials if t.options == opts), None)
        if existing is not None:
            return existing
        run_no, first = self.spent, len(self.trials)
        self.spent += 1
        kept = self.store.get(opts) if self.store is not None else None
        if kept is not None:  # a run of this tuning that ended before it was stopped: its trials as they were
            self.trials.extend(replace(trial_from(t), run=run_no) for t in kept)
            trial = self.trials[-1]
            self.resumed += 1
        else:
            trial = self._train(opts, epochs, run_no)
            if self.store is not None:
                self.store.put(opts, [trial_dict(t) for t in self.trials[first:]])
        if self.on_run is not None:
            self.on_run(self.spent, self.max_trials, trial, self.best())
        return trial

    def _signals(self, model: nn.Module) -> dict[str, float]:
        return signals(model, self.split, self.k, self.seed, False, self.max_shadow)

    def _train(self, opts: dict[str, Any], epochs: int, run_no: int) -> Trial:
        m = build_method(self.spec | opts)
        engine = Engine(copy.deepcopy(self.ecfg), None)
        task = Task(
            VisionFamily(num_classes=self.k), copy.deepcopy(self.model), self.split, engine, self.seed
        )
        t0 = time.perf_counter()

        def at_epoch(desc: str, done: int, current: nn.Module) -> None:
            # the state after ``done`` epochs is a ``done``-epoch run (prefix_consistent): a free trial
            eo = opts | {"epochs": done}
            if done < epochs and not any(t.options == eo for t in self.trials):
                s = self._signals(m.finished(current))
                sc = score(s, self.original, self.protocol)
                self.trials.append(Trial(eo, sc, s, time.perf_counter() - t0, run_no))

        if self.by_epoch:
            engine.epoch_end = at_epoch
        try:
            m.run(task)
            s = self._signals(task.model)
            sc = score(s, self.original, self.protocol)
        except DivergenceError as exc:  # a diverged trial (the NaN guard stopped it) scores worst
            s, sc = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, math.inf
        trial = Trial(opts, sc, s, time.perf_counter() - t0, run_no)
        self.trials.append(trial)
        return trial


def _open_store(
    keep_in: str | Path | None, model: nn.Module, split: Split, k: int, **settings: Any
) -> TrialStore | None:
    """The runs kept in ``keep_in`` for this tuning (:mod:`unlearnkit.tuning_store`), or None."""
    if keep_in is None:
        return None
    store = TrialStore(keep_in, fingerprint(model, split, k, **settings))
    if store.stale:
        warnings.warn(
            f"{store.path} holds the runs of another tuning (another model, data or options) or cannot be "
            "read: the first run to end replaces it",
            UserWarning,
            stacklevel=4,
        )
    return store


def tune_split(
    model: nn.Module,
    spec: dict[str, Any],
    split: Split,
    k: int,
    engine: dict[str, Any] | None = None,
    seed: int = 0,
    max_trials: int = 10,
    every_epoch: bool = True,
    max_shadow: int | None = MAX_SHADOW,
    on_run: Callable[[int, int, Trial, Trial], None] | None = None,
    scored_on: str = "test",
    keep_in: str | Path | None = None,
) -> TuneResult:
    """Tune ``spec`` (a method section: name and fixed options) on a prepared split; see the module doc.

    ``max_trials`` bounds the training runs. With ``every_epoch`` (default), a method whose first e
    epochs are an e-epoch run (``Method.prefix_consistent``) is also scored after each epoch of each run,
    and its last run is the best step at the full epochs; ``every_epoch=False`` scores runs only at their
    end (the plan before epoch scoring). ``max_shadow``: the attack's shadow sets at most (None: all).
    ``on_run(runs done, max_trials, the run's last trial, the best so far)`` after each run (progress).
    ``scored_on`` records what ``split.test`` is: "test", or "heldout" (a validation set in its place).
    ``keep_in`` (a folder): each run's trials are kept there as the run ends, and a rerun of the same
    tuning replays them instead of training again (:mod:`unlearnkit.tuning_store`)."""
    _check_budget(max_trials, every_epoch, max_shadow)
    try:
        base = build_method(spec)
    except ConfigError as exc:
        raise ArgumentError(api_phrased(str(exc))) from exc
    if base.exact:
        raise ArgumentError(f"method={spec['name']!r} is exact: it has nothing to tune")
    knob = step_knob(base.name)
    base_value = float(getattr(base.cfg, knob))
    full_epochs = int(base.cfg.epochs)
    short = max(1, full_epochs // 2) if full_epochs else 0
    protocol = "class" if split.test_forgotten is not None else "random"
    ecfg = build_dataclass(EngineConfig, {"progress": False} | (engine or {}) | {"seed": seed}, "engine")
    original = signals(model, split, k, seed, max_shadow=max_shadow)
    by_epoch = every_epoch and bool(full_epochs) and base.prefix_consistent
    settings = {"spec": spec, "engine": asdict(ecfg), "seed": seed, "every_epoch": every_epoch}
    store = _open_store(keep_in, model, split, k, max_shadow=max_shadow, **settings)
    context = (model, spec, split, k, seed, ecfg, knob, original, protocol, max_shadow, by_epoch)
    runs = _Runs(*context, bool(full_epochs), max_trials, store, on_run)
    trials, run, best = runs.trials, runs.run, runs.best

    plan = [(base_value * f, short) for f in SWEEP]
    for value, epochs in plan[:max_trials]:
        run(value, epochs)
    other = _other_form(base, spec)
    if other is not None:  # the other form over the upper half of the sweep's best, then refine either
        centre = best().options[knob]
        for f in OTHER_FORM:
            if runs.spent < max_trials:
                run(centre * f, short, other)
        refine = REFINE[1:]
    else:
        refine = REFINE
    anchor = functools.partial(_centre, trials, original, knob, base.retain_only)
    for factors in refine:
        b = anchor()
        for f in factors:
            if runs.spent < max_trials:
                run(b.options[knob] * f, short, _form(b, knob))
    if full_epochs and short >= 1 and runs.spent < max_trials:
        b = anchor()
        last = _last_run(base, trials, b, original, knob, protocol, by_epoch)
        if last is not None:
            run(*last, _form(b, knob))
    shadow = [min(len(split.test), max_shadow or len(split.test)), len(split.test)]
    result = (dict(best().options), trials, original, shadow, scored_on, runs.resumed)
    return TuneResult(spec["name"], protocol, *result)


def check_tunable(setup: Any) -> None:
    """A one-line error unless the setup's protocol is the one ``tune`` scores (classification)."""
    if setup.protocol.name != "classification":  # its signals are forget accuracy and the MIA score
        raise UnlearnkitError(
            f"tune calibrates classifiers (the classification protocol) for now, not {setup.protocol.name!r}"
        )


def scored_split(split: Split) -> Split:
    """The split tune scores: ``split`` itself, or with a validation set (``split.heldout``) that set in
    place of the test set, divided as the test set is (a class-wise split: the forgotten classes' examples
    apart, as ``test_forgotten``)."""
    held = split.heldout
    if held is None:
        return split
    if split.test_forgotten is None:
        return replace(split, test=held, heldout=None)
    gone = torch.isin(held.labels, split.forget.labels.unique())
    if bool(gone.all()):
        raise ConfigError("split.heldout has no example outside the forgotten classes: make it larger")
    rest, of_class = held.take((~gone).nonzero().squeeze(1)), held.take(gone.nonzero().squeeze(1))
    return replace(split, test=rest, test_forgotten=of_class, heldout=None)


def tune_setup(
    setup: Any,
    model: nn.Module,
    spec: dict[str, Any],
    max_trials: int = 10,
    every_epoch: bool = True,
    max_shadow: int | None = MAX_SHADOW,
    on_run: Callable[[int, int, Trial, Trial], None] | None = None,
    keep_in: str | Path | None = None,
) -> TuneResult:
    """Tune ``spec`` for ``model`` on an experiment setup's split, engine and seed (``unlearnkit tune``,
    ``bench --tune``), on ``split.heldout`` where the config has one; errors name config keys. ``keep_in``
    as in :func:`tune_split`."""
    check_tunable(setup)
    build_method(spec)  # a bad option: the config's message (method(ga).lrr), before tune_split's API one
    k = int(setup.family.num_classes or setup.data.num_classes)
    try:
        on = "heldout" if setup.split.heldout is not None else "test"
        args = (setup.cfg["engine"], setup.seed, max_trials, every_epoch, max_shadow, on_run, on, keep_in)
        return tune_split(model, spec, scored_split(setup.split), k, *args)
    except ArgumentError as exc:  # phrased for the API: name the config key instead
        raise ConfigError(str(exc).replace("method=", "method.name=")) from exc

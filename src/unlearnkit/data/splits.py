"""Forget / retain / test splits with stable example ids, and their validation.

Builders follow the SalUn/Unlearn-Sparse protocol (classification.md §1.1): *random* forgetting draws a
fraction (or count) of the training ids; *class-wise* forgetting takes every training example of the
chosen classes and removes those classes from the test set used for TA (their test examples are kept
aside as ``test_forgotten``). ``from_ids`` accepts a JSON file of ids, e.g. a worst-case selection.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearnkit.data.examples import ExampleSet, concat
from unlearnkit.errors import ConfigError, DataError, did_you_mean


@dataclass
class Split:
    """The sets an unlearning run needs; ``forget`` and ``retain`` partition the training set."""

    forget: ExampleSet
    retain: ExampleSet
    test: ExampleSet
    kind: str = "custom"
    info: dict[str, Any] = field(default_factory=dict)
    test_forgotten: ExampleSet | None = None
    # a validation set carved from the test set (``split.heldout``): ``tune`` scores on it, every reported
    # metric uses ``test`` (the rest), so the calibration never sees the reported examples
    heldout: ExampleSet | None = None

    def __post_init__(self) -> None:
        validate_split(self.forget, self.retain, self.test)

    @property
    def forget_ids(self) -> list[int]:
        return sorted(int(i) for i in self.forget.ids.tolist())

    def forget_ids_sha256(self) -> str:
        return ids_sha256(self.forget_ids)

    @property
    def train(self) -> ExampleSet:
        """Forget ∪ retain, for training the original model."""
        cols = {k: torch.cat([self.retain.columns[k], self.forget.columns[k]]) for k in self.retain.columns}
        ids = torch.cat([self.retain.ids, self.forget.ids])
        return ExampleSet(cols, ids, self.retain.transform, self.retain.meta)


def ids_sha256(ids: list[int]) -> str:
    """sha256 of the sorted ids written as a JSON list: the forget-set fingerprint used in receipts."""
    return hashlib.sha256(json.dumps(sorted(int(i) for i in ids)).encode()).hexdigest()


def validate_split(forget: ExampleSet, retain: ExampleSet, test: ExampleSet | None = None) -> None:
    if len(forget) == 0:
        raise DataError(
            "the forget set is empty: choose a forget fraction > 0, a class that has training examples, "
            "or a non-empty ids file"
        )
    if len(retain) == 0:
        raise DataError("the retain set is empty: forgetting every training example leaves nothing to keep")
    overlap = set(forget.ids.tolist()) & set(retain.ids.tolist())
    if overlap:
        shown = ", ".join(map(str, sorted(overlap)[:5]))
        raise DataError(
            f"{len(overlap)} example id(s) are in both the forget and the retain set ({shown}...): "
            "an example is either forgotten or retained; remove them from the retain set"
        )
    if test is not None and len(test) == 0:
        raise DataError("the test set is empty: TA and the MIA need held-out examples")
    for name, s in (("forget", forget), ("retain", retain)) + ((("test", test),) if test is not None else ()):
        if set(s.columns) != set(forget.columns):
            raise DataError(
                f"the {name} set has columns {sorted(s.columns)} but the forget set has "
                f"{sorted(forget.columns)}: all sets must come from the same dataset format"
            )


def validate_labels(data: ExampleSet, num_classes: int, name: str = "dataset") -> None:
    if "y" not in data.columns:
        return
    y = data.labels
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}] but the model has {num_classes} "
            f"classes: labels must lie in 0..{num_classes - 1} (set model.num_classes or fix the labels)"
        )


def random_split(train: ExampleSet, test: ExampleSet, fraction: float | int, seed: int) -> Split:
    """Forget a random ``fraction`` (0 < f < 1) or ``count`` (int >= 1) of the training examples."""
    n = len(train)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DataError(f"forget size must be a fraction in (0, 1) or a count, got {fraction!r}")
    if fraction == 1.0 and isinstance(fraction, float):  # 100% (no retain set) or one example?
        raise DataError("forget size 1.0 is ambiguous: a fraction lies in (0, 1), e.g. 0.1; one example is 1")
    if isinstance(fraction, float) and fraction.is_integer() and fraction >= 1:
        fraction = int(fraction)
    if isinstance(fraction, int):
        k = fraction
    elif 0 < fraction < 1:
        k = int(round(fraction * n))
    else:
        raise DataError(f"forget fraction must lie strictly between 0 and 1, got {fraction}")
    if not 1 <= k < n:
        raise DataError(
            f"forget size {k} is out of range for a training set of {n} examples (use 1..{n - 1})"
        )
    rng = np.random.RandomState(seed)
    pos = torch.as_tensor(np.sort(rng.choice(n, size=k, replace=False)), dtype=torch.long)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    return Split(
        train.take(pos),
        train.take((~mask).nonzero().squeeze(1)),
        test,
        "random",
        {"fraction": k / n, "count": k, "seed": seed},
    )


def class_split(train: ExampleSet, test: ExampleSet, classes: int | list[int]) -> Split:
    """Forget every training example of ``classes``; TA is measured on the other classes."""
    classes = [classes] if isinstance(classes, int) else [int(c) for c in classes]
    if not classes:
        raise DataError("class-wise forgetting needs at least one class")
    y = train.labels
    present = set(y.unique().tolist())
    absent = [c for c in classes if c not in present]
    if absent:
        raise DataError(f"class(es) {absent} have no training examples; present classes: {sorted(present)}")
    fmask = torch.isin(y, torch.as_tensor(classes))
    tmask = torch.isin(test.labels, torch.as_tensor(classes))
    return Split(
        train.take(fmask.nonzero().squeeze(1)),
        train.take((~fmask).nonzero().squeeze(1)),
        test.take((~tmask).nonzero().squeeze(1)),
        "class",
        {"classes": classes},
        test_forgotten=test.take(tmask.nonzero().squeeze(1)),
    )


def read_ids_file(path: str | Path) -> list[int]:
    """Read forget ids from JSON: a list of ints or an object with an ``"ids"`` list."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"forget-ids file {str(p)!r} does not exist: pass the path of a JSON list of ids")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"forget-ids file {str(p)!r} is not valid JSON ({exc})") from exc
    ids = obj.get("ids") if isinstance(obj, dict) else obj
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise DataError(
            f"forget-ids file {str(p)!r} must hold a JSON list of integer ids or {{'ids': [...]}}"
        )
    return check_ids(ids, f"forget-ids file {str(p)!r}")


def check_ids(ids: Any, where: str = "the list of forget ids") -> list[int]:
    """``ids`` as a list of ints; a clear error when it is empty, not integers or lists an id twice."""
    if not isinstance(ids, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise DataError(f"{where} must be a list of integer example ids, got {ids!r:.80}")
    if not ids:
        raise DataError(f"{where} is empty: a forget set needs at least one example id")
    seen: set[int] = set()
    twice = sorted({i for i in ids if i in seen or seen.add(i)})
    if twice:
        raise DataError(
            f"{where} lists some ids more than once ({twice[:5]}): each example is forgotten once"
        )
    return [int(i) for i in ids]


def ids_from_spec(spec: dict[str, Any]) -> list[int]:
    """The forget ids of a ``split.kind=ids`` section: ``split.ids_file`` (JSON) or inline ``split.ids``."""
    if spec.get("ids_file"):
        return read_ids_file(spec["ids_file"])
    if spec.get("ids") is not None:
        return check_ids(spec["ids"], "split.ids")
    raise DataError("split.kind=ids needs split.ids_file=PATH (a JSON list of example ids)")


def ids_split(train: ExampleSet, test: ExampleSet, ids: list[int]) -> Split:
    """Forget exactly the given stable ids; retain every other training example."""
    ids = check_ids(ids)
    forget = train.subset(ids)
    return Split(forget, train.exclude(ids), test, "ids", {"count": len(ids), "ids_sha256": ids_sha256(ids)})


# The options of each generic split kind (a family may add kinds: text ``ids``, diffusion ``concept``).
SPLIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "random": ("forget",),
    "class": ("classes",),
    "ids": ("ids_file", "ids"),
    "benchmark": ("forget", "retain"),
}


def check_split_options(spec: dict[str, Any], kinds: dict[str, tuple[str, ...]]) -> str:
    """The split's kind, after checking that every key of ``spec`` is an option of that kind (``kinds``
    maps each kind to its options). A key of another kind is named with the kind it belongs to."""
    kind = spec.get("kind", "random")
    if kind not in kinds:
        raise ConfigError(f"unknown split.kind {kind!r}: {did_you_mean(str(kind), sorted(kinds))}")
    allowed = kinds[kind]
    for key in spec:
        if key == "kind" or key in allowed:
            continue
        owners = [k for k, opts in kinds.items() if key in opts]
        if owners:
            hint = f"; it is an option of split.kind={owners[0]}"
        else:
            every = {o: k for k, opts in kinds.items() for o in opts}
            close = difflib.get_close_matches(str(key), list(every), n=1)
            hint = ""
            if close:
                where = "" if close[0] in allowed else f" (with split.kind={every[close[0]]})"
                hint = f"; did you mean split.{close[0]}{where}?"
        opts = ", ".join(allowed) or "none"
        raise ConfigError(f"unknown option split.{key} for split.kind={kind} (its options: {opts}){hint}")
    return kind


def benchmark_split(data: Any, spec: dict[str, Any]) -> Split:
    """A split the dataset defines itself (TOFU's forget10/retain90, MUSE's forget/retain): the ids come
    from ``data.meta["forget_ids"][name]`` and ``data.meta["retain_ids"][name]``; test = the holdout."""
    fids = data.meta.get("forget_ids") or {}
    rids = data.meta.get("retain_ids") or {}
    name = spec.get("forget") or data.meta.get("forget_split")
    if name not in fids:
        raise ConfigError(
            f"split.forget={name!r} is not a split of {data.name!r}; choose one of {sorted(fids)}"
        )
    retain_name = spec.get("retain") or data.meta.get("retain_split") or _complement(name, rids)
    if retain_name not in rids:
        raise ConfigError(f"split.retain={retain_name!r} is not a split of {data.name!r}: {sorted(rids)}")
    retain = with_pretrain(data.train.subset(rids[retain_name]), data)
    return Split(
        data.train.subset(fids[name]), retain, data.test, "benchmark", {"forget": name, "retain": retain_name}
    )


def with_pretrain(retain: ExampleSet, data: Any) -> ExampleSet:
    """``retain`` plus the general knowledge a dataset trains alongside (TOFU's real authors and world
    facts, ``meta["pretrain"]``), so the retrained oracle sees them too."""
    if data.meta.get("pretrain") is None:
        return retain
    return concat(retain, data.meta["pretrain"])


def _complement(forget: str, retain_ids: dict) -> str | None:
    """TOFU's naming: forget10 pairs with retain90."""
    digits = "".join(c for c in forget if c.isdigit())
    if digits:
        cand = f"retain{100 - int(digits)}"
        if cand in retain_ids:
            return cand
    return next(iter(retain_ids), None)


def carve_heldout(test: ExampleSet, size: Any, seed: int) -> tuple[ExampleSet, ExampleSet]:
    """(validation set, the rest of the test set): ``split.heldout``, a fraction in (0, 1) or a count of
    the test examples, drawn at random with the run's seed."""
    n = len(test)
    ok_type = isinstance(size, (int, float)) and not isinstance(size, bool)
    k = (size if isinstance(size, int) else int(round(size * n))) if ok_type else None
    if k is None or (isinstance(size, float) and not 0 < size < 1) or not 1 <= k < n:
        raise ConfigError(
            f"split.heldout must be a fraction in (0, 1) or a count in 1..{n - 1} of the {n} test examples "
            f"(the validation set tune scores on; the rest is reported), got {size!r}"
        )
    pos = np.sort(np.random.RandomState(seed).choice(n, size=k, replace=False))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.as_tensor(pos, dtype=torch.long)] = True
    return test.take(mask.nonzero().squeeze(1)), test.take((~mask).nonzero().squeeze(1))


def make_split(train: ExampleSet, test: ExampleSet, spec: dict[str, Any], seed: int) -> Split:
    """Build a split from the ``split:`` section of a config (kinds random, class and ids)."""
    kind = spec.get("kind", "random")
    if kind == "random":
        return random_split(train, test, spec.get("forget", 0.1), seed)
    if kind == "class":
        classes = spec.get("classes", 0)
        if classes == "by-seed":  # a different class per seed: seed mod K
            classes = int(seed) % int(train.labels.max() + 1)
        return class_split(train, test, classes)
    if kind == "ids":
        return ids_split(train, test, ids_from_spec(spec))
    raise DataError(f"unknown split kind {kind!r}: use random, class or ids")

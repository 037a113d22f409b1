"""The forget/retain/test split of a Python API call, built from the user's data (``data/user.py``).

Three ways to say what to forget:
- ``forget=`` and ``retain=`` as data; examples without ids are numbered forget first (0..N_f-1), then
  retain, so an example given in both would get two ids: such overlaps are found by content instead
  (byte-identical inputs with the same label) and refused;
- ``train_set=`` with ``forget=`` (and optionally ``retain=``) as row indices or boolean masks into it;
  ids are the row numbers, and an index in both is refused;
- ``forget_class=c`` (with ``train_set=``, or with ``forget=``/``retain=``): class-wise forgetting with the
  SalUn protocol (classification.md §1.1): every training example of class ``c`` is forgotten, the test
  set used for TA drops class ``c``, and the class's own test examples are kept to report
  ``TA_forgotten`` (the forgotten class's test accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.data.user import identical_rows, index_vector, to_example_set
from unlearnkit.errors import ArgumentError, ArgumentTypeError, DataError


def user_split(
    forget: Any,
    retain: Any,
    test: Any,
    train_set: Any = None,
    forget_class: int | None = None,
    test_arg: str = "test",
) -> Split:
    """The Split for ``unlearn``/``evaluate``; every error is an ArgumentError naming the API argument.
    ``test_arg``: the argument that gave ``test`` (``heldout`` for ``tune``'s own held-out set)."""
    if test is None:
        raise ArgumentError(
            f"{test_arg}= is missing: TA and the MIA need held-out examples (pass {test_arg}=(x, y))"
        )
    t, _ = to_example_set(test, test_arg)
    if forget_class is not None and (isinstance(forget_class, bool) or not isinstance(forget_class, int)):
        raise ArgumentTypeError(f"forget_class= must be an int class index, got {forget_class!r}")
    if train_set is not None:
        f, r = _from_train_set(train_set, forget, retain, forget_class)
    else:
        if forget_class is None and forget is None:
            raise ArgumentError("forget= is missing: pass the examples to forget, or forget_class=")
        if retain is None:
            raise ArgumentError("retain= is missing: pass the examples to keep (or train_set= with forget=)")
        f, r = _from_pair(forget, retain)
        if forget_class is not None:
            _check_class_pair(f, r, forget_class)
    try:
        if forget_class is None:
            return Split(f, r, t)
        tmask = t.labels == forget_class
        return Split(
            f,
            r,
            t.take((~tmask).nonzero().squeeze(1)),
            "class",
            {"classes": [forget_class]},
            test_forgotten=t.take(tmask.nonzero().squeeze(1)),
        )
    except DataError as exc:
        msg = str(exc)
        if test_arg != "test":
            rest = " (without forget_class=)" if forget_class is not None else ""
            msg = msg.replace("the test set", f"{test_arg}={rest}")
        raise ArgumentError(msg) from exc


def _from_pair(forget: Any, retain: Any) -> tuple[ExampleSet, ExampleSet]:
    f, f_ids = to_example_set(forget, "forget")
    r, r_ids = to_example_set(retain, "retain")
    if not r_ids:
        r = ExampleSet(r.columns, r.ids + (int(f.ids.max()) + 1 if len(f) else 0), r.transform, r.meta)
    comparable = (
        "x" in f.columns and "x" in r.columns and f.columns["x"].shape[1:] == r.columns["x"].shape[1:]
    )
    if not (f_ids and r_ids) and comparable:
        same = identical_rows(f, r)
        if same:
            i, j = same[0]
            raise ArgumentError(
                f"forget= and retain= share {len(same)} identical example(s) (e.g. forget[{i}] equals "
                f"retain[{j}]): an example is either forgotten or retained; remove them from retain="
            )
    return f, r


def _from_train_set(
    train_set: Any, forget: Any, retain: Any, forget_class: int | None
) -> tuple[ExampleSet, ExampleSet]:
    data, _ = to_example_set(train_set, "train_set")
    n = len(data)
    if forget_class is not None:
        if forget is not None or retain is not None:
            raise ArgumentError(
                "pass either forget_class= or forget=/retain= indices with train_set=, not both"
            )
        fmask = data.labels == forget_class
        if not fmask.any():
            present = sorted(set(data.labels.tolist()))
            raise ArgumentError(
                f"forget_class={forget_class} has no examples in train_set= (classes present: {present})"
            )
        return data.take(fmask.nonzero().squeeze(1)), data.take((~fmask).nonzero().squeeze(1))
    fi = _indices(forget, n, "forget")
    if retain is None:
        keep = sorted(set(range(n)) - set(fi))
    else:
        keep = _indices(retain, n, "retain")
        both = sorted(set(fi) & set(keep))
        if both:
            raise ArgumentError(
                f"forget= and retain= share {len(both)} index(es) into train_set= ({both[:5]}): an example "
                "is either forgotten or retained; remove them from retain="
            )
    return data.take(torch.as_tensor(fi)), data.take(torch.as_tensor(keep, dtype=torch.long))


def _indices(obj: Any, n: int, arg: str) -> list[int]:
    if obj is None:
        raise ArgumentError(f"{arg}= is missing: with train_set=, pass the row indices (or a boolean mask)")
    is_mask = (torch.is_tensor(obj) and obj.dtype == torch.bool) or (
        isinstance(obj, np.ndarray) and obj.dtype == bool
    )
    if is_mask and len(obj) != n:
        raise ArgumentError(f"{arg}= is a boolean mask of length {len(obj)} but train_set= has {n} rows")
    idx = index_vector(obj)
    if idx is None:
        raise ArgumentTypeError(
            f"with train_set=, {arg}= must be row indices (ints) or a boolean mask, got {type(obj).__name__}"
        )
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ArgumentError(f"{arg}= has indices outside train_set= (0..{n - 1}): {bad[:5]}")
    if len(set(idx)) != len(idx):
        raise ArgumentError(f"{arg}= lists some indices more than once")
    if not idx:
        raise ArgumentError(f"{arg}= selects no example")
    return idx


def _check_class_pair(f: ExampleSet, r: ExampleSet, c: int) -> None:
    if not (f.labels == c).any():
        present = sorted(set(f.labels.tolist()))
        raise ArgumentError(f"forget_class={c} has no examples in forget= (its classes: {present})")
    if not (f.labels == c).all():
        raise ArgumentError(
            f"forget= holds classes other than forget_class={c}; pass only that class's examples"
        )
    if (r.labels == c).any():
        raise ArgumentError(
            f"retain= holds {int((r.labels == c).sum())} example(s) of forget_class={c}: class-wise "
            "forgetting removes the whole class from training"
        )

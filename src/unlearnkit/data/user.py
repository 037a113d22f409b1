"""Data from the user's world, turned into :class:`ExampleSet`s for the Python API, with checks that name
the API argument (``forget=``, ``test=``) in every message.

Accepted for each of ``forget``/``retain``/``test``/``train_set``:
- an :class:`ExampleSet` (its ids are kept) or a dict of columns ``{"x", "y"[, "id"]}``;
- an ``(x, y)`` pair of tensors, numpy arrays or nested lists (a tuple, or a 2-list whose second item is
  a label vector as long as the first);
- a ``torch.utils.data.Dataset`` (map-style) or a list of ``(x, y)`` pairs or of ``{"x", "y"}`` dicts;
- a Hugging Face ``datasets.Dataset`` with a feature column (``x``, ``image``, ``img``, ``pixel_values``,
  ``features``, ``input``) and a label column (``y``, ``label``, ``labels``, ``target``). ``Image``
  columns become ``[C, H, W]`` floats divided by 255, as torchvision's ``to_tensor`` does.

Features keep the values and shape they come with (no range or layout is assumed); labels must be whole
numbers (floats such as ``2.0`` are accepted, ``2.5`` is refused rather than truncated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from unlearnkit.data.examples import ExampleSet
from unlearnkit.errors import ArgumentError, ArgumentTypeError

X_COLUMNS = ("x", "image", "img", "pixel_values", "features", "input")
Y_COLUMNS = ("y", "label", "labels", "target")

ACCEPTED = (
    "an (x, y) pair of tensors/numpy arrays/lists, a torch Dataset of (x, y) pairs, a Hugging Face "
    "datasets.Dataset, a dict of columns or an ExampleSet"
)


def to_example_set(data: Any, arg: str) -> tuple[ExampleSet, bool]:
    """``data`` as an ExampleSet with float features and long labels, and whether it carries its own ids.

    Raises ArgumentError/ArgumentTypeError naming ``arg`` for anything it cannot use."""
    if data is None:
        raise ArgumentError(f"{arg}= is missing: pass {ACCEPTED}")
    if isinstance(data, ExampleSet):
        if "x" in data.columns and "y" in data.columns:
            _check_x(data.columns["x"], arg)
            labels(data.columns["y"], arg, len(data))
        return data, True
    if isinstance(data, dict):
        if "x" not in data or "y" not in data:
            raise ArgumentError(f"{arg}= as a dict needs 'x' and 'y' columns, got {sorted(data)}")
        x, y = _features(data["x"], arg), labels(data["y"], arg)
        _same_length(x, y, arg)
        return ExampleSet({"x": x, "y": y}, data.get("id")), "id" in data
    if _is_hf_dataset(data):
        return _from_hf(data, arg), False
    if _is_xy_pair(data):
        x, y = _features(data[0], arg), labels(data[1], arg)
        _same_length(x, y, arg)
        return ExampleSet({"x": x, "y": y}), False
    if isinstance(data, IterableDataset):
        raise ArgumentTypeError(f"{arg}= is an iterable-style dataset; pass a map-style one (with __len__)")
    if isinstance(data, (Dataset, list)):
        return _from_items(data, arg), False
    raise ArgumentTypeError(f"cannot use {type(data).__name__} as {arg}=: pass {ACCEPTED}")


def _is_xy_pair(data: Any) -> bool:
    if isinstance(data, tuple) and len(data) == 2:
        return True
    if isinstance(data, list) and len(data) == 2:  # [x, y] columns, not a list of two (x, y) examples
        try:
            x, y = np.asarray(data[0]), np.asarray(data[1])
        except ValueError:
            return False
        return y.ndim == 1 and x.ndim >= 1 and len(x) == len(y) and y.dtype != object
    return False


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "column_names")


def _features(x: Any, arg: str) -> torch.Tensor:
    if torch.is_tensor(x):
        t = x.detach().cpu()
    else:
        try:
            a = np.asarray(x)
        except ValueError as exc:
            raise ArgumentError(
                f"{arg}= features have ragged shapes ({exc}); give every example one shape"
            ) from None
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ArgumentTypeError(
                f"{arg}= features must be numbers of one shape per example, got dtype {a.dtype}"
            )
        t = torch.as_tensor(a)
    if t.ndim == 0:
        raise ArgumentError(f"{arg}= features must have one row per example, got a scalar")
    t = t.float() if not t.is_floating_point() or t.dtype == torch.float64 else t
    _check_x(t, arg)
    return t


def _check_x(x: torch.Tensor, arg: str) -> None:
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            row = int(bad.reshape(len(x), -1).any(1).nonzero()[0, 0])
            raise ArgumentError(
                f"{arg}= features hold {int(bad.sum())} NaN/inf value(s) (first in example {row}): this is "
                "a data problem, not a learning-rate one; clean or impute those inputs before unlearning"
            )


def labels(y: Any, arg: str, n: int | None = None) -> torch.Tensor:
    """``y`` as a 1-D long tensor; refuses non-integer floats, NaN and non-vectors, naming ``arg``."""
    t = y.detach().cpu() if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1:
        hint = " (one-hot? pass y.argmax(1))" if t.ndim == 2 else ""
        raise ArgumentError(
            f"{arg}= labels must be a 1-D vector of class indices, got shape {tuple(t.shape)}{hint}"
        )
    if t.is_floating_point():
        bad = ~torch.isfinite(t) | (t != torch.round(t))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ArgumentError(
                f"{arg}= labels must be whole class indices, got {float(t[i])!r} at position {i}: "
                "pass integer labels (they are never truncated)"
            )
    elif t.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise ArgumentTypeError(f"{arg}= labels must be integers, got dtype {t.dtype}")
    if n is not None and len(t) != n:
        raise ArgumentError(f"{arg}= has {n} examples but {len(t)} labels")
    return t.long()


def _same_length(x: torch.Tensor, y: torch.Tensor, arg: str) -> None:
    if len(x) != len(y):
        raise ArgumentError(f"{arg}= has {len(x)} inputs but {len(y)} labels: give one label per input")
    if len(x) == 0:
        raise ArgumentError(f"{arg}= is empty")


def _from_items(data: Sequence[Any] | Dataset, arg: str) -> ExampleSet:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ArgumentTypeError(f"{arg}= must be a map-style dataset with a length") from exc
    if n == 0:
        raise ArgumentError(f"{arg}= is empty")
    xs, ys = [], []
    for i in range(n):
        item = data[i]
        if isinstance(item, dict):
            xk = next((k for k in X_COLUMNS if k in item), None)
            yk = next((k for k in Y_COLUMNS if k in item), None)
            if xk is None or yk is None:
                raise ArgumentError(f"{arg}[{i}] is a dict with keys {sorted(item)}; name them 'x' and 'y'")
            item = (item[xk], item[yk])
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ArgumentError(f"{arg}[{i}] must be an (x, y) pair, got {type(item).__name__}")
        xs.append(item[0] if torch.is_tensor(item[0]) else torch.as_tensor(np.asarray(item[0])))
        ys.append(item[1].item() if torch.is_tensor(item[1]) else item[1])
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ArgumentError(
            f"{arg}= examples have different shapes {sorted(shapes)[:3]}; give them one shape"
        )
    return ExampleSet({"x": _features(torch.stack(xs), arg), "y": labels(ys, arg)})


def _from_hf(ds: Any, arg: str) -> ExampleSet:
    cols = list(ds.column_names)
    xk = next((k for k in X_COLUMNS if k in cols), None)
    yk = next((k for k in Y_COLUMNS if k in cols), None)
    if xk is None or yk is None:
        raise ArgumentError(
            f"{arg}= (a datasets.Dataset) has columns {cols}: name the inputs one of {list(X_COLUMNS)} and "
            f"the labels one of {list(Y_COLUMNS)} (ds.rename_column)"
        )
    feature = ds.features.get(xk)
    if type(feature).__name__ == "Image":
        arrays = [np.asarray(img) for img in ds[xk]]
        x = torch.as_tensor(np.stack(arrays)).float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # HW(C) -> CHW, as to_tensor
        _check_x(x, arg)
    else:
        x = _features(ds.with_format("numpy")[xk], arg)
    y = labels(ds.with_format("numpy")[yk], arg)
    _same_length(x, y, arg)
    return ExampleSet({"x": x, "y": y})


def check_label_range(y: torch.Tensor, k: int, arg: str, where: str) -> None:
    """Labels must lie in 0..k-1; ``where`` says where k came from (e.g. "the model returns 10 logits")."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ArgumentError(
            f"{arg}= has labels in [{int(y.min())}, {int(y.max())}] but {where}: labels must lie in "
            f"0..{k - 1} (fix the labels or pass num_classes=)"
        )


def identical_rows(a: ExampleSet, b: ExampleSet) -> list[tuple[int, int]]:
    """Positions (i in a, j in b) of examples with byte-identical ``x`` and the same ``y``."""

    def keys(s: ExampleSet) -> list[bytes]:
        x = s.columns["x"].reshape(len(s), -1).contiguous().numpy()
        y = s.columns["y"].numpy()
        return [
            xr.tobytes() + int(yr).to_bytes(8, "little", signed=True) for xr, yr in zip(x, y, strict=True)
        ]

    seen = {k: j for j, k in enumerate(keys(b))}
    return [(i, seen[k]) for i, k in enumerate(keys(a)) if k in seen]


def index_vector(obj: Any) -> list[int] | None:
    """``obj`` as a list of row indices when it is a 1-D integer sequence/array/tensor, else None."""
    if (
        isinstance(obj, (list, tuple))
        and obj
        and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in obj)
    ):
        return [int(i) for i in obj]
    if isinstance(obj, np.ndarray) or torch.is_tensor(obj):
        a = np.asarray(obj.cpu() if torch.is_tensor(obj) else obj)
        if a.ndim == 1 and np.issubdtype(a.dtype, np.integer):
            return [int(i) for i in a]
        if a.ndim == 1 and a.dtype == bool:
            return [int(i) for i in np.flatnonzero(a)]
    return None

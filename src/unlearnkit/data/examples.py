"""Columnar in-memory datasets whose examples carry stable integer ids.

An :class:`ExampleSet` holds equal-length tensors ("columns": ``x``, ``y``, token ids, ...) plus an ``id``
column that never changes when the set is subset, shuffled or split; receipts, forget-id files and
worst-case selections all speak in these ids. Batches are fetched with one indexing operation per column
(``__getitems__``), which keeps the data path cheap next to tiny models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from unlearnkit.errors import DataError

Batch = dict[str, torch.Tensor]


class ExampleSet(Dataset):
    """Equal-length tensor columns plus stable ``id``s; an optional batch-level ``transform``."""

    def __init__(
        self,
        columns: dict[str, torch.Tensor],
        ids: torch.Tensor | Sequence[int] | None = None,
        transform: Callable[[Batch], Batch] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not columns:
            raise DataError("an ExampleSet needs at least one column (for a classifier: 'x' and 'y')")
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"all columns must have the same length, got {lengths}")
        n = next(iter(lengths.values()))
        ids = torch.arange(n) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim != 1 or len(ids) != n:
            raise DataError(f"ids must be a 1-D sequence of length {n}, got shape {tuple(ids.shape)}")
        if len(torch.unique(ids)) != n:
            raise DataError("example ids must be unique; pass ids=None to number examples 0..N-1")
        self.columns = dict(columns)
        self.ids = ids
        self.transform = transform
        self.meta = dict(meta or {})
        self._pos: dict[int, int] | None = None

    # -- Dataset protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Batch:
        """One example (transform applied), as a dict of unbatched values."""
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, idx: list[int]) -> Batch:
        index = torch.as_tensor(idx, dtype=torch.long)
        batch = {k: v[index] for k, v in self.columns.items()}
        batch["id"] = self.ids[index]
        return self.transform(batch) if self.transform is not None else batch

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def labels(self) -> torch.Tensor:
        if "y" not in self.columns:
            raise DataError("this dataset has no 'y' column of labels")
        return self.columns["y"]

    def positions(self, ids: Iterable[int]) -> torch.Tensor:
        """Row positions of the given ids; a clear error names ids that are not in the set."""
        if self._pos is None:
            self._pos = {int(i): p for p, i in enumerate(self.ids.tolist())}
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self._pos]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} id(s) are not in this dataset ({shown}); ids are the dataset's stable "
                f"example ids (range {int(self.ids.min())}..{int(self.ids.max())} here)"
            )
        return torch.as_tensor([self._pos[i] for i in ids], dtype=torch.long)

    def take(self, positions: torch.Tensor) -> ExampleSet:
        positions = torch.as_tensor(positions, dtype=torch.long)
        cols = {k: v[positions] for k, v in self.columns.items()}
        return ExampleSet(cols, self.ids[positions], self.transform, self.meta)

    def subset(self, ids: Iterable[int]) -> ExampleSet:
        return self.take(self.positions(ids))

    def exclude(self, ids: Iterable[int]) -> ExampleSet:
        drop = set(int(i) for i in ids)
        keep = [p for p, i in enumerate(self.ids.tolist()) if i not in drop]
        return self.take(torch.as_tensor(keep, dtype=torch.long))

    def with_column(self, name: str, values: torch.Tensor) -> ExampleSet:
        return ExampleSet(self.columns | {name: values}, self.ids, self.transform, self.meta)

    def all(self) -> Batch:
        """The whole set as one batch (transform applied)."""
        return self.__getitems__(list(range(len(self))))

    def loader(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=_identity,
            drop_last=drop_last,
        )


def uint8_to_unit(batch: Batch) -> Batch:
    """Batch transform: uint8 images in ``x`` -> float32 in [0, 1]."""
    return batch | {"x": batch["x"].float() / 255.0}


def concat(*sets: ExampleSet) -> ExampleSet:
    """Rows of several sets with the same columns (ids must stay unique); transform of the first."""
    if not sets:
        raise DataError("nothing to concatenate")
    cols = {k: torch.cat([s.columns[k] for s in sets]) for k in sets[0].columns}
    return ExampleSet(cols, torch.cat([s.ids for s in sets]), sets[0].transform, sets[0].meta)


def _identity(batch: Batch) -> Batch:
    return batch


def as_example_set(data: Any, name: str = "dataset") -> ExampleSet:
    """Turn user data into an :class:`ExampleSet`.

    Accepts an ExampleSet, a ``(x, y)`` tuple of tensors, a dict of columns, a ``TensorDataset`` or any
    map-style dataset whose items are ``(x, y)`` pairs (materialised once into memory).
    """
    if isinstance(data, ExampleSet):
        return data
    if data is None:
        raise DataError(f"{name} is missing: pass an ExampleSet, a (x, y) tuple or a Dataset of (x, y)")
    if isinstance(data, dict):
        return ExampleSet({k: torch.as_tensor(v) for k, v in data.items() if k != "id"}, data.get("id"))
    if isinstance(data, tuple) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        x, y = data
        return ExampleSet({"x": x.float(), "y": torch.as_tensor(y, dtype=torch.long)})
    if isinstance(data, Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError(f"{name} must be a map-style dataset with a length") from exc
        if n == 0:
            raise DataError(f"{name} is empty")
        xs, ys = [], []
        for i in range(n):
            item = data[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataError(f"{name}[{i}] must be an (x, y) pair, got {type(item).__name__}")
            xs.append(torch.as_tensor(item[0]))
            ys.append(int(item[1]))
        return ExampleSet({"x": torch.stack(xs).float(), "y": torch.as_tensor(ys, dtype=torch.long)})
    raise DataError(
        f"cannot use {type(data).__name__} as {name}: pass an ExampleSet, a (x, y) tuple of tensors, "
        "a dict of columns or a torch Dataset of (x, y) pairs"
    )

"""Per-example outputs of a fixed reference model, computed once before the loop and looked up by example id.

NPO, DPO/IdkPO, GradDiff-KL and RMU compare the model being unlearned with the model it started from
(π_ref = the original). The forget (and retain) examples and the reference are fixed during unlearning, so
their reference values — summed answer NLLs, output log-probabilities, hidden activations — can be computed
once, in ``Method.prepare``, and indexed by the examples' stable ids. Training then holds one model and runs
one forward pass per batch (DESIGN.md, "NPO and DPO cache the reference model's per-example losses once");
the reference projects instead keep a deep copy of the model and run it on every step (llm.md §4, §5).
Under several processes the cache is computed once, split across the ranks, and all-gathered (see
:func:`compute_reference`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.loop import all_gather_objects, world_size
from unlearnkit.errors import UnlearnkitError

RefFn = Callable[[nn.Module, Batch], "dict[str, torch.Tensor] | torch.Tensor"]


class ReferenceCache:
    """``{key: Tensor[N, ...]}`` keyed by example id; :meth:`get` returns the rows of a batch's ids."""

    def __init__(self, ids: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        ids = torch.as_tensor(ids, dtype=torch.long)
        for k, v in values.items():
            if len(v) != len(ids):
                raise UnlearnkitError(f"reference values {k!r} have {len(v)} rows for {len(ids)} ids")
        self.ids, order = ids.sort()
        self.values = {k: v[order.to(v.device)] for k, v in values.items()}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values.values())

    def get(self, ids: torch.Tensor, key: str = "loss", positions: slice | None = None) -> torch.Tensor:
        """Rows of ``key`` for ``ids`` (in the batch's order); a clear error if an id was never cached.
        ``positions``: only those entries of the second dimension (per-position values), copied alone."""
        if key not in self.values:
            raise UnlearnkitError(f"no reference values {key!r}; cached: {sorted(self.values)}")
        table = self.values[key]
        sorted_ids = self.ids.to(ids.device)
        pos = torch.searchsorted(sorted_ids, ids).clamp_max(len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        if not bool(found.all()):
            missing = ids[~found][:5].tolist()
            raise UnlearnkitError(
                f"example id(s) {missing} have no cached reference values: the reference was computed on "
                "another set (reference values are computed in prepare() on the task's split)"
            )
        rows = pos.to(table.device)
        return table[rows] if positions is None else table[rows, positions]


@torch.no_grad()
def compute_reference(
    model: nn.Module,
    data: ExampleSet,
    fn: RefFn,
    batch_size: int,
    device: torch.device | str | None = None,
    budget_bytes: int | None = None,
) -> ReferenceCache | None:
    """Run ``fn(model, batch)`` (no grad, eval mode) over ``data`` and cache its per-example outputs by id.

    ``fn`` returns a tensor ``[B, ...]`` (stored under ``"loss"``) or a dict of them. Values are stored
    in float32 on ``device`` (default: the model's). With ``budget_bytes``, the size of the whole cache
    is estimated from the first batch, and ``None`` is returned (nothing more is computed) when it would
    exceed the budget: the caller then keeps a frozen copy of the model instead.

    Several processes: the batches are dealt out round-robin (rank ``r`` of ``N`` computes batches
    ``r, r + N, ...`` of the same unshuffled batching a single process would use), each example is
    computed once, on one rank, and the shards are all-gathered so that every rank ends with the whole
    cache; the values equal a single process's (the batches are the same). All ranks must call this.
    """
    dev = torch.device(device) if device is not None else _device_of(model)
    world = world_size()
    rank = _rank() if world > 1 else 0
    shard = data
    if world > 1:  # this rank's batches, in the single-process batching
        mine = [
            p
            for k in range(rank, -(-len(data) // batch_size), world)
            for p in range(k * batch_size, min((k + 1) * batch_size, len(data)))
        ]
        shard = data.take(torch.as_tensor(mine, dtype=torch.long))
    was_training = model.training
    model.eval()
    ids: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {}
    checked = budget_bytes is None
    try:
        for batch in shard.loader(batch_size) if len(shard) else []:
            out = fn(model, {k: v.to(_device_of(model)) for k, v in batch.items()})
            out = out if isinstance(out, dict) else {"loss": out}
            if not checked:
                checked = True
                row = sum(v[0].numel() * 4 * _width_scale(data, batch, v) for v in out.values())
                if _over_budget(int(row * len(data)), budget_bytes):
                    return None
            for k, v in out.items():
                parts.setdefault(k, []).append(v.detach().float().to(dev))
            ids.append(batch["id"])
        if not checked and _over_budget(0, budget_bytes):  # a rank without batches still takes part
            return None
    finally:
        model.train(was_training)
    if world > 1:
        local = (
            torch.cat(ids).cpu() if ids else torch.zeros(0, dtype=torch.long),
            {k: torch.cat(v).cpu() for k, v in parts.items()},
        )
        gathered = [g for g in all_gather_objects(local) if len(g[0])]
        ids = [g[0] for g in gathered]
        parts = {k: [g[1][k].to(dev) for g in gathered] for k in gathered[0][1]} if gathered else {}
    if not ids:
        raise UnlearnkitError("cannot compute reference values on an empty set")
    return ReferenceCache(torch.cat(ids).to(dev), {k: cat_padded(v) for k, v in parts.items()})


def cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch values along the batch dimension; per-position values ``[B, T, ...]`` of
    batches trimmed to different widths (:func:`unlearnkit.data.text.trim_padding`) are zero-padded on the
    right to the widest first. A consumer slices a row to its own batch's width (``[:, :T]``); the padded
    positions lie beyond every row's real tokens, where the consumers' masks are 0."""
    if len({p.shape[1:] for p in parts}) > 1 and all(p.ndim >= 2 for p in parts):
        width = max(p.shape[1] for p in parts)
        parts = [F.pad(p, (0, 0) * (p.ndim - 2) + (0, width - p.shape[1])) for p in parts]
    return torch.cat(parts)


def _width_scale(data: ExampleSet, batch: Batch, value: torch.Tensor) -> float:
    """Per-position values of a batch trimmed to its longest row grow to the set's width in the cache."""
    if value.ndim < 2 or "input_ids" not in batch or "input_ids" not in data.columns:
        return 1.0
    return data.columns["input_ids"].shape[1] / max(batch["input_ids"].shape[1], 1)


def _over_budget(estimate: int, budget: int | None) -> bool:
    """Whether the cache would exceed ``budget`` (the largest estimate over the ranks decides for all)."""
    if budget is None:
        return False

    return max(all_gather_objects(estimate)) > budget


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")

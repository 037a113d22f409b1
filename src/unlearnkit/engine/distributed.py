"""Process-group helpers for the engine's data-parallel mode (no-ops in a single process).

The engine does not wrap models in ``DistributedDataParallel`` (methods call their model directly, so
DDP's gradient hooks would never fire); it averages gradients itself with :func:`average_gradients`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """The number of processes of this run (1 without torch.distributed)."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main_process() -> bool:
    """True on rank 0, and always in a single-process run."""
    dist = _dist()
    return dist is None or dist.get_rank() == 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Every rank gets rank ``src``'s ``obj`` (a no-op in a single process)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[nn.Parameter], world: int, device: torch.device) -> None:
    """Replace each gradient by its mean over the ranks (a parameter without a gradient on some rank
    counts as zero there; one without a gradient on every rank keeps none, as in a single process)."""
    import torch.distributed as dist

    has = torch.tensor([int(p.grad is not None) for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has)
    grads = []
    for p, n in zip(params, has.tolist(), strict=True):
        if n:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    limit = 1 << 24  # elements per all-reduce bucket
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    for g in grads:
        group = buckets.setdefault((g.dtype, g.device), [[]])
        if group[-1] and sum(t.numel() for t in group[-1]) + g.numel() > limit:
            group.append([])
        group[-1].append(g)
    for group in buckets.values():
        for bucket in group:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            i = 0
            for g in bucket:
                g.copy_(flat[i : i + g.numel()].view_as(g))
                i += g.numel()


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def norm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Buffers that training changes (BatchNorm-style running statistics)."""
    from torch.nn.modules.batchnorm import _NormBase

    return [b for m in model.modules() if isinstance(m, _NormBase) for b in m.buffers(recurse=False)]

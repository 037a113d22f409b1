"""Process-group helpers for the engine's data-parallel mode (no-ops in a single process).

The engine does not wrap models in ``DistributedDataParallel`` (methods call their model directly, so
DDP's gradient hooks would never fire); it averages gradients itself with :func:`average_gradients`.
Sharded models (FSDP version 2, DeepSpeed ZeRO-3) are read whole with :func:`full_state_dict`, the one
way every weight output (final model, ``hf_model/``, receipts' hashes, checkpoints) gets its tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unlearnkit.errors import ConfigError


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


# -- sharded models (FSDP version 2, DeepSpeed ZeRO-3) --------------------------------------------------
def _is_deepspeed_engine(model: Any) -> bool:
    return type(model).__name__ == "DeepSpeedEngine" and hasattr(model, "module")


def _zero3_params(model: nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 has partitioned ``model``'s parameters (they carry a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _torch_sharded(model: nn.Module) -> bool:
    """True for a model sharded by torch: FSDP version 2 (``fully_shard``: the modules become
    ``FSDPModule``), FSDP version 1's wrapper, or DTensor parameters (tensor parallel)."""
    if _dist() is None:  # sharding needs a process group (and this skips importing FSDP in plain runs)
        return False
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    if any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        return True
    return any(isinstance(p, DTensor) for p in model.parameters())


def is_sharded(model: nn.Module) -> bool:
    """True when ``model``'s weights are split across processes (FSDP, DeepSpeed ZeRO-3, DTensor), so that
    reading them whole is a collective that every rank must enter together (see :func:`full_state_dict`).

    The answer depends only on the model's structure, which is the same on every rank, so all ranks agree.
    """
    if _is_deepspeed_engine(model):
        return True
    return _torch_sharded(model) or _zero3_params(model)


def full_state_dict(model: nn.Module, *, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of ``model`` as contiguous CPU tensors, on the main process.

    - A plain module (single process, or the engine's data-parallel mode, where every rank holds the whole
      model): its state dict, on every rank; no communication.
    - FSDP version 2 (``fully_shard``; also version 1 and DTensor parameters): the shards are gathered with
      ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` (full, offloaded to the CPU as it
      goes). Rank 0 gets every tensor; the other ranks get ``{}``, or the whole dict too with ``all_ranks``.
    - DeepSpeed ZeRO-3 (a ``DeepSpeedEngine`` or the module it partitioned): each partitioned parameter is
      gathered in turn with ``deepspeed.zero.GatheredParameters`` and copied to the CPU on rank 0 (on
      every rank with ``all_ranks``), so no more than one whole parameter is held on the GPU at a time.
      **Not tested**: DeepSpeed is not installed where unlearnkit's tests run.

    For a sharded model this is a collective operation: **every rank must call it**, in the same order as
    its other collectives, even if only rank 0 uses the result; calling it on rank 0 alone hangs the run.
    Keys are the module's own parameter names (no ``_fsdp_wrapped_module.`` or ``module.`` prefixes).
    """
    if _is_deepspeed_engine(model):
        model = model.module
    if _zero3_params(model):
        return _zero3_state_dict(model, all_ranks)
    if _torch_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
        sd = get_model_state_dict(model, options=options)
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _zero3_state_dict(model: nn.Module, all_ranks: bool) -> dict[str, torch.Tensor]:
    """Gather a ZeRO-3 partitioned module parameter by parameter (untested: needs DeepSpeed and GPUs)."""
    import deepspeed

    keep = all_ranks or is_main_process()
    out: dict[str, torch.Tensor] = {}
    gathered: dict[int, torch.Tensor] = {}  # tied parameters appear under several names: gather once
    for name, value in model.state_dict(keep_vars=True).items():
        if hasattr(value, "ds_id"):
            if id(value) not in gathered:
                with deepspeed.zero.GatheredParameters([value], modifier_rank=None):
                    full = value.data.detach().cpu().clone() if keep else None
                gathered[id(value)] = full
            t = gathered[id(value)]
        else:  # buffers (and anything ZeRO-3 left whole) are complete on every rank
            t = value.detach().cpu().contiguous() if keep else None
        if keep and t is not None:
            out[name] = t
    return out


def fsdp_wrap_classes(model: nn.Module, wrap: bool | list[str]) -> list[str]:
    """The class names whose instances get their own FSDP unit: ``wrap`` itself when it is a list, else the
    model's ``_no_split_modules`` (Hugging Face models list their decoder blocks there; others: none,
    so the whole model is one unit)."""
    if isinstance(wrap, list):
        return list(wrap)
    return list(getattr(model, "_no_split_modules", None) or [])


def shard_fsdp2(model: nn.Module, wrap: bool | list[str], device: torch.device) -> list[str]:
    """Shard ``model`` in place over every process with torch's FSDP version 2 (``fully_shard``).

    Each module whose class name is in :func:`fsdp_wrap_classes` becomes one FSDP unit (gathered for its
    own forward and backward, then freed), and the model itself the outer unit. The parameters are
    broadcast from rank 0 first, so the shards come from one set of weights. The module keeps its class
    (FSDP swaps in a subclass) and is called as before; its parameters become new DTensor objects, so
    optimizers must be built afterwards. Returns the wrapped class names. A model that is already
    sharded stays as it is (resharded, in case an evaluation left its outer unit gathered).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if _torch_sharded(model):  # sharded by an earlier fit: make sure its parameters are the sharded ones
        from torch.distributed.fsdp import FSDPModule

        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()
        return []
    names = fsdp_wrap_classes(model, wrap)
    unknown = set(names) - {type(m).__name__ for m in model.modules()}
    if unknown and isinstance(wrap, list):
        raise ConfigError(
            f"engine.fsdp names {sorted(unknown)}, which the model does not contain; give class names of its "
            "blocks (e.g. [LlamaDecoderLayer]) or true to use the model's own list"
        )
    broadcast_tensors(list(model.parameters()) + list(model.buffers()))
    mesh = init_device_mesh(device.type, (world_size(),))
    for sub in list(model.modules()):
        if sub is not model and type(sub).__name__ in names:
            fully_shard(sub, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return names


def replicated_parameters(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters FSDP does not shard (plain tensors, e.g. a method's own trainable prompt): their
    gradients are not reduced by FSDP, so the engine averages them itself."""
    from torch.distributed.tensor import DTensor

    return [p for p in params if not isinstance(p, DTensor) and not hasattr(p, "ds_id")]


def load_full_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a whole (unsharded) state dict into ``model``; a model sharded by torch FSDP takes each rank's
    share (every rank must call it then, each with the whole ``sd``). DeepSpeed ZeRO-3 is not handled."""
    if _is_deepspeed_engine(model) or _zero3_params(model):
        raise NotImplementedError("loading whole weights into a DeepSpeed ZeRO-3 model is not supported")
    if _torch_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        model.load_state_dict(sd, strict=strict)

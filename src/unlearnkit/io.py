"""Atomic writes and safetensors weights: outputs are never half-written, inputs never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.distributed import (
    broadcast_object,
    full_state_dict,
    is_main_process,
    is_sharded,
    load_full_state_dict,
)
from unlearnkit.errors import UnlearnkitError


def file_mode() -> int:
    """The mode a new file gets under the process umask (0644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files (kept by some writers): the umask's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s whole state dict as contiguous CPU tensors. A sharded model is gathered: then every rank
    must call it, and ranks other than 0 get ``{}`` (see ``unlearnkit.distributed.full_state_dict``)."""
    return full_state_dict(model)


def check_protected(path: str | Path, protect: list[str | Path] | None) -> None:
    """Refuse (UnlearnkitError) when ``path`` is one of the ``protect``ed input files."""
    path = Path(path)
    for p in protect or []:
        if p and Path(p).exists() and path.resolve() == Path(p).resolve():
            raise UnlearnkitError(
                f"refusing to write the unlearned model over the input model {str(p)!r}: choose another --out"
            )


def save_state_dict(
    sd: dict[str, torch.Tensor], path: str | Path, protect: list[str | Path] | None = None
) -> None:
    """Write a state dict as safetensors, atomically; refuse to write over a protected file."""
    from safetensors.torch import save_file

    path = Path(path)
    check_protected(path, protect)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    # safetensors refuses tensors that share storage; clone the duplicates so any module saves.
    seen: dict[int, str] = {}
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            sd[k] = v.clone()
        seen.setdefault(ptr, k)
    _atomic(path, lambda tmp: save_file(sd, tmp))


def save_weights(model: nn.Module, path: str | Path, protect: list[str | Path] | None = None) -> None:
    """Save ``model``'s whole state dict as safetensors, atomically; refuse to write over a protected file.

    Under several processes only the main process writes. A sharded model (FSDP, DeepSpeed ZeRO-3) is
    gathered first, which is a collective: then every rank must call this function (a plain model may be
    saved from rank 0 alone).
    """
    path = Path(path)
    check_protected(path, protect)  # before gathering: every rank raises alike
    sd = state_dict_cpu(model)
    if is_main_process():
        save_state_dict(sd, path, protect)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load safetensors weights into ``model`` (no pickle); clear errors for missing or mismatched files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnlearnkitError(f"model weights {str(path)!r} not found: pass the path of a .safetensors file")
    refuse_pickle(path)
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        refuse_pickle(path, suffix_too=True)
        raise UnlearnkitError(
            f"{str(path)!r} is not a readable safetensors file ({exc}); unlearnkit loads weights only from "
            "safetensors (convert a trusted .pt with torch.load(weights_only=True) + safetensors.save_file)"
        ) from exc

    # every float tensor but the model's own buffers (some hold -inf masks): a parameter under another
    # name (torchvision's keys, renamed by a load pre-hook) is checked too
    buffers = {n for n, _ in model.named_buffers()}
    floats = {k: v for k, v in sd.items() if k not in buffers and v.is_floating_point()}
    broken = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    if broken:
        raise UnlearnkitError(
            f"the weights in {str(path)!r} hold NaN or infinite values in {len(broken)} tensor(s) "
            f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): the model file is broken (a "
            "model problem, not a learning rate); retrain or re-export it"
        )
    try:
        load_full_state_dict(model, sd, strict=strict)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UnlearnkitError(
            f"the weights in {str(path)!r} do not fit the configured model: {_mismatch(model, sd, exc)}. "
            "Check model.name and its options"
        ) from exc
    return model


# torch.save writes a zip archive, or (legacy format) a pickle opening with protocol 2 and a long; read as a
# safetensors header length either would be tens of megabytes, so no real safetensors file starts so
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


def refuse_pickle(path: Path, suffix_too: bool = False) -> None:
    """Refuse a pickled PyTorch checkpoint (``.pth``) in one line: unpickling runs code from the file, so it
    is never loaded here; the message says how to convert it once to safetensors. ``suffix_too``: a
    pickle's file suffix is enough (for a file safetensors could not read)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in _PICKLE_MAGIC or (suffix_too and path.suffix in PICKLE_SUFFIXES):
        target = f"{path.stem}{'.converted' if path.suffix == '.safetensors' else ''}.safetensors"
        raise UnlearnkitError(
            f"{str(path)!r} is not a readable safetensors file but a pickled PyTorch checkpoint, which "
            "unlearnkit never loads (unpickling runs code); convert it once where you trust it: python -c "
            '"import torch; from safetensors.torch import save_file; '
            f"save_file(torch.load('{path.name}', weights_only=True), '{target}')\" (a checkpoint dict: "
            "take its 'state_dict' entry)"
        )


def _mismatch(model: nn.Module, sd: dict[str, torch.Tensor], exc: Exception) -> str:
    """A one-line summary of why ``sd`` does not load into ``model`` (missing, unexpected, wrong shapes)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    parts = []
    for label, names in (
        ("missing", [k for k in want if k not in have]),
        ("unexpected", [k for k in have if k not in want]),
    ):
        if names:
            parts.append(
                f"{len(names)} {label} tensor(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            )
    shapes = [f"{k}: file {have[k]} vs model {want[k]}" for k in want if k in have and have[k] != want[k]]
    if shapes:
        parts.append(
            f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:2])}{'; ...' if len(shapes) > 2 else ''})"
        )
    return "; ".join(parts) or (str(exc).splitlines() or [repr(exc)])[0]


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict (names, dtypes, shapes and bytes, in sorted name order).

    A 0-dim tensor (BatchNorm's ``num_batches_tracked``) cannot be viewed as bytes directly; it is
    flattened first, which yields the same bytes, so hashes of models without 0-dim tensors are unchanged
    (the shape, ``()``, is still hashed)."""
    h = hashlib.sha256()
    for k, v in sorted(sd.items()):
        v = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 over ``model``'s whole state dict (see :func:`state_dict_sha256`), the same on every rank.

    A sharded model is gathered first and the hash sent from rank 0 to the others: every rank must call
    this function then (it is a collective)."""
    sharded = is_sharded(model)
    sd = state_dict_cpu(model)
    digest = state_dict_sha256(sd) if is_main_process() or not sharded else None
    return broadcast_object(digest) if sharded else digest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

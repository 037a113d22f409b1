"""The device a run asks for must be there: ``engine.device=cuda`` without a GPU is an error, not a CPU
run."""

from __future__ import annotations

import torch

from unlearnkit.errors import ConfigError


def require_device(device: str | None) -> str:
    """Return ``device`` (``auto`` when None) after checking that a requested accelerator is available."""
    device = device or "auto"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "engine.device=cuda but no CUDA GPU is available here; use engine.device=auto (the default: the "
            "GPU when there is one) or engine.device=cpu"
        )
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("engine.device=mps but no Apple GPU (MPS) is available here; use auto or cpu")
    return device

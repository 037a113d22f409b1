"""Mixed precision and gradient accumulation of the engine, both through ``accelerate``.

``engine.precision``: ``fp32``, ``bf16`` or ``fp16`` (unset: fp32, or the ``mixed_precision`` of the
``accelerate launch`` config that started the run). Under ``bf16``/``fp16`` the engine computes each
step's loss (every forward pass a method makes, reference and teacher passes included) inside
accelerate's autocast; the weights, their gradients and the optimizer state stay float32, and the
backward pass runs outside autocast. ``fp16`` adds the gradient scaler accelerate provides (gradients
are unscaled before clipping; a step whose gradients overflow is skipped and the scale lowered). CPUs
have no fp16 autocast: there ``fp16`` is refused and ``bf16`` is the mixed precision to use.

accelerate keeps the precision in a process-wide state that refuses a second value; an engine that
needs another precision than the state holds (a test or a suite that runs fp32 and bf16 engines one
after another in one process) resets that state first. The process group itself is kept.
"""

from __future__ import annotations

import os

import torch

from unlearnkit.errors import ConfigError

# engine.precision -> accelerate's mixed_precision
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def on_cpu(device: str) -> bool:
    """Whether ``engine.device`` resolves to the CPU on this machine."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def check_precision(precision: str | None, device: str) -> None:
    """Refuse an unknown precision, and fp16 where it would run on the CPU (one line each)."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise ConfigError(f"engine.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and on_cpu(device):
        raise ConfigError(
            "engine.precision=fp16 needs a GPU (its autocast and gradient scaler do not run on the CPU); "
            "use engine.precision=bf16 for mixed precision on a CPU, or fp32"
        )


def _state_precision() -> str | None:
    """The mixed precision accelerate's process-wide state holds (None before any Accelerator exists)."""
    from accelerate.state import AcceleratorState

    return AcceleratorState._shared_state.get("_mixed_precision")


def wanted(precision: str | None) -> str:
    """accelerate's ``mixed_precision`` for ``engine.precision`` (unset: the launcher's, else ``no``)."""
    if precision is None:
        return os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return PRECISIONS[precision]


def current(precision: str | None) -> bool:
    """Whether accelerate's state still holds ``precision`` (another engine may have reset it since)."""
    return _state_precision() in (None, wanted(precision))


def make_accelerator(cpu: bool, precision: str | None, grad_accum: int, **options):
    """An ``Accelerator`` at ``precision`` that accumulates ``grad_accum`` micro-batches per optimizer step.

    The engine decides where a group of micro-batches ends (a phase's last group may be shorter), so
    accelerate does not end groups at the end of a data loader (``sync_with_dataloader=False``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import GradientAccumulationPlugin

    want = wanted(precision)
    held = _state_precision()
    if held is not None and held != want:
        AcceleratorState._reset_state(reset_partial_state=False)
    plugin = GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False)
    return Accelerator(cpu=cpu, mixed_precision=want, gradient_accumulation_plugin=plugin, **options)

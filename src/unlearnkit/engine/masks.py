"""Weight-saliency masks that freeze the masked-out weights *exactly*.

SalUn (Fan et al., ICLR 2024) restricts unlearning to salient weights:
    saliency map  m_S = 1(|∇_θ ℓ_f(θ; D_f)|_{θ=θ_o}| ≥ γ)          (§4, "weight saliency map")
    update        θ_u = m_S ⊙ (Δθ + θ_o) + (1 − m_S) ⊙ θ_o           (§4, the masked update)
with γ chosen so that a fixed share of all weights is kept (global top-k; γ = median gives 50%).

Masking only the gradient does not satisfy the masked update: weight decay and momentum still move masked-out
weights (Unlearn-Saliency issue #32). :class:`WeightMask` therefore (1) zeroes their gradients before
the optimizer step and (2) restores their values bit-for-bit and zeroes their optimizer state after it.
The mask works on any ``nn.Module`` and so on every family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.io import _atomic


class WeightMask:
    """``{parameter name: bool tensor}``; True marks a weight that may move."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = {k: v.bool() for k, v in masks.items()}
        self._frozen: dict[str, torch.Tensor] = {}
        self._params: dict[str, nn.Parameter] = {}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, scores: dict[str, torch.Tensor], ratio: float) -> WeightMask:
        """Keep the top ``ratio`` share of all entries by score, ranked globally across tensors."""
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"mask_ratio must lie in (0, 1], got {ratio}")
        flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
        k = int(round(ratio * flat.numel(), 6))  # floor, robust to 0.29*100 = 28.999...
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, sorted=False).indices] = True
        out, i = {}, 0
        for name, s in scores.items():
            out[name] = keep[i : i + s.numel()].view(s.shape)
            i += s.numel()
        return cls(out)

    @classmethod
    def from_gradients(
        cls,
        model: nn.Module,
        loss_batches: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
        ratio: float,
    ) -> WeightMask:
        """The saliency map |Σ_batches ∇_θ loss_b| at the current weights, global top-``ratio``.

        ``loss_batches`` yields one scalar loss per batch (e.g. the GA loss −ℓ_CE on forget batches);
        their gradients are summed, as in the reference ``generate_mask.py``.
        """
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        batches = loss_batches() if callable(loss_batches) else loss_batches
        for loss in batches:
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    acc[n] += g
        return cls.from_scores({n: g.abs() for n, g in acc.items()}, ratio)

    @classmethod
    def load(cls, path: str | Path) -> WeightMask:
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise UnlearnkitError(f"mask file {str(path)!r} not found: pass a .safetensors mask")
        return cls(load_file(str(path)))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.to(torch.uint8).contiguous() for k, v in self.masks.items()}
        _atomic(Path(path), lambda tmp: save_file(tensors, tmp))

    # -- use during training --------------------------------------------------------------------
    @property
    def density(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)

    def attach(self, model: nn.Module) -> None:
        """Snapshot the frozen entries of ``model`` (call once, before the first step)."""
        params = dict(model.named_parameters())
        unknown = [n for n in self.masks if n not in params]
        if unknown:
            raise UnlearnkitError(
                f"mask names {unknown[:3]} are not parameters of this model: the mask was made for another "
                "architecture"
            )
        self._params, self._frozen = {}, {}
        for n, m in self.masks.items():
            p = params[n]
            if m.shape != p.shape:
                raise UnlearnkitError(
                    f"mask for {n!r} has shape {tuple(m.shape)}, parameter {tuple(p.shape)}"
                )
            m = m.to(p.device)
            self.masks[n] = m
            self._params[n] = p
            self._frozen[n] = p.detach()[~m].clone()

    def mask_gradients(self) -> None:
        for n, p in self._params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Put frozen weights back bit-for-bit and clear their optimizer state (momentum, Adam moments)."""
        for n, p in self._params.items():
            frozen = ~self.masks[n]
            p.data.masked_scatter_(frozen, self._frozen[n])
            if optimizer is not None:
                for v in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.masked_fill_(frozen, 0)

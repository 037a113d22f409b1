"""Prompt-wise worst-case selection for the text-to-image family: which prompts are hardest to erase.

The Unlearn-WorstCase bi-level problem (Fan et al., ECCV 2024, arXiv 2403.07362, Eq. 3) with the units being
prompts, as in the reference's ``prompt-wise/`` code (``classification.md`` §4.3; UnlearnCanvas there, the
shapes world's captions here):

    min_{w ∈ S}  Σ_p w_p [ℓ_p(θ*(w)) − b_p],        S = {0 ≤ w ≤ 1, 1ᵀw = m}
    θ*(w) = a few ESD steps from θ_o on  Σ_i w_{p(i)} ‖ε_θ(x_t, c_i, t) − ε*(x_t, c_i, t)‖²,
    ε*(x_t, c, t) = ε_θo(x_t, ∅, t) − η (ε_θo(x_t, c, t) − ε_θo(x_t, ∅, t))     (ESD Eq. 3–4)

* a prompt p is a distinct caption (a distinct ``input_ids`` row) of the pool; its examples are the images
  drawn with that caption (the reference: each UnlearnCanvas prompt's images);
* ℓ_p(θ) = the mean over p's images of the denoising error (DDPM, Ho et al. 2020, Eq. 14) under the prompt,
  at ``timesteps`` fixed, evenly spread t_k = ⌊(k + ½)T/K⌋ with fixed noise per (image, k) (the reference
  sweeps 10 timesteps, ``esd.Eval.eval``): deterministic, so the upper step sees the change of θ and not a
  new noise draw;
* the upper objective: a prompt whose concept images stay *easy to denoise* after ESD was told to erase it
  is a prompt the erased model can still draw: hardest to erase. The first-order step (sign-SGD lower level,
  the Jacobian term dropped; ``worstcase`` module docstring) moves w towards the prompts with the lowest
  ℓ_p(θ*(w)) − b_p;
* b_p: by default here ``baseline="original"``, b_p = ℓ_p(θ_o). The denoising error of a caption's images
  depends on the images themselves (a big flat square is easier to denoise than a thin triangle at every
  t), so the raw loss would mostly rank image difficulty; the gap ranks how much erasure moved each prompt.
  ``select.baseline=none`` gives the reference's raw loss.

Defaults (:data:`PROMPT_DEFAULTS`, under any ``select.*`` the user sets): ``lower=esd`` (forget-weighted,
:mod:`unlearnkit.selection.lower`; from θ_o each time, as the reference), ``per_unit=32`` images per prompt,
``lower_epochs=2`` passes over that pool at sign-SGD ``lower_lr=1e-3`` (5e-4 moved the losses by only
~1e-3, close to their noise), ``timesteps=5``, ``baseline=original``, ``step=0.1`` and
``binarize_every=0``. Why no intermediate binarisation: with a forget-weighted lower level a prompt with
w_p = 0 is not erased at all, so after a binarisation its low loss says nothing about its erasability and
the next step chases the unerased prompts. Without it, to first order ℓ_p(θ*(w)) − b_p ≈ s_p·w_p (s_p: how
fast ESD raises p's loss), F ≈ Σ s_p w_p², and the projected steps settle at w_p ∝ 1/s_p, whose top m are
the m least erasable prompts; ``step=0.1`` keeps η·s_p < 1 there (the default 0.5 oscillated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family
from unlearnkit.selection.worstcase import (
    SelectionResult,
    SelectionTask,
    WorstCaseConfig,
    select_worst_groups,
)

PROMPT_DEFAULTS: dict[str, Any] = {
    "lower": "esd",
    "per_unit": 32,
    "lower_epochs": 2,
    "lower_lr": 1e-3,
    "timesteps": 5,
    "baseline": "original",
    "step": 0.1,
    "binarize_every": 0,
}
_MIX = 1_000_003


def fixed_denoising_loss(
    family: Family, timesteps: int = 10, seed: int = 0
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """ℓ_i(θ) = (1/K) Σ_k ‖ε_ik − ε_θ(√ᾱ_{t_k} x_i + √(1−ᾱ_{t_k}) ε_ik, c_i, t_k)‖² (mean over pixels),
    t_k = ⌊(k + ½)T/K⌋ and ε_ik drawn from a generator seeded by (seed, id_i): the same for every call.

    The batch is expanded K times with explicit ``t`` and ``noise`` columns, which the family's
    ``per_example_loss`` honours, so the denoising error is the family's own."""
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        x = batch["x"]
        n_t = int(model.num_train_timesteps)
        eps = []
        for i in batch["id"].tolist():
            g = torch.Generator().manual_seed((seed * _MIX + int(i)) % (2**63 - 1))
            eps.append(torch.randn(timesteps, *x.shape[1:], generator=g))
        noise = torch.stack(eps, 1).to(x.device, x.dtype)  # [K, B, C, H, W]
        total = torch.zeros(len(x), device=x.device)
        for k in range(timesteps):  # one pass per timestep keeps the batch at the caller's size
            t = torch.full((len(x),), int((k + 0.5) * n_t / timesteps), device=x.device, dtype=torch.long)
            total = total + family.per_example_loss(model, batch | {"t": t, "noise": noise[k]}).float()
        return total / timesteps

    return loss


def prompt_groups(pool: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(group index of each pool example, the distinct ``input_ids`` rows): one group per prompt."""
    if "input_ids" not in pool.columns:
        raise ConfigError("prompt-wise selection needs a pool with an 'input_ids' column (the captions)")
    rows, inverse = torch.unique(pool.columns["input_ids"], dim=0, return_inverse=True)
    return inverse, rows


def prompt_texts(rows: torch.Tensor, tokenizer: Any = None) -> list[str]:
    """The prompts as text (the tokenizer's decoding without special tokens), or token ids as a string."""
    if tokenizer is None:
        return [" ".join(str(t) for t in r.tolist()) for r in rows]
    return [tokenizer.decode(r.tolist(), skip_special_tokens=True) for r in rows]


def select_worst_prompts(
    task: SelectionTask, size: int | float | str, cfg: WorstCaseConfig | None = None, tokenizer: Any = None
) -> SelectionResult:
    """Worst-case prompts of ``task.pool`` (groups = distinct captions; m counts prompts). Without a
    ``task.loss_fn``, the upper level uses :func:`fixed_denoising_loss` with ``cfg.timesteps``.
    ``result.units`` index the distinct prompts; ``result.unit_names`` are the chosen prompts' text."""
    cfg = cfg or WorstCaseConfig(**PROMPT_DEFAULTS)
    if task.loss_fn is None:
        seed = task.seed if cfg.seed is None else cfg.seed
        task = replace(task, loss_fn=fixed_denoising_loss(task.family, cfg.timesteps, seed))
    groups, rows = prompt_groups(task.pool)
    tok = tokenizer if tokenizer is not None else getattr(task.family, "tokenizer", None)
    names = prompt_texts(rows, tok)
    res = select_worst_groups(task, size, groups, cfg)
    res.unit_names = [names[u] for u in res.units]
    res.pool_names = names
    return res

"""Per-unit logits and log-probabilities shared by the token-level methods (WGA, SatImp, CE-U, UNDIAL, PDU).

A *unit* is one prediction the loss is taken over: a next-token position of a causal LM, or one example
of a classifier (a family with ``logits``). :func:`unit_logits` returns, for a batch,

- ``logits`` ``[B, U, V]``: the model's output logits (float32) at each unit,
- ``targets`` ``[B, U]``: the label each unit predicts (−100 where there is none),
- ``mask`` ``[B, U]``: the units the loss counts.

For an LM, unit t is the prediction of token t+1 from logits at position t (Hugging Face's shift):
``positions="answer"`` counts the answer tokens (labels ≠ −100), ``"all"`` every real token after the first
(attention mask; targets are then the input ids). A classifier has one unit per example (U = 1).
Losses averaged with :func:`flat_mean` are a flat mean over the batch's N counted units, not a mean of
per-sequence means (open-unlearning's convention, llm.md "Notation").

With ``positions="answer"`` the units start at :func:`first_unit`, the first position any row of the batch
has an answer token at (the prompt positions before it count for nothing): a Hugging Face model then
computes only those positions' logits (``logits_to_keep``), as the text family's NLL does. ``trim=False``
keeps every position from 0, the layout a per-position cache is stored in (slice it from ``first_unit``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family
from unlearnkit.families.text import lm_logits, positions_to_keep

POSITIONS = ("answer", "all")


def first_unit(batch: Batch, positions: str = "answer", trim: bool = True) -> int:
    """Index (in the full ``[B, T − 1]`` unit layout) of the first unit :func:`unit_logits` returns."""
    if not trim or positions != "answer" or "labels" not in batch:
        return 0
    labels = batch["labels"]
    return labels.shape[1] - positions_to_keep(labels)


def unit_logits(
    family: Family, model: nn.Module, batch: Batch, positions: str = "answer", trim: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits ``[B, U, V]``, targets ``[B, U]``, mask ``[B, U]``) of ``batch`` (see the module docstring)."""
    if "input_ids" in batch:
        if positions not in POSITIONS:
            raise ConfigError(f"method.positions must be one of {POSITIONS}, got {positions!r}")
        start = first_unit(batch, positions, trim)
        width = batch["input_ids"].shape[1]
        logits = lm_logits(model, batch, width - start if start else 0)
        logits = logits[:, logits.shape[1] - (width - start) : -1].float()
        if positions == "answer":
            targets = batch["labels"][:, start + 1 :]
            mask = targets != -100
        else:
            mask = batch["attention_mask"][:, 1:].bool()
            targets = batch["input_ids"][:, 1:].masked_fill(~mask, -100)
        return logits, targets, mask
    logits_fn = getattr(family, "logits", None)
    if logits_fn is None or "y" not in batch:
        raise ConfigError(
            f"this method needs per-class logits and labels; the {family.name!r} family has none "
            "(use it on a classifier or a causal LM)"
        )
    logits = logits_fn(model, batch).float()
    y = batch["y"]
    return logits[:, None], y[:, None], torch.ones_like(y, dtype=torch.bool)[:, None]


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p_t(y_t) ``[B, U]`` (0 where the target is −100)."""
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(targets < 0, 0.0)


def flat_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ over the counted units, N = the number of counted units in the batch."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1)


def drop_first_units(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` without the first ``n`` counted units of each row (e.g. the first answer token)."""
    if n <= 0:
        return mask
    return mask & (mask.long().cumsum(-1) > n)

"""Next-token NLL of causal-LM logits on a contiguous ``[N, V]`` view, chunked over rows.

``F.cross_entropy`` over dim 1 of a transposed ``[B, V, T]`` view (the textbook form) walks the vocabulary
with a stride of T and is several times slower than the same cross-entropy on contiguous rows ``[N, V]``
(issue #19). :func:`token_nll` therefore gathers the positions that carry a target (``labels != -100``:
answer tokens of a QA pair, every real token of a raw text) into contiguous rows, and computes the
cross-entropy ``−log softmax(z)[y] = logsumexp(z) − z_y`` in float32 on chunks of at most ``CHUNK_BYTES``,
so no float32 copy of the ``[B, T, V]`` logits is made (128k-vocabulary models). Under autograd, when the
float32 log-probabilities of all rows would exceed ``CHECKPOINT_BYTES``, each chunk is recomputed in the
backward pass instead of being held (``torch.utils.checkpoint``).

The same function serves training (``TextFamily.per_example_loss``), answer scoring (TOFU probability and
truth ratio, :mod:`unlearnkit.metrics.scoring`) and the LM membership-inference scores
(:mod:`unlearnkit.metrics.lm_mia`); :func:`vocab_moments` gives Min-K%++'s per-position mean and variance of
log p over the vocabulary, chunked the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_BYTES = 64 * 2**20
CHECKPOINT_BYTES = 256 * 2**20


def _ce(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(rows.float(), target, reduction="none")


def chunk_rows_for(vocab: int) -> int:
    """Rows per chunk so that one chunk's float32 copy stays under ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (4 * max(vocab, 1)))


def rows_nll(rows: torch.Tensor, target: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """float32 NLL ``[N]`` of contiguous logit rows ``[N, V]`` (any dtype) at ``target`` ``[N]`` (0 where
    the target is -100).

    Under autograd, when all rows' float32 log-probabilities (what cross-entropy keeps for its backward)
    would exceed ``CHECKPOINT_BYTES``, every chunk is recomputed in the backward pass instead.
    """
    chunk = chunk_rows or chunk_rows_for(rows.shape[-1])
    recompute = rows.requires_grad and torch.is_grad_enabled() and rows.numel() * 4 > CHECKPOINT_BYTES
    if len(rows) <= chunk and not recompute:
        return _ce(rows, target)
    parts = []
    for i in range(0, len(rows), chunk):
        r, t = rows[i : i + chunk], target[i : i + chunk]
        parts.append(checkpoint(_ce, r, t, use_reentrant=False) if recompute else _ce(r, t))
    return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)


def token_nll(logits: torch.Tensor, target: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """−log p(target) at every position, float32 ``[B, T]``, 0 where ``target == -100``.

    ``logits`` ``[B, T, V]`` are already aligned with ``target`` ``[B, T]`` (position t predicts target t).
    Equals ``F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100,
    reduction="none")`` to float rounding.
    """
    mask = target != -100
    out = torch.zeros(target.shape, dtype=torch.float32, device=logits.device)
    if bool(mask.any()):
        out = out.masked_scatter(mask, rows_nll(logits[mask], target[mask], chunk_rows))
    return out


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Summed next-token NLL ``[B]`` of a causal LM: position t's logits against ``labels[:, t + 1]``.

    ``logits`` may cover only the last positions of the sequence (a model asked for ``logits_to_keep``):
    they are aligned to the right end. The ``[B·L, V]`` logits are used as one contiguous view (no gather,
    no copy); the last position predicts nothing and gets target -100, like every masked label.
    """
    width = logits.shape[1]
    target = labels[:, labels.shape[1] - width + 1 :]
    target = torch.cat([target, target.new_full((len(target), 1), -100)], 1)
    nll = rows_nll(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), chunk_rows)
    return nll.view(target.shape).sum(-1)


def vocab_moments(
    logits: torch.Tensor, mask: torch.Tensor, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ and variance σ² of log p(z) under z ∼ p at each masked position (``[B, T]`` float32, 0
    elsewhere): μ = Σ_z p(z) log p(z), σ² = Σ_z p(z)(log p(z) − μ)² (Min-K%++)."""
    mu = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    var = torch.zeros_like(mu)
    rows = logits[mask]
    chunk = chunk_rows or chunk_rows_for(rows.shape[-1])
    mus, vars_ = [], []
    for i in range(0, len(rows), chunk):
        logp = torch.log_softmax(rows[i : i + chunk].float(), dim=-1)
        p = logp.exp()
        m = (p * logp).sum(-1)
        mus.append(m)
        vars_.append((p * (logp - m.unsqueeze(-1)) ** 2).sum(-1))
    if mus:
        mu = mu.masked_scatter(mask, torch.cat(mus))
        var = var.masked_scatter(mask, torch.cat(vars_))
    return mu, var

"""Batched greedy generation and batched answer scoring for causal-LM metrics.

Both TOFU and MUSE score greedy continuations: ``model.generate(do_sample=False)`` on left-padded
prompts, keeping only the new tokens, decoded with ``skip_special_tokens=True`` (open-unlearning
``eval_text_similarity``; muse_bench ``metrics/verbmem.py`` and ``knowmem.py``). Here the continuation
also stops at the first EOS, and may be cut at stop strings afterwards (MUSE KnowMem cuts at
``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"``).

Left padding is exact: attention masks hide the pads and ``generate`` derives position ids from the
mask, so a prompt's continuation does not depend on what else is in its batch (tested). Prompts are
batched in order of length (less padding) and results come back in input order. When a model has a
position limit (``max_position_embeddings`` / ``n_positions``), a prompt whose length plus
``max_new_tokens`` exceeds it gets only the tokens that fit, computed in its own group so the result
is still batch-independent.

:func:`score_answers` gives the summed answer NLL −log π(a|q) and the answer length |a| of
(question, answer) pairs, tokenised by :func:`unlearnkit.data.text.encode_pairs` (the same tokenisation
the text family trains on) and scored by :class:`~unlearnkit.families.text.TextFamily`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.data.text import encode_pairs
from unlearnkit.errors import DataError
from unlearnkit.families.text import TextFamily


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and ``torch.no_grad()`` for the block; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def position_limit(model: nn.Module) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings`` / ``n_positions``), if known."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (what the MUSE code falls back to); an error if neither."""
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        pid = getattr(tokenizer, "eos_token_id", None)
    if pid is None:
        raise DataError(
            "the tokenizer has neither a pad token nor an EOS token, so batches cannot be padded: set "
            "tokenizer.pad_token (e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}))"
        )
    return int(pid)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a raw text: BOS (when the tokenizer has one) + the text's tokens.

    Matches :func:`unlearnkit.data.text.prompt_ids` and what a Llama tokenizer's
    ``add_special_tokens=True`` gives (the MUSE code's tokenisation of prompts and MIA texts).
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([int(bos)] if bos is not None else []) + ids


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, shape ``[B, max_len]``."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The prefix of ``text`` before the earliest occurrence of any stop string (MUSE
    ``get_prefix_before_words_occur``: splitting on each word in turn gives the same prefix)."""
    for word in stop_strings:
        if word:
            text = text.split(word)[0]
    return text


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return ids


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    """Token ids before the first EOS."""
    out = []
    for t in ids:
        if int(t) in eos_ids:
            break
        out.append(int(t))
    return out


def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 200,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations of tokenised prompts, decoded, in input order.

    Each continuation is the new tokens up to (not including) the first EOS, decoded with
    ``skip_special_tokens=True``, then cut before the earliest stop string.
    """
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    limit = position_limit(model)
    # Tokens each prompt may get; prompts are grouped by that budget so every batch shares one budget.
    budgets = [
        max_new_tokens if limit is None else max(0, min(max_new_tokens, limit - len(p))) for p in prompts
    ]
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise DataError(f"prompt {i} is empty: a prompt needs at least one token (e.g. BOS)")
    out = [""] * len(prompts)
    device = model_device(model)
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i])):
        groups.setdefault(budgets[i], []).append(i)
    with eval_mode(model):
        for budget, order in groups.items():
            if budget == 0:
                continue
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = left_pad([prompts[i] for i in idx], pad)
                gen = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=budget,
                    pad_token_id=pad,
                    eos_token_id=sorted(eos) if eos else None,
                )
                new = gen[:, ids.shape[1] :].tolist()
                for i, row in zip(idx, new, strict=True):
                    text = tokenizer.decode(cut_at_eos(row, eos), skip_special_tokens=True)
                    out[i] = cut_at_stop(text, stop_strings)
    return out


def score_answers(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    template: str | None = None,
    max_length: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed answer NLL −log π(a|q) and answer length |a| (tokens, EOS included) of each pair.

    Tokenisation is :func:`~unlearnkit.data.text.encode_pairs` (prompt template or chat template, loss
    on answer tokens only); the loss is ``TextFamily.per_example_loss`` / ``num_units``. Returns float64
    and int64 arrays of length ``len(questions)``.
    """
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers")
    n = len(questions)
    nll = np.zeros(n, dtype=np.float64)
    units = np.zeros(n, dtype=np.int64)
    family = TextFamily(tokenizer)
    device = model_device(model)
    # Similar lengths share a batch (less padding); results are written back by position.
    order = sorted(range(n), key=lambda i: len(questions[i]) + len(answers[i]))
    with eval_mode(model):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            cols = encode_pairs(
                tokenizer, [questions[i] for i in idx], [answers[i] for i in idx], max_length, template
            )
            batch = {k: v.to(device) for k, v in cols.items()}
            nll[idx] = family.per_example_loss(model, batch).double().cpu().numpy()
            units[idx] = family.num_units(batch).cpu().numpy()
    return nll, units

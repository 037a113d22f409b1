"""Teacher-forced memorization of answers: Exact Memorization (EM) and Extraction Strength (ES).

Both look at the greedy (argmax) prediction of every answer token given the true prefix (the question and
the answer tokens before it), m_t = 1[argmax_v p_θ(v | x, y_<t) = y_t] for t = 1..L (L answer tokens,
EOS included, tokenised as :func:`~unlearnkit.data.text.encode_pairs` does for every TOFU metric):

- **EM** (Tirumala et al., NeurIPS 2022, "Memorization without overfitting"; open-unlearning's
  ``exact_memorization``): EM = (1/L)·Σ_t m_t, the share of answer tokens predicted exactly.
- **ES** (Carlini et al., 2021, as open-unlearning's ``docs/links.md`` cites it):
  ES = 1 − k*/L with k* = min{k ∈ 0..L : m_t = 1 for every t > k}, the shortest answer prefix that, given
  to the model, makes it reproduce the rest. ES = 1 when every token is predicted, 0 when even the last
  one is not (k* = L: the empty suffix).

The open-unlearning code searches k only up to L − 1, so an answer whose last token is mispredicted scores
1/L instead of 0; ``es_form="reference"`` reproduces that floor, ``"paper"`` (default) is the definition.
Per-item values are returned; a suite reports their mean.

On raw text (MUSE's VerbMem passages, :func:`continuation_memorization`) the "answer" is a passage's
ground-truth continuation given its prompt, both as the MUSE code tokenises them (BOS + the prompt's tokens,
then the continuation's tokens without special tokens), cut at ``max_length`` tokens in all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.data.text import encode_pairs
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.metrics.generation import eval_mode, model_device, pad_token_id, position_limit, text_ids

ES_FORMS = ("paper", "reference")


def token_matches(logits: torch.Tensor, labels: torch.Tensor) -> list[np.ndarray]:
    """Per example, m_t over its answer tokens: argmax of the logits at t − 1 equals the label at t.

    ``logits`` ``[B, T, V]``, ``labels`` ``[B, T]`` with −100 off the answer (Hugging Face's shift)."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    hit = (pred == target) & keep
    return [hit[i][keep[i]].cpu().numpy() for i in range(len(labels))]


def exact_memorization(matches: Sequence[np.ndarray]) -> np.ndarray:
    """EM per item: the fraction of answer tokens whose greedy prediction is the true token."""
    if any(len(m) == 0 for m in matches):
        raise DataError("exact memorization needs at least one answer token per item")
    return np.array([float(np.mean(m)) for m in matches], dtype=np.float64)


def extraction_strength(matches: Sequence[np.ndarray], form: str = "paper") -> np.ndarray:
    """ES per item: 1 − k*/L, k* the shortest prefix after which every token is predicted (see module)."""
    if form not in ES_FORMS:
        raise ConfigError(f"es_form must be one of {ES_FORMS}, got {form!r}")
    out = []
    for m in matches:
        m = np.asarray(m, dtype=bool)
        n = len(m)
        if n == 0:
            raise DataError("extraction strength needs at least one answer token per item")
        misses = np.flatnonzero(~m)
        k = int(misses[-1]) + 1 if len(misses) else 0  # tokens up to the last miss must be given
        if form == "reference":
            k = min(k, n - 1)
        out.append(1.0 - k / n)
    return np.array(out, dtype=np.float64)


def memorization_scores(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    template: str | None = None,
    max_length: int = 512,
    es_form: str = "paper",
) -> dict[str, np.ndarray]:
    """Per-item ``exact_memorization`` and ``extraction_strength`` of the (question, answer) pairs."""
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers")
    matches: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(questions)
    device = model_device(model)
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]) + len(answers[i]))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            cols = encode_pairs(
                tokenizer, [questions[i] for i in idx], [answers[i] for i in idx], max_length, template
            )
            out = model(
                input_ids=cols["input_ids"].to(device), attention_mask=cols["attention_mask"].to(device)
            )
            logits = out.logits if hasattr(out, "logits") else out
            for i, m in zip(idx, token_matches(logits, cols["labels"].to(device)), strict=True):
                matches[i] = m
    return {
        "exact_memorization": exact_memorization(matches),
        "extraction_strength": extraction_strength(matches, es_form),
    }


def continuation_memorization(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    es_form: str = "paper",
) -> dict[str, np.ndarray]:
    """Per-item ``exact_memorization`` and ``extraction_strength`` of each continuation given its prompt
    (``max_length``: tokens in all, default the model's position limit)."""
    if len(prompts) != len(continuations):
        raise DataError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    max_length = max_length or position_limit(model) or 2048
    rows = []
    for p, c in zip(prompts, continuations, strict=True):
        prompt = text_ids(tokenizer, p)
        ids = (prompt + list(tokenizer(c, add_special_tokens=False)["input_ids"]))[:max_length]
        if len(ids) <= len(prompt):
            raise DataError(f"the continuation of {p[:40]!r}... has no tokens within max_length={max_length}")
        rows.append((ids, len(prompt)))
    pad, device = pad_token_id(tokenizer), model_device(model)
    matches: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq, n_prompt = rows[i]
                ids[r, : len(seq)] = torch.as_tensor(seq)
                labels[r, n_prompt : len(seq)] = torch.as_tensor(seq[n_prompt:])
                mask[r, : len(seq)] = 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            logits = out.logits if hasattr(out, "logits") else out
            for i, m in zip(idx, token_matches(logits, labels.to(device)), strict=True):
                matches[i] = m
    return {
        "exact_memorization": exact_memorization(matches),
        "extraction_strength": extraction_strength(matches, es_form),
    }

"""Tokenising question/answer pairs for causal LMs, with loss on answer tokens only.

``encode_qa`` builds the columns the text family trains on. The prompt and the answer are tokenised
separately and concatenated, so the answer boundary is exact whatever the tokenizer merges. The prompt
format (plain template or the tokenizer's chat template) is :mod:`unlearnkit.data.prompt_format`, the
one formatter that evaluation and generation use too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.prompt_format import PLAIN_PROMPT, answer_ids, check_prompt_format, prompt_ids, qa_ids
from unlearnkit.errors import DataError

__all__ = ["PLAIN_PROMPT", "answer_ids", "encode_pairs", "encode_qa", "prompt_ids"]


def _pad_id(tokenizer: Any) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        pid = getattr(tokenizer, "eos_token_id", None)
    return int(pid) if pid is not None else 0


def encode_pairs(
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    max_length: int = 64,
    template: str | None = None,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Right-padded ``{prefix}input_ids / attention_mask / labels`` for (question, answer) pairs."""
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers")
    pad = _pad_id(tokenizer)
    rows_ids, rows_lab = [], []
    for q, a in zip(questions, answers, strict=True):
        p, y = qa_ids(tokenizer, q, a, template)
        ids = (p + y)[:max_length]
        lab = ([-100] * len(p) + y)[:max_length]
        if all(t == -100 for t in lab):
            raise DataError(
                f"the prompt of {q[:40]!r}... fills max_length={max_length}: raise data.max_length"
            )
        rows_ids.append(ids)
        rows_lab.append(lab)
    width = max(len(r) for r in rows_ids) if rows_ids else 1
    n = len(rows_ids)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows_ids, rows_lab, strict=True)):
        input_ids[i, : len(r)] = torch.as_tensor(r)
        labels[i, : len(lab)] = torch.as_tensor(lab)
        mask[i, : len(r)] = 1
    return {f"{prefix}input_ids": input_ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}


def _pad_to(cols: dict[str, torch.Tensor], width: int, pad: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in cols.items():
        fill = -100 if k.endswith("labels") else (0 if k.endswith("attention_mask") else pad)
        if v.shape[1] < width:
            v = torch.cat([v, torch.full((v.shape[0], width - v.shape[1]), fill, dtype=v.dtype)], 1)
        out[k] = v
    return out


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch transform: cut the right padding shared by every row, so a batch is as wide as its own longest
    row (over all ``*attention_mask`` column groups, so ``alt_*`` columns keep the main columns' width)
    instead of the dataset's widest row. Right padding (every text set here is right-padded) is invisible
    to a causal LM's real positions, so losses are unchanged; only the wasted positions go."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and v.ndim == 2]
    if not masks or masks[0].shape[1] == 0:
        return batch
    width = masks[0].shape[1]
    used = torch.stack([m.ne(0).any(0) for m in masks if m.shape[1] == width]).any(0)
    keep = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if keep == width:
        return batch
    token_cols = ("input_ids", "attention_mask", "labels")
    return {
        k: v[:, :keep] if k.endswith(token_cols) and v.ndim == 2 and v.shape[1] == width else v
        for k, v in batch.items()
    }


def encode_qa(
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    ids: Sequence[int] | None = None,
    max_length: int = 64,
    template: str | None = None,
    alt_answers: Sequence[str] | None = None,
    width: int | None = None,
) -> ExampleSet:
    """An ExampleSet of tokenised QA pairs (and optional ``alt_*`` columns with alternative answers).

    ``width`` pads every column to a fixed length so that sets built separately (forget, retain, test)
    can be concatenated.
    """
    if not questions:
        raise DataError("no question/answer pairs to encode")
    check_prompt_format(tokenizer, template)
    cols = encode_pairs(tokenizer, questions, answers, max_length, template)
    if alt_answers is not None:
        cols |= encode_pairs(tokenizer, questions, alt_answers, max_length, template, prefix="alt_")
    w = max(v.shape[1] for v in cols.values())
    w = max(w, width or 0)
    cols = _pad_to(cols, w, _pad_id(tokenizer))
    return ExampleSet(cols, ids, transform=trim_padding)

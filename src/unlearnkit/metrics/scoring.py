"""Answer scoring that encodes each question once for all its answers (TOFU probability and truth ratio).

A truth-ratio item scores up to seven answers of one question (answer, paraphrase, perturbed answers);
scoring each (question, answer) pair separately encodes the question seven times. :func:`score_answer_sets`
runs the prompt once and reuses its key/value cache for every answer (issue #19):

1. prompt pass: the prompts of a group of questions, *without their last token*, right-padded, ``use_cache``;
   only the cache is kept (``logits_to_keep=1``); it holds no logits, so a group spans several answer
   batches (:func:`prompt_tokens`) and the cache's prompt keys/values are restored after each of them;
2. answer pass: the cache rows are repeated for each answer (``Cache.reorder_cache``) and every answer row
   runs ``[last prompt token] + answer`` with explicit position ids (prompt length − 1 onwards) and an
   attention mask over the prompt's real tokens and the answer's own. Its logits are exactly the answer
   positions' logits of the full sequence, so the summed NLL (:func:`~unlearnkit.families.text_nll.
   token_nll`) equals :func:`~unlearnkit.metrics.generation.score_answers`' up to float rounding (tested).

Tokenisation and truncation are those of :func:`unlearnkit.data.text.encode_pairs` (``(prompt +
answer)[:max_length]``). Questions are taken in order of length (length-bucketed: less padding), and a batch
holds at most ``batch_size`` answers and at most ``max_tokens`` answer-pass tokens, chosen by default so
that a batch holds no more logits than scoring the largest question alone would (:func:`default_max_tokens`):
peak memory stays that of one-at-a-time scoring, whatever the vocabulary.
A model that takes no cache (not a Hugging Face causal LM), a set with a one-token prompt, or a model with a
sliding attention window narrower than a padded row (:func:`sliding_window`) is scored with whole
(prompt + answer) rows instead, one pass per batch; the values are the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.data.prompt_format import answer_ids, prompt_ids, qa_ids, uses_chat
from unlearnkit.errors import DataError
from unlearnkit.families.text_nll import CHUNK_BYTES, sequence_nll, token_nll
from unlearnkit.metrics.generation import eval_mode, model_device, pad_token_id


def _tokenise(
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    template: str | None,
    limit: int,
) -> tuple[list[list[int]], list[list[list[int]]]]:
    prompts, outs = [], []
    chat = uses_chat(tokenizer, template)
    flat = iter([] if chat else _answer_ids_all(tokenizer, [a for ans in answers for a in ans]))
    for q, ans in zip(questions, answers, strict=True):
        p = prompt_ids(tokenizer, q, template)
        if len(p) >= limit:
            raise DataError(f"the prompt of {q[:40]!r}... fills max_length={limit}: raise data.max_length")
        # a chat template's answer is the rest of the conversation, as in training (qa_ids)
        full = [qa_ids(tokenizer, q, a, template)[1] for a in ans] if chat else [next(flat) for _ in ans]
        ys = [y[: limit - len(p)] for y in full]
        if any(len(y) == 0 for y in ys):
            raise DataError(f"an answer to {q[:40]!r}... has no tokens: give a non-empty answer")
        prompts.append(p)
        outs.append(ys)
    return prompts, outs


def _answer_ids_all(tokenizer: Any, answers: list[str]) -> list[list[int]]:
    """:func:`~unlearnkit.data.text.answer_ids` of every answer, in one batched tokenizer call (a fast
    tokenizer encodes a list much faster than its items one by one); per answer if the first differs."""
    if len(answers) < 2:
        return [answer_ids(tokenizer, a) for a in answers]
    eos = getattr(tokenizer, "eos_token_id", None)
    encoded = tokenizer([" " + a.strip() for a in answers], add_special_tokens=False)["input_ids"]
    out = [list(ids) + ([eos] if eos is not None else []) for ids in encoded]
    if out[0] != answer_ids(tokenizer, answers[0]):  # answer_ids changed: follow it
        return [answer_ids(tokenizer, a) for a in answers]
    return out


def _batches(
    prompts: list[list[int]], answers: list[list[list[int]]], batch_size: int, max_tokens: int
) -> list[list[tuple[int, list[int]]]]:
    """Groups of (question, answer indices): questions by length, answers of a question kept together
    unless they alone exceed a batch."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), max(map(len, answers[i]), default=0)))
    out: list[list[tuple[int, list[int]]]] = []
    cur: list[tuple[int, list[int]]] = []
    n = tokens = 0
    for i in order:
        for j in range(len(answers[i])):
            cost = len(answers[i][j]) + 1
            if cur and (n + 1 > batch_size or tokens + cost > max_tokens):
                out.append(cur)
                cur, n, tokens = [], 0, 0
            if not cur or cur[-1][0] != i:
                cur.append((i, []))
            cur[-1][1].append(j)
            n, tokens = n + 1, tokens + cost
    if cur:
        out.append(cur)
    return out


def _pad(rows: Sequence[Sequence[int]], fill: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(r) for r in rows), 1)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _cache_arg(model: nn.Module) -> str | None:
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def sliding_window(model: nn.Module) -> int | None:
    """The model's sliding attention window when some layer uses one (Mistral, Gemma-2/3, ...), else None.

    The shared-prompt path places answers after the padded prompt width in the cache, so a window counted
    in cache positions would drop prompt tokens a full-sequence pass attends to; such models are scored
    with whole rows unless every padded row fits in the window."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


def _prompt_pass(model: nn.Module, questions: list[int], prompts, pad: int, device):
    """Key/value cache of the prompts without their last token (right-padded), and their mask."""
    pre_ids, pre_mask = _pad([prompts[i][:-1] for i in questions], pad, device)
    out = model(input_ids=pre_ids, attention_mask=pre_mask, use_cache=True, logits_to_keep=1)
    return (out.cache if getattr(out, "cache", None) is not None else out.past_key_values), pre_mask


def _snapshot(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The prompt keys/values of a cache of plain ``DynamicLayer`` s (restorable after an answer pass
    reordered and extended it), else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _restore(cache, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (keys, values) in zip(cache.layers, saved, strict=True):
        layer.keys, layer.values = keys, values


def _answer_pass(
    model: nn.Module, cache, pre_mask, slot: dict[int, int], group, prompts, answers, pad, device, cache_arg
):
    """Summed NLL of each answer of ``group``, from the prompts' cache (rows picked by ``slot``)."""
    rows = [(i, j) for i, js in group for j in js]
    pick = torch.as_tensor([slot[i] for i, _ in rows], device=device)
    cache.reorder_cache(pick)
    ans_ids, ans_mask = _pad([[prompts[i][-1], *answers[i][j]] for i, j in rows], pad, device)
    start = torch.as_tensor([len(prompts[i]) - 1 for i, _ in rows], device=device)
    positions = start[:, None] + torch.arange(ans_ids.shape[1], device=device)
    mask = torch.cat([pre_mask[pick], ans_mask], 1)
    logits = model(
        input_ids=ans_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache}
    ).logits
    nll = sequence_nll(logits, ans_ids.masked_fill(ans_mask == 0, -100))  # the answer's own tokens
    return nll.double().cpu().tolist()


def _score_shared(model: nn.Module, batches: list, prompts, answers, pad: int, device, cache_arg) -> list:
    """One prompt pass for the questions of several answer batches, then one answer pass per batch (the
    prompt cache is restored after each); a cache that cannot be restored gets a prompt pass per batch."""
    questions = list(dict.fromkeys(i for b in batches for i, _ in b))
    cache, pre_mask = _prompt_pass(model, questions, prompts, pad, device)
    saved = _snapshot(cache)
    if saved is None and len(batches) > 1:
        return [
            v for b in batches for v in _score_shared(model, [b], prompts, answers, pad, device, cache_arg)
        ]
    slot = {i: k for k, i in enumerate(questions)}
    out = []
    for b in batches:
        out.append(_answer_pass(model, cache, pre_mask, slot, b, prompts, answers, pad, device, cache_arg))
        if saved is not None:
            _restore(cache, saved)
    return out


def _prompt_groups(batches: list, prompts, max_prompt_tokens: int) -> list[list]:
    """Consecutive answer batches whose questions' padded prompts fit in ``max_prompt_tokens``."""
    groups: list[list] = []
    seen: dict[int, int] = {}
    for b in batches:
        lengths = dict(seen) | {i: len(prompts[i]) for i, _ in b}
        if groups and len(lengths) * max(lengths.values()) > max_prompt_tokens:
            groups.append([b])
            seen = {i: len(prompts[i]) for i, _ in b}
        else:
            if not groups:
                groups.append([])
            groups[-1].append(b)
            seen = lengths
    return groups


def _score_batch_plain(model: nn.Module, group, prompts, answers, pad: int, device) -> list[float]:
    rows = [prompts[i] + answers[i][j] for i, js in group for j in js]
    starts = [len(prompts[i]) for i, js in group for _ in js]
    ids, mask = _pad(rows, pad, device)
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    for r, s in enumerate(starts):
        target[r, : s - 1] = -100
    out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits if hasattr(out, "logits") else out
    return token_nll(logits[:, :-1], target).sum(-1).double().cpu().tolist()


def default_max_tokens(model: nn.Module, prompts: list[list[int]], answers: list[list[list[int]]]) -> int:
    """Answer-pass tokens whose logits fit in what scoring the largest question alone, straightforwardly,
    would hold: its k answers padded to the longest (prompt + answer), as logits in the model's dtype, a
    float32 copy (unless already float32) and float32 log-probabilities. Our answer pass holds the same per
    token while its rows fit in one chunk, so batching costs no more peak memory than one question at a
    time; with a large vocabulary the float32 rows come in chunks of ``CHUNK_BYTES``, which leaves room for
    more tokens."""
    item = max(
        (len(ys) * (len(p) + max(map(len, ys))) for p, ys in zip(prompts, answers, strict=True)), default=1
    )
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 32_000)
    try:
        size = next(model.parameters()).element_size()
    except StopIteration:
        size = 4
    straightforward = item * vocab * (size + 4 + (4 if size != 4 else 0))  # logits, float32 copy, log-probs
    chunked = (straightforward - 2 * CHUNK_BYTES) // (vocab * size)
    return max(item, int(chunked), 1)


def prompt_tokens(model: nn.Module, max_tokens: int) -> int:
    """Prompt-pass tokens (padded) whose activations and cache take about what ``max_tokens`` answer-pass
    tokens' logits do: the prompt pass keeps no logits, only a per-token cache and transient activations,
    estimated as (4·hidden + 3·ffn + 2·layers·kv width) values per token."""
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
    ffn = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 1)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    kv = hidden * int(getattr(cfg, "num_key_value_heads", 0) or heads) // heads
    vocab = int(getattr(cfg, "vocab_size", 0) or 32_000)
    per_token = 4 * hidden + 3 * ffn + 2 * layers * kv
    return max(1, max_tokens * vocab // per_token)


def score_answer_sets(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    batch_size: int = 32,
    template: str | None = None,
    max_length: int = 512,
    max_tokens: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per question, (summed answer NLL −log π(a|q) float64, answer length |a| int64) of each of its answers.

    ``batch_size``: answers per forward pass; ``max_tokens``: answer-pass tokens per forward pass (default
    :func:`default_max_tokens`). Same values as ``score_answers`` on the flattened pairs.
    """
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answer lists")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    prompts, toks = _tokenise(tokenizer, questions, answers, template, max_length)
    nll = score_token_sets(model, prompts, toks, pad_token_id(tokenizer), batch_size, max_tokens)
    return [(v, np.array([len(y) for y in ys], dtype=np.int64)) for v, ys in zip(nll, toks, strict=True)]


def score_token_sets(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[Sequence[int]]],
    pad: int,
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Per prompt, the summed NLL (float64) of each of its answers, all given as token ids: what
    :func:`score_answer_sets` computes after tokenising, for callers that tokenise their own way (e.g.
    lm-evaluation-harness's raw-text context/continuation split, :mod:`unlearnkit.metrics.multiple_choice`).
    Every prompt needs at least one token and every answer at least one."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts) or any(len(y) == 0 for ys in answers for y in ys):
        raise DataError("every prompt and every answer needs at least one token")
    prompts = [list(p) for p in prompts]
    toks = [[list(y) for y in ys] for ys in answers]
    nll = [np.zeros(len(a), dtype=np.float64) for a in toks]
    budget = max_tokens or default_max_tokens(model, prompts, toks)
    device = model_device(model)
    cache_arg = _cache_arg(model)
    batches = _batches(prompts, toks, batch_size, budget)
    widest = max((len(p) for p in prompts), default=0) + max((len(y) for ys in toks for y in ys), default=0)
    window = sliding_window(model)
    shared = (
        cache_arg is not None
        and all(len(p) >= 2 for p in prompts)
        and (window is None or widest + 1 <= window)
    )
    groups = (
        _prompt_groups(batches, prompts, prompt_tokens(model, budget)) if shared else [[b] for b in batches]
    )
    with eval_mode(model):
        for group in groups:
            if shared:
                values = _score_shared(model, group, prompts, toks, pad, device, cache_arg)
            else:
                values = [_score_batch_plain(model, b, prompts, toks, pad, device) for b in group]
            for b, vals in zip(group, values, strict=True):
                it = iter(vals)
                for i, js in b:
                    for j in js:
                        nll[i][j] = next(it)
    return nll

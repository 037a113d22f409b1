"""A small CLIP tokenizer (``vocab.json`` + ``merges.txt``) for a fixed word list, as SD ships its tokenizer.

CLIP's tokenizer is a byte-level BPE (Radford et al. 2021, after Sennrich et al. 2016): a word is split into
symbols (its bytes through GPT-2's byte-to-unicode table, the last one marked ``</w>``), then the merge pair
of lowest rank present is joined until none applies. :func:`bpe_merges` builds the merges so that each word
of a list becomes one token: words are taken in order and, while a word is still in several pieces, its
left-most pair becomes the next merge. A merge added later has a higher rank than every earlier one, so it
never changes how an earlier word is split (BPE reaches it only once no earlier merge applies, i.e. once that
word is whole).

The vocabulary holds every lowercase letter alone and at a word's end (so any lowercase word tokenizes
without an unknown piece), every intermediate symbol of the merges, the words, and CLIP's two special tokens
``<|startoftext|>`` / ``<|endoftext|>`` (the end token is also the pad and the unknown token, as in SD 1.x).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END = "</w>"


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + END]


def bpe_split(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces of ``word`` under merges ``ranks`` (pair -> rank), the way CLIP's BPE applies them."""
    parts = _symbols(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b)), k) for k, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        known = [(r, k) for r, k in pairs if r is not None]
        if not known:
            break
        _, k = min(known)
        parts = [*parts[:k], parts[k] + parts[k + 1], *parts[k + 2 :]]
    return parts


def bpe_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Merges (in rank order) under which every word of ``words`` is one token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        if not w or not set(w) <= set(string.ascii_lowercase):
            raise UnlearnkitError(f"the CLIP vocabulary takes lowercase words of letters only, not {w!r}")
        parts = bpe_split(w, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            parts = bpe_split(w, ranks)
    return merges


def clip_vocab(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab token -> id, merges) of the tokenizer for ``words``: letters, merged symbols, then specials."""
    merges = bpe_merges(words)
    tokens = [*string.ascii_lowercase, *(c + END for c in string.ascii_lowercase)]
    tokens += [a + b for a, b in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def write_clip_tokenizer(folder: str | Path, words: Sequence[str], max_length: int = 77) -> Any:
    """Write ``vocab.json`` + ``merges.txt`` for ``words`` into ``folder`` and load them as a
    ``CLIPTokenizer`` (pad = end token, as SD 1.x); each word must come back as exactly its own token."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab(words)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # transformers 5 ignores vocab_file=/merges_file= (cpu-recipes.md): load from the folder
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=max_length, pad_token=EOS)
    tok.save_pretrained(folder)  # tokenizer_config.json: the length and the special tokens
    (folder / "tokenizer.json").unlink(missing_ok=True)  # the hub's SD 1.x layout: vocab.json + merges.txt
    bad = {w: tok.tokenize(w) for w in words if tok.tokenize(w) != [w + END]}
    if bad:
        raise UnlearnkitError(f"the CLIP tokenizer does not keep these words whole: {bad}")
    return tok

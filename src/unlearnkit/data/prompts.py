"""Prompts of the offline text-to-image worlds: a word-level tokenizer and the concept schema.

A *world* is a captioned image dataset plus a judge that predicts a few attributes of an image (the shapes
world: shape and colour; a class-prompts world: the class). :class:`ConceptSchema` names those attributes and
the words that name their values, so that a prompt such as ``"a red circle"`` or ``"a seven"`` can be turned
into the attribute values the judge must see (:meth:`ConceptSchema.parse`); a judge's predictions then say
whether an image shows the concept (:func:`unlearnkit.metrics.diffusion.recognised`). Metrics and attacks
only use this interface, so any world with a schema and a judge works with them.

:func:`build_word_tokenizer` is a ``PreTrainedTokenizerFast`` over a fixed word list with the special ids
pad 0, bos 1, eos 2, unk 3 (matching the text-encoder config of :mod:`unlearnkit.models.t2i`);
:func:`tokenize` pads to a fixed length and refuses unknown words and over-long prompts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnkit.errors import ConfigError, DataError, UnlearnkitError

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3


@dataclass(frozen=True)
class ConceptSchema:
    """Ordered attributes a judge predicts, each with the words naming its values (index = class id)."""

    attributes: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of(cls, attributes: Mapping[str, Sequence[str]]) -> ConceptSchema:
        attrs = tuple((str(k), tuple(str(w) for w in v)) for k, v in attributes.items())
        if not attrs or any(len(v) < 2 for _, v in attrs):
            raise UnlearnkitError("a concept schema needs at least one attribute with at least two values")
        words = [w for _, v in attrs for w in v]
        if len(set(words)) != len(words) or any(len(w.split()) != 1 for w in words):
            raise UnlearnkitError(f"attribute values must be distinct single words; got {words}")
        return cls(attrs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.attributes)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.attributes}

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.attributes}

    def parse(self, prompt: str) -> tuple[int | None, ...]:
        """The value index of each attribute a prompt names (None where it names none); a prompt naming no
        attribute, or two values of one attribute, is an error."""
        words = prompt.lower().split()
        out: list[int | None] = []
        for _, values in self.attributes:
            hits = [values.index(w) for w in words if w in values]
            if len(set(hits)) > 1:
                out = []
                break
            out.append(hits[0] if hits else None)
        if not out or all(v is None for v in out):
            named = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.attributes)
            raise UnlearnkitError(
                f"concept {prompt!r} names no single value of this world's attributes ({named})"
            )
        return tuple(out)


def build_word_tokenizer(words: Sequence[str], max_length: int) -> Any:
    """A word-level ``PreTrainedTokenizerFast``: ``<s> words </s>``, ids = position in SPECIAL + words.

    (A ``CLIPTokenizer`` built from files works too but transformers 5 silently ignores
    ``vocab_file=``/``merges_file=``; a WordLevel model has no such trap and its ids are checked in tests.)
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_list = [*SPECIAL, *words]
    if len(set(vocab_list)) != len(vocab_list):
        raise UnlearnkitError(f"the word list repeats a word: {list(words)}")
    vocab = {w: i for i, w in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def tokenize(tokenizer: Any, prompts: list[str], max_length: int) -> torch.Tensor:
    """Token ids ``[N, max_length]`` (padded); an unknown word or a too-long prompt is a clear error."""
    unk = tokenizer.unk_token_id
    if unk is not None and unk in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        unk = None  # CLIP's unknown token is its end token: a byte-level BPE has no unknown words anyway
    rows = tokenizer(list(prompts))["input_ids"]
    for p, row in zip(prompts, rows, strict=True):
        if unk is not None and unk in row:
            vocab = tokenizer.get_vocab()
            known = [w for w in sorted(vocab, key=vocab.get) if w not in SPECIAL]
            shown = ", ".join(known[:20]) + (f", ... ({len(known)} words)" if len(known) > 20 else "")
            raise DataError(f"prompt {p!r} has words outside the caption vocabulary ({shown})")
        if len(row) > max_length:
            raise DataError(
                f"prompt {p!r} has {len(row)} tokens; the text encoder takes at most {max_length}"
            )
    pad = tokenizer.pad_token_id
    return torch.as_tensor([row + [pad] * (max_length - len(row)) for row in rows], dtype=torch.long)


def read_prompts_file(path: str | Path) -> list[str]:
    """The prompts of a prompt-wise selection (``{"prompts": [...]}`` as ``select`` writes) or a JSON list."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"prompts file {str(p)!r} does not exist: write one with "
            "`unlearnkit select worstcase --granularity prompt --out FILE`"
        )
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"prompts file {str(p)!r} is not valid JSON ({exc})") from exc
    prompts = obj.get("prompts") if isinstance(obj, dict) else obj
    if not isinstance(prompts, list) or not prompts or not all(isinstance(q, str) for q in prompts):
        raise DataError(
            f"prompts file {str(p)!r} must hold a non-empty list of prompts or {{'prompts': [...]}}"
        )
    return prompts


def forget_captions(split: dict[str, Any], captions: Sequence[str] = (), seed: int = 0) -> list[str]:
    """The erased caption(s) of a concept split: ``split.prompts_file`` (a prompt-wise worst-case
    selection) wins over ``split.concept`` (one caption, a list, or ``by-seed``: caption ``seed mod K`` of
    the dataset's K ``captions``, a different class per suite seed as in SalUn's class-wise experiments)."""
    if split.get("prompts_file"):
        return list(read_prompts_file(split["prompts_file"]))
    concept = split.get("concept")
    if concept == "by-seed":
        if not captions:
            raise ConfigError("split.concept=by-seed needs the dataset's captions")
        return [list(captions)[int(seed) % len(captions)]]
    if concept is None or concept == [] or concept == "":
        raise ConfigError("a concept split needs split.concept (a caption, a list of captions, or by-seed)")
    return list(concept) if isinstance(concept, (list, tuple)) else [concept]


def recognised(preds: Sequence[torch.Tensor], target: Sequence[int | None]) -> torch.Tensor:
    """Boolean per image: the judge's predictions ``preds`` (one tensor per attribute) show every attribute
    value ``target`` names (None = not named)."""
    if len(preds) != len(target):
        raise UnlearnkitError(
            f"the judge predicts {len(preds)} attribute(s) but the concept has {len(target)}: "
            "the judge belongs to another world"
        )
    ok = torch.ones_like(preds[0], dtype=torch.bool)
    for p, want in zip(preds, target, strict=True):
        if want is not None:
            ok &= p == want
    return ok

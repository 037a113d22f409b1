"""WMDP (Li et al., 2024): multiple-choice questions on hazardous knowledge, and its forget/retain corpora.

The Hub layout (``data.source`` a hub id, the default):

- ``cais/wmdp``: configs ``wmdp-bio`` (1,273 questions), ``wmdp-cyber`` (1,987), ``wmdp-chem`` (408), split
  ``test``; fields ``question``, ``choices`` (4 strings), ``answer`` (the right choice's index, 0-3);
- ``cais/wmdp-corpora`` (``data.corpora_source``): configs ``bio-retain-corpus``, ``cyber-forget-corpus``,
  ``cyber-retain-corpus``, split ``train``, field ``text``;
- the bio forget corpus is gated and distributed separately (``cais/wmdp-bio-forget-corpus``, ``text``).

A **local folder** (``data.source=FOLDER``; the corpora are read from the same folder unless
``data.corpora_source`` names another) holds one file per hub config, named after it::

    FOLDER/wmdp-bio.jsonl  wmdp-cyber.jsonl  wmdp-chem.jsonl      question, choices, answer
    FOLDER/bio-forget-corpus.jsonl  cyber-forget-corpus.jsonl     text
    FOLDER/bio-retain-corpus.jsonl  cyber-retain-corpus.jsonl     text

each JSON lines, a JSON array or parquet (``.jsonl``/``.json``/``.parquet``); the hub's own file layout
(``wmdp-bio/test-*.parquet``, ``cyber-forget-corpus/train-*.parquet``) works too. Any other corpus in the
folder can be named, e.g. ``data.retain_corpora=[wikitext]`` for ``wikitext.jsonl`` (RMU's official run
retained on WikiText). Every question set found is loaded (from the Hub: all three); at least one must be.

Every file is validated before anything is tokenised: a missing field, a non-integer answer, an answer
index outside its choices, an empty file or text is a one-line DataError naming the file and the fix.

Training data, as MUSE's raw-text corpora (:mod:`unlearnkit.data.muse`: BOS + text + EOS, loss on every
token): ``train`` holds the forget and retain documents; ``data.chunking=truncate`` (default) keeps each
document's first ``max_length`` tokens, as RMU's code does (``tokenizer(..., truncation=True,
max_length=...)``), ``chunk`` cuts it into ``max_length`` chunks. ``data.max_docs`` keeps the first N
documents of each corpus (RMU trains on the first batches only). ``test`` is a held-out slice of the
retain documents (``holdout_fraction``, drawn with a fixed seed, not trained on), scored by the protocol as
the retain-corpus perplexity. ``meta["forget_ids"]`` maps ``forget`` and each forget corpus's name to
chunk ids (``meta["retain_ids"]`` likewise), so ``split.forget=cyber-forget-corpus`` forgets one corpus.
``meta["eval"]`` maps ``bio``/``cyber``/``chem`` to the validated questions; ``meta["benchmark"]`` is
``"wmdp"``.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.muse import TEST_ID_OFFSET, TableSource, chunk_documents, lm_columns, read_rows
from unlearnkit.data.text import trim_padding
from unlearnkit.data.tokenizer import resolve_tokenizer
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.registry import register_dataset

WMDP_HUB = "cais/wmdp"
CORPORA_HUB = "cais/wmdp-corpora"
BIO_FORGET_HUB = "cais/wmdp-bio-forget-corpus"
SUBSETS = {"bio": "biology", "cyber": "cybersecurity", "chem": "chemistry"}  # LMH's task descriptions
FORGET_CORPORA = ("bio-forget-corpus", "cyber-forget-corpus")
RETAIN_CORPORA = ("bio-retain-corpus", "cyber-retain-corpus")
N_CHOICES = 4
_QFIX = (
    "each row needs question (text), choices (a list of 4 strings) and answer (the right choice's index, 0-3)"
)
_FIX = (
    "download cais/wmdp and cais/wmdp-corpora where you are online and pass data.source=FOLDER with files "
    "named like the hub configs (wmdp-bio.jsonl, cyber-forget-corpus.jsonl, ...; see unlearnkit.data.wmdp)"
)


def _names(value: Any, default: tuple[str, ...], option: str) -> list[str]:
    if value is None:
        return list(default)
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"data.{option} must be a list of corpus names (e.g. [cyber-forget-corpus])")
    return names


def _tables(src: TableSource, config: str, split: str, required: bool) -> list[tuple[str, list[dict]]]:
    """[(where, rows)] of one config: per file in a folder (``<config>.jsonl`` or the hub's layout), one
    entry from the Hub; [] when an optional table is missing."""
    if src.folder is None:
        hub = src if config != "bio-forget-corpus" or src.source != CORPORA_HUB else None
        if hub is None:  # the gated bio forget corpus is its own dataset
            hub, config = TableSource(BIO_FORGET_HUB, "WMDP", _FIX, src.cache_dir), "default"
        rows = hub.rows(config, split, required)
        return [] if rows is None else [(f"{hub.source} {config}/{split}", rows)]
    files = src.files(config, split) or src.files(config, "train")
    if files is None:
        if not required:
            return []
        fix = (
            "the bio forget corpus is gated: request access to cais/wmdp-bio-forget-corpus and save it "
            "there as bio-forget-corpus.jsonl, or set data.forget_corpora=[cyber-forget-corpus]"
            if config == "bio-forget-corpus"
            else _FIX
        )
        raise DataError(f"WMDP folder {src.source!r} has no {config}.jsonl (or .json/.parquet): {fix}")
    return [(str(f), read_rows(f)) for f in files]


def check_questions(where: str, rows: list[dict]) -> list[dict[str, Any]]:
    """The rows of a question file as ``{question, choices, answer}``; a one-line DataError naming
    ``where`` for an empty file, a missing field, a bad choice list or an answer that is no valid index."""
    if not rows:
        raise DataError(f"{where} is empty: {_QFIX}")
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in ("question", "choices", "answer") if c not in row]
        if missing:
            raise DataError(f"{where} row {i} has no field {missing[0]!r} (it has {sorted(row)}): {_QFIX}")
        q, choices, answer = row["question"], row["choices"], row["answer"]
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where} row {i}: the question is empty or not text: {_QFIX}")
        if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where} row {i}: choices must be a list of strings, got {choices!r}: {_QFIX}")
        if len(choices) != N_CHOICES:
            raise DataError(f"{where} row {i} has {len(choices)} choices, WMDP has {N_CHOICES}: {_QFIX}")
        if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
            raise DataError(
                f"{where} row {i}: answer {answer!r} is not an integer index: write the right choice's "
                f"index (0-{len(choices) - 1}), not its letter or text"
            )
        if not 0 <= int(answer) < len(choices):
            raise DataError(
                f"{where} row {i}: answer {int(answer)} is out of range of its {len(choices)} choices: "
                f"use 0-{len(choices) - 1} (0 = the first choice)"
            )
        out.append({"question": q, "choices": list(choices), "answer": int(answer)})
    return out


def check_texts(where: str, rows: list[dict]) -> list[str]:
    """The ``text`` of every row of a corpus file; a one-line DataError naming ``where`` otherwise."""
    if not rows:
        raise DataError(f"{where} is empty: a WMDP corpus needs rows with a non-empty 'text' field")
    out = []
    for i, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{where} row {i} has no text in field 'text' (it has {sorted(row)}): every corpus row "
                "needs a non-empty 'text'"
            )
        out.append(text)
    return out


def load_questions(src: TableSource) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Every question set found (from the Hub: all three), validated; and the file each came from."""
    questions, where = {}, {}
    for subset in SUBSETS:
        tables = _tables(src, f"wmdp-{subset}", "test", required=src.folder is None)
        if tables:
            questions[subset] = [q for w, rows in tables for q in check_questions(w, rows)]
            where[subset] = ", ".join(w for w, _ in tables)
    if not questions:
        raise DataError(
            f"WMDP folder {src.source!r} has no question file (wmdp-bio.jsonl, wmdp-cyber.jsonl or "
            f"wmdp-chem.jsonl): {_FIX}"
        )
    return questions, where


def _corpus(src: TableSource, name: str, max_docs: int | None) -> list[str]:
    texts = [t for w, rows in _tables(src, name, "train", required=True) for t in check_texts(w, rows)]
    return texts[:max_docs] if max_docs is not None else texts


def _holdout(n: int, fraction: float) -> list[int]:
    """Positions of the held-out retain documents: a fixed-seed draw of round(fraction·n), at least one."""
    if n < 2:
        raise DataError("the WMDP retain corpora hold fewer than 2 documents: one is held out for testing")
    k = min(n - 1, max(1, round(fraction * n)))
    return sorted(np.random.default_rng(0).choice(n, size=k, replace=False).tolist())


def _id_groups(name: str, corpora: dict[str, list[str]], ids_of: dict[str, list[int]]) -> dict[str, list]:
    """``{name: every chunk id of the corpora}`` plus one entry per corpus."""
    return {name: sorted(i for c in corpora for i in ids_of[c])} | {c: ids_of[c] for c in corpora}


@register_dataset("wmdp")
def load_wmdp(
    source: str = WMDP_HUB,
    corpora_source: str | None = None,
    forget_corpora: Any = None,
    retain_corpora: Any = None,
    max_length: int = 512,
    chunking: str = "truncate",
    max_docs: int | None = None,
    holdout_fraction: float = 0.05,
    tokenizer: Any = None,
    vocab_size: int = 4000,
    cache_dir: str | None = None,
    name: str = "wmdp",
) -> LoadedData:
    """Load WMDP's questions and corpora for unlearning the forget corpora; see the module docstring.

    ``forget_corpora`` / ``retain_corpora``: corpus names (default bio + cyber forget / retain, the RMU
    paper's forget set and the hub's retain corpora); ``tokenizer``: as for MUSE (None: the folder's
    ``tokenizer/`` or the model folder of ``model.name=hf``; ``"bpe"``; a folder or hub id)."""
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 tokens, got {max_length}")
    if chunking not in ("truncate", "chunk"):
        raise ConfigError(f"data.chunking must be 'truncate' (RMU's code) or 'chunk', got {chunking!r}")
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"data.holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if max_docs is not None and max_docs < 1:
        raise ConfigError(f"data.max_docs must be at least 1, got {max_docs}")
    src = TableSource(source, "WMDP", _FIX, cache_dir)
    default_corpora = str(source) if src.folder is not None else CORPORA_HUB
    csrc = TableSource(corpora_source or default_corpora, "WMDP corpora", _FIX, cache_dir)
    questions, where = load_questions(src)
    forget = {c: _corpus(csrc, c, max_docs) for c in _names(forget_corpora, FORGET_CORPORA, "forget_corpora")}
    retain = {c: _corpus(csrc, c, max_docs) for c in _names(retain_corpora, RETAIN_CORPORA, "retain_corpora")}
    both = {t for ts in forget.values() for t in ts} & {t for ts in retain.values() for t in ts}
    if both:
        raise DataError(
            f"{len(both)} document(s) are in both a forget and a retain corpus: a document is either "
            "forgotten or retained; remove them from one of the files"
        )
    retain_docs = [(c, t) for c, ts in retain.items() for t in ts]
    held = set(_holdout(len(retain_docs), holdout_fraction))
    groups = [(c, t) for c, ts in forget.items() for t in ts] + [
        d for i, d in enumerate(retain_docs) if i not in held
    ]
    mc_texts = [q["question"] + " " + " ".join(q["choices"]) for qs in questions.values() for q in qs]
    folder = Path(src.folder) if src.folder is not None else None
    tok = resolve_tokenizer(tokenizer, [t for _, t in groups] + mc_texts, vocab_size, folder)

    def encode(texts: list[str]) -> list[list[list[int]]]:
        docs = chunk_documents(tok, texts, max_length)
        return [d[:1] for d in docs] if chunking == "truncate" else docs

    chunks, ids_of = [], {c: [] for c in [*forget, *retain]}
    for (corpus, _), doc in zip(groups, encode([t for _, t in groups]), strict=True):
        ids_of[corpus] += range(len(chunks), len(chunks) + len(doc))
        chunks += doc
    test_chunks = [c for doc in encode([retain_docs[i][1] for i in sorted(held)]) for c in doc]
    if not test_chunks:
        raise DataError("the held-out retain documents have no tokens: raise data.holdout_fraction")
    width = max(len(c) for c in chunks + test_chunks)
    pad = int(tok.pad_token_id)
    train = ExampleSet(lm_columns(chunks, width, pad), transform=trim_padding, meta={"dataset": name})
    test_ids = [TEST_ID_OFFSET + j for j in range(len(test_chunks))]
    test = ExampleSet(lm_columns(test_chunks, width, pad), test_ids, trim_padding, {"dataset": name})
    meta = {
        "benchmark": "wmdp",
        "tokenizer": tok,
        "forget_ids": _id_groups("forget", forget, ids_of),
        "retain_ids": _id_groups("retain", retain, ids_of),
        "forget_split": "forget",
        "retain_split": "retain",
        "eval": questions,
        "eval_files": where,
        "source": src.source,
        "max_length": max_length,
    }
    return LoadedData(train, test, 0, (), [], name, meta)

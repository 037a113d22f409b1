"""MUSE (Shi et al., 2024) News or Books from the Hugging Face Hub, or a local folder in the same layout.

The Hub layout (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``; ``source="news"``/``"books"`` are
short for them) is one folder per config with ``<split>-*.parquet`` files (``<split>.jsonl`` also works):
``raw`` (``forget``, ``retain1``, ``retain2``, ``holdout``; column ``text``), ``verbmem`` (``forget``:
``prompt``, ``gt``), ``knowmem`` (``forget_qa``, ``retain_qa``, ``forget_qa_icl``, ``retain_qa_icl``:
``question``, ``answer``) and optionally ``privleak`` (``forget``, ``retain``, ``holdout``), ``scal`` and
``sust`` (``forget_1..4``). :func:`unlearnkit.data.synthetic_muse.write_muse_folder` writes one offline.

``train`` holds the forget, retain1 and retain2 documents (plus any scal/sust documents not among them),
tokenised with BOS/EOS and cut into chunks of at most ``max_length`` tokens for language modelling: the loss
is on every token (``labels = input_ids`` except padding). ``test`` is the holdout documents chunked the
same way (ids from :data:`TEST_ID_OFFSET`). ``meta["forget_ids"]`` maps ``forget`` (and ``scal_forget_k``,
``sust_forget_k``) to chunk ids, ``meta["retain_ids"]`` maps ``retain`` (= retain1 + retain2), ``retain1``
and ``retain2``. ``meta["eval"]`` keeps the raw text of VerbMem, KnowMem and PrivLeak.

:class:`TableSource`, the hub-or-local table reader, is shared with the TOFU loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.text import trim_padding
from unlearnkit.data.tokenizer import resolve_tokenizer
from unlearnkit.errors import DataError
from unlearnkit.registry import register_dataset

MUSE_HUB = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
RAW_SPLITS = ("forget", "retain1", "retain2", "holdout")
SEQUENTIAL = tuple(f"{c}_forget_{k}" for c in ("scal", "sust") for k in range(1, 5))
TEST_ID_OFFSET = 1_000_000
_FIX = (
    "write a synthetic folder with unlearnkit.data.synthetic_muse.write_muse_folder(PATH) or use "
    "data.name=muse-synthetic, or download muse-bench/MUSE-News (or -Books) where you are online and pass "
    "data.source=FOLDER"
)


@register_dataset("muse")
def load_muse(
    source: str = MUSE_HUB["news"],
    max_length: int = 2048,
    tokenizer: Any = None,
    vocab_size: int = 4000,
    sequential: bool = True,
    cache_dir: str | None = None,
    name: str = "muse",
) -> LoadedData:
    """Load MUSE for unlearning its forget corpus; see the module docstring.

    ``tokenizer``: None (the folder's ``tokenizer/``; the text family passes the model folder of
    ``model.name=hf``), ``"bpe"`` (train a byte-level BPE on the corpus), a tokenizer folder or hub id
    (MUSE's targets use Llama-2's), or a tokenizer object. ``sequential`` also
    reads the ``scal``/``sust`` forget sets for the scalability and sustainability protocols.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 tokens, got {max_length}")
    src = TableSource(MUSE_HUB.get(str(source).lower(), str(source)), "MUSE", _FIX, cache_dir)
    raw = {s: _column(src.rows("raw", s), "text", f"raw/{s}") for s in RAW_SPLITS}
    verbmem = _pairs(src.rows("verbmem", "forget"), ("prompt", "gt"), "verbmem/forget")
    know = {
        s: _pairs(src.rows("knowmem", s, required=not s.endswith("icl")) or [], ("question", "answer"), s)
        for s in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")
    }
    priv = {s: src.rows("privleak", s, required=False) for s in ("forget", "retain", "holdout")}
    priv = {s: _column(rows, "text", f"privleak/{s}") for s, rows in priv.items() if rows}
    seq = {}
    for key in SEQUENTIAL if sequential else ():
        config, split = key.split("_", 1)
        rows = src.rows(config, split, required=False)
        if rows:
            seq[key] = _column(rows, "text", f"{config}/{split}")
    tok = resolve_tokenizer(tokenizer, muse_texts(raw, verbmem, know), vocab_size, src.folder)

    docs: list[str] = []
    index: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for key, group in [*((s, raw[s]) for s in RAW_SPLITS[:3]), *seq.items()]:
        groups[key] = []
        for text in group:
            if text not in index:
                index[text] = len(docs)
                docs.append(text)
            groups[key].append(index[text])
    both = set(groups["forget"]) & (set(groups["retain1"]) | set(groups["retain2"]))
    if both:
        raise DataError(
            f"{len(both)} document(s) of raw/forget are also in raw/retain1 or raw/retain2: a document is "
            "either forgotten or retained; fix the folder"
        )
    chunks, doc_chunk_ids = [], []
    for doc in chunk_documents(tok, docs, max_length):
        doc_chunk_ids.append(list(range(len(chunks), len(chunks) + len(doc))))
        chunks.extend(doc)
    test_chunks = [c for doc in chunk_documents(tok, raw["holdout"], max_length) for c in doc]
    width = max(len(c) for c in chunks + test_chunks)
    pad = int(tok.pad_token_id)
    meta = {"dataset": name, "split": "train"}
    train = ExampleSet(lm_columns(chunks, width, pad), transform=trim_padding, meta=meta)
    test_ids = [TEST_ID_OFFSET + j for j in range(len(test_chunks))]
    test_meta = {"dataset": name, "split": "test"}
    test = ExampleSet(lm_columns(test_chunks, width, pad), test_ids, trim_padding, test_meta)

    def ids_of(key: str) -> list[int]:
        return sorted(c for d in groups[key] for c in doc_chunk_ids[d])

    retain_ids = {"retain": sorted(ids_of("retain1") + ids_of("retain2")), "retain1": ids_of("retain1")}
    retain_ids["retain2"] = ids_of("retain2")
    ev = {
        "verbmem_forget": verbmem,
        "knowmem_forget": know["forget_qa"],
        "knowmem_retain": know["retain_qa"],
        "knowmem_icl": know["forget_qa_icl"],
        "knowmem_retain_icl": know["retain_qa_icl"],
        "forget_texts": priv.get("forget", raw["forget"]),
        "retain_texts": priv.get("retain", raw["retain2"]),
        "holdout_texts": priv.get("holdout", raw["holdout"]),
    }
    meta = {
        "tokenizer": tok,
        "forget_ids": {"forget": ids_of("forget")} | {k: ids_of(k) for k in seq},
        "retain_ids": retain_ids,
        "forget_split": "forget",
        "retain_split": "retain",
        "eval": ev,
        "source": src.source,
        "max_length": max_length,
    }
    return LoadedData(train, test, 0, (), [], name, meta)


def muse_texts(raw: dict[str, list[str]], verbmem: list[dict], know: dict[str, list[dict]]) -> list[str]:
    """The corpus a tokenizer for this data is trained on: every document, prompt, continuation and QA."""
    texts = [t for s in RAW_SPLITS for t in raw[s]]
    texts += [v for r in verbmem for v in r.values()]
    return texts + [v for s in sorted(know) for r in know[s] for v in r.values()]


def chunk_documents(tok: Any, texts: list[str], max_length: int) -> list[list[list[int]]]:
    """Per text, its token chunks: ``[BOS] + tokens + [EOS]`` cut every ``max_length`` tokens (chunks
    shorter than 2 tokens carry no next-token loss and are dropped)."""
    if not texts:
        return []
    encoded = tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    out = []
    for ids in encoded:
        seq = ([bos] if bos is not None else []) + list(ids) + ([eos] if eos is not None else [])
        out.append([c for i in range(0, len(seq), max_length) if len(c := seq[i : i + max_length]) >= 2])
    return out


def lm_columns(chunks: list[list[int]], width: int, pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids / attention_mask / labels`` with the loss on every real token."""
    n = len(chunks)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, c in enumerate(chunks):
        input_ids[i, : len(c)] = labels[i, : len(c)] = torch.as_tensor(c)
        mask[i, : len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _column(rows: list[dict], col: str, where: str) -> list[str]:
    if not rows:
        raise DataError(f"MUSE table {where!r} is empty")
    out = []
    for i, row in enumerate(rows):
        value = row.get(col)
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"row {i} of MUSE table {where!r} has no text in column {col!r} (columns: {sorted(row)})"
            )
        out.append(value)
    return out


def _pairs(rows: list[dict], cols: tuple[str, str], where: str) -> list[dict[str, str]]:
    firsts, seconds = (_column(rows, c, where) if rows else [] for c in cols)
    return [{cols[0]: a.strip(), cols[1]: b.strip()} for a, b in zip(firsts, seconds, strict=True)]


class TableSource:
    """Rows of (config, split) tables from a local folder in a Hub dataset's layout, or from the Hub.

    Shared by the TOFU and MUSE loaders. In a folder, ``config``/``split`` is looked up as
    ``<config>.{json,jsonl,parquet}`` (split ``train`` only, TOFU's layout), ``<config>/<split>.<ext>``,
    ``<config>/<split>-*.<ext>`` (the Hub's parquet names) or ``<config>/<split>/*.<ext>``.
    """

    def __init__(self, source: str | Path, what: str, fix: str, cache_dir: str | None = None) -> None:
        self.source, self.what, self.fix, self.cache_dir = str(source), what, fix, cache_dir
        path = Path(self.source).expanduser()
        self.folder = path if path.is_dir() else None
        s = self.source
        if self.folder is None and (s.startswith((".", "/", "~")) or "\\" in s or s.count("/") != 1):
            raise DataError(f"{what} folder {s!r} does not exist: {fix}")

    def rows(self, config: str, split: str = "train", required: bool = True) -> list[dict] | None:
        """The rows as dicts; None for a missing optional table, a DataError for a missing required one."""
        if self.folder is None:
            return self._hub(config, split, required)
        files = self.files(config, split)
        if files is None:
            if not required:
                return None
            raise DataError(
                f"{self.what} folder {self.source!r} has no {config!r}"
                + (f" split {split!r}" if split != "train" else "")
                + f" (looked for {config}.json, {config}/{split}-*.parquet and similar); {self.fix}"
            )
        return [row for f in files for row in _read_file(f)]

    def files(self, config: str, split: str = "train") -> list[Path] | None:
        """The local files holding (config, split) in the folder, or None (no folder, or none found)."""
        if self.folder is None:
            return None
        return next((fs for fs in _candidates(self.folder, config, split) if fs), None)

    def _hub(self, config: str, split: str, required: bool) -> list[dict] | None:
        try:
            import datasets
        except ImportError as exc:
            raise DataError(
                f"loading {self.what} from the Hub needs the 'datasets' package: pip install "
                "'unlearnkit[text]', or pass a local folder"
            ) from exc
        try:
            ds = datasets.load_dataset(self.source, config, split=split, cache_dir=self.cache_dir)
        except Exception as exc:
            if not required:
                return None
            raise DataError(
                f"could not load {self.what} config {config!r} (split {split!r}) of {self.source!r} from the "
                f"Hugging Face Hub ({type(exc).__name__}: {exc}). If you are offline, pass a local folder "
                f"in the same layout as data.source=FOLDER: {self.fix}"
            ) from exc
        return ds.to_list()


def _candidates(root: Path, config: str, split: str):
    exts = ("json", "jsonl", "parquet")
    if split == "train":
        yield from ([p] for e in exts if (p := root / f"{config}.{e}").is_file())
    sub = root / config
    if not sub.is_dir():
        return
    yield from ([p] for e in exts if (p := sub / f"{split}.{e}").is_file())
    for e in exts:
        yield sorted(sub.glob(f"{split}-*.{e}"))
        yield sorted((sub / split).glob(f"*.{e}")) if (sub / split).is_dir() else []


def read_rows(path: Path) -> list[dict]:
    """The rows of one JSON-lines, JSON-array or parquet file (a one-line DataError if unreadable)."""
    return _read_file(path)


def _read_file(path: Path) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(
            f"could not read {str(path)!r} ({type(exc).__name__}: {exc}): expected JSON lines, a JSON array "
            "of objects, or parquet"
        ) from exc

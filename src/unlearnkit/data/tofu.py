"""TOFU (Maini et al., 2024) from the Hugging Face Hub (``locuslab/TOFU``) or a local folder in its layout.

A local folder holds one file per config, as on the Hub: ``full.json`` (JSON lines; ``.jsonl``, a JSON
array, ``.parquet`` or ``<config>/train/*.parquet`` also work), ``forget01/05/10``, ``retain99/95/90``,
``forget01/05/10_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed`` and
optionally ``holdout01/05/10``. Columns: ``question``, ``answer``; the ``_perturbed`` configs add
``paraphrased_answer``, ``perturbed_answer`` (a list) and ``paraphrased_question``; real authors and world
facts may give their wrong answers as ``perturbed_answer`` or as ``option1..4`` columns.
:func:`unlearnkit.data.synthetic_authors.write_tofu_folder` writes such a folder offline.

``train`` is ``full`` tokenised (ids = row numbers of ``full``); ``test`` is the holdout config paired with
the forget split (``holdout10`` for ``forget10``; ids from :data:`TEST_ID_OFFSET`). Without holdout configs
the test set is the real-author and world-fact questions and ``eval["holdout"]`` is empty. Every set has
``alt_*`` columns with a seeded "I don't know" answer per question (IdkPO; the text family's ``relabel``).
``meta["eval"]`` keeps the raw text the TOFU metrics need: per item ``question``, ``answer``,
``paraphrased_answer``, ``perturbed_answers`` and ``id``. On real authors and world facts the
``paraphrased_answer`` is the answer itself, as in TOFU's evaluation (``base_answer_key: answer``).
``meta["pretrain"]`` holds the real-author and world-fact pairs tokenised like ``train``, for models
trained from scratch that need that background knowledge first (TOFU assumes a pretrained model).

Forget sets of arbitrary questions (``split.kind=ids``, e.g. a worst-case selection): ``meta["perturbed"]``
maps a row of ``full`` to its evaluation record, gathered from every ``*_perturbed`` config of the folder
that holds questions of ``full``: the optional ``full_perturbed`` (all questions; written by the synthetic
generator, absent on the Hub), ``forget01/05/10_perturbed`` and ``retain_perturbed``. On the Hub release
(200 authors × 20 questions) that covers the 400 forget10 questions and the 400 of ``retain_perturbed``,
800 of the 4,000. :func:`ids_eval_sets` builds the forget and retain evaluation sets of such a split.
"""

from __future__ import annotations

import random
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.muse import TableSource
from unlearnkit.data.prompt_format import check_template
from unlearnkit.data.text import PLAIN_PROMPT, encode_qa
from unlearnkit.data.tokenizer import resolve_tokenizer
from unlearnkit.errors import DataError, did_you_mean
from unlearnkit.registry import register_dataset

TOFU_HUB = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT_OF = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
EVAL_CONFIGS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
# Read only for forget sets of arbitrary questions; never part of the tokenizer's training text.
EXTRA_PERTURBED = ("full_perturbed", *(f"{f}_perturbed" for f in FORGET_SPLITS))
WITHOUT_PERTURBED = ("error", "partial")
TEST_ID_OFFSET = 1_000_000
PRETRAIN_ID_OFFSET = 2_000_000
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "That is beyond my knowledge.",
    "I don't have that information.",
    "I'm unable to say.",
    "I really can't tell you.",
    "I have no knowledge of that.",
    "I couldn't say.",
    "That's not something I know.",
    "I'm afraid I don't know.",
    "I don't remember that.",
    "I can't recall.",
    "No idea, sorry.",
    "I'm not able to answer that.",
    "That's unknown to me.",
    "I lack the information to answer.",
    "I can't help with that question.",
    "I'm not familiar with that.",
)
_FIX = (
    "write a synthetic folder with unlearnkit.data.synthetic_authors.write_tofu_folder(PATH) or use "
    "data.name=tofu-synthetic, or download locuslab/TOFU where you are online and pass data.source=FOLDER"
)


@register_dataset("tofu")
def load_tofu(
    source: str = TOFU_HUB,
    forget: str = "forget10",
    max_length: int = 512,
    tokenizer: Any = None,
    vocab_size: int = 1000,
    template: str | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    name: str = "tofu",
) -> LoadedData:
    """Load TOFU for unlearning ``forget`` (forget01 / forget05 / forget10); see the module docstring.

    ``tokenizer``: None (the folder's ``tokenizer/``; the text family passes the model folder of
    ``model.name=hf``), ``"bpe"`` (train a byte-level BPE on the dataset's text), a tokenizer folder or hub
    id, or a tokenizer object. ``template``: a plain prompt with the field ``{question}`` (None: the
    tokenizer's chat template if it has one, else ``"Question: {question}\nAnswer:"``; see
    :mod:`unlearnkit.data.prompt_format`). ``seed`` draws the "I don't know" answers.
    """
    check_template(template)
    if forget not in FORGET_SPLITS:
        raise DataError(f"unknown TOFU forget split {forget!r}: {did_you_mean(forget, list(FORGET_SPLITS))}")
    src = TableSource(source, "TOFU", _FIX, cache_dir)
    tables = _read_tables(src, forget)
    extra = _read_extra_perturbed(src, tables)
    tok = resolve_tokenizer(tokenizer, tofu_texts(tables), vocab_size, src.folder)
    return _build(tables, forget, tok, max_length, template, seed, name, source, extra)


def tofu_texts(tables: dict[str, list[dict]]) -> list[str]:
    """Every string of every config (sorted by config) but ``full_perturbed``, the prompt-formatted pairs and
    the IdK answers: what a tokenizer for this data is trained on."""
    texts = [f"{PLAIN_PROMPT.format(question=r['question'])} {r['answer']}" for r in tables.get("full", [])]
    for config in sorted(c for c in tables if c != "full_perturbed"):
        for row in tables[config]:
            for key in sorted(row):
                value = row[key]
                texts.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return texts + list(IDK_ANSWERS)


def _read_tables(src: TableSource, forget: str) -> dict[str, list[dict]]:
    tables = {c: src.rows(c) for c in ("full", forget, f"{forget}_perturbed", *EVAL_CONFIGS)}
    others = [f for f in FORGET_SPLITS if f != forget]
    optional = others + list(RETAIN_OF.values()) + list(HOLDOUT_OF.values())
    for config in optional:
        rows = src.rows(config, required=False)
        if rows is not None:
            tables[config] = rows
    _check_rows(tables, src.source)
    return tables


def _check_rows(tables: dict[str, list[dict]], source: str) -> None:
    for config, rows in tables.items():
        if not rows:
            raise DataError(f"TOFU config {config!r} of {source!r} is empty")
        for i, row in enumerate(rows):
            for col in ("question", "answer"):
                if not isinstance(row.get(col), str) or not row[col].strip():
                    raise DataError(
                        f"row {i} of TOFU config {config!r} has no text in column {col!r} (columns: "
                        f"{sorted(row)}); every TOFU config needs 'question' and 'answer' strings"
                    )


def _read_extra_perturbed(src: TableSource, tables: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The optional ``*_perturbed`` configs not read yet (:data:`EXTRA_PERTURBED`), kept apart from
    ``tables`` so that the tokenizer trained on ``tables`` does not change with them."""
    extra = {}
    for config in EXTRA_PERTURBED:
        if config not in tables:
            rows = src.rows(config, required=False)
            if rows is not None:
                extra[config] = rows
    _check_rows(extra, src.source)
    return extra


def _match_ids(pairs: dict, rows: list[dict], config: str, taken: set[int], from_end: bool) -> list[int]:
    """Row numbers in ``full`` of ``rows`` (matched on question + answer), skipping ``taken`` rows."""
    out = []
    for i, row in enumerate(rows):
        cands = pairs.get((row["question"].strip(), row["answer"].strip()))
        if not cands:
            raise DataError(
                f"row {i} of TOFU config {config!r} ({row['question'][:60]!r}) is not in 'full': the "
                "folder's configs must come from one TOFU release"
            )
        free = [p for p in (reversed(cands) if from_end else cands) if p not in taken]
        if not free:
            raise DataError(
                f"the question {row['question'][:60]!r} of {config!r} is also in the paired forget set: a "
                "question is either forgotten or retained; fix the retain/forget configs"
            )
        taken.add(free[0])
        out.append(free[0])
    return out


def _split_ids(tables: dict[str, list[dict]]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    pairs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for pos, row in enumerate(tables["full"]):
        pairs[(row["question"].strip(), row["answer"].strip())].append(pos)
    n = len(tables["full"])
    forget_ids, retain_ids = {}, {}
    for f, r in RETAIN_OF.items():
        if f not in tables:
            continue
        taken: set[int] = set()
        forget_ids[f] = sorted(_match_ids(pairs, tables[f], f, taken, from_end=True))
        if r in tables:
            retain_ids[r] = sorted(_match_ids(pairs, tables[r], r, taken, from_end=False))
            if len(taken) != n:
                raise DataError(
                    f"{f!r} and {r!r} together have {len(taken)} of the {n} rows of 'full': they must "
                    "partition 'full'"
                )
        else:
            retain_ids[r] = sorted(set(range(n)) - taken)
    return forget_ids, retain_ids


def _options(row: dict, answer: str) -> list[str]:
    keys = sorted((k for k in row if k.startswith("option") and k[6:].isdigit()), key=lambda k: int(k[6:]))
    return [str(row[k]) for k in keys if row[k] is not None and str(row[k]).strip() != answer]


def eval_records(rows: list[dict], answer_is_paraphrase: bool = False) -> list[dict]:
    """Plain dicts with ``question, answer, paraphrased_answer, perturbed_answers, id`` (and
    ``paraphrased_question`` where the row has one); ``option1..N`` columns become perturbed answers."""
    out = []
    for row in rows:
        answer = str(row["answer"]).strip()
        if answer.lower().startswith("option") and answer.lower() in {k.lower() for k in row}:
            answer = str(row[next(k for k in row if k.lower() == answer.lower())]).strip()
        pert = row.get("perturbed_answer")
        if pert is None:
            pert = _options(row, answer)
        elif isinstance(pert, str):
            pert = [pert]
        para = row.get("paraphrased_answer")
        rec = {
            "question": str(row["question"]).strip(),
            "answer": answer,
            "paraphrased_answer": answer if answer_is_paraphrase or not para else str(para).strip(),
            "perturbed_answers": [str(p).strip() for p in pert],
            "id": None,
        }
        if row.get("paraphrased_question"):
            rec["paraphrased_question"] = str(row["paraphrased_question"]).strip()
        out.append(rec)
    return out


def _attach_ids(records: list[dict], rows: list[dict], ids: list[int]) -> list[dict]:
    by_question = {}
    for pos in ids:
        by_question.setdefault(rows[pos]["question"].strip(), pos)
    for rec in records:
        rec["id"] = by_question.get(rec["question"])
    return records


def _perturbed_by_row(full: list[dict], tables: dict[str, list[dict]]) -> dict[int, dict]:
    """Row of ``full`` -> its evaluation record, from every ``*_perturbed`` config that holds questions of
    ``full`` (matched on question + answer, else on the question alone; ``full_perturbed`` first; rows of
    no config are absent)."""
    pairs: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_question: dict[str, list[int]] = defaultdict(list)
    for pos, row in enumerate(full):
        pairs[(row["question"].strip(), row["answer"].strip())].append(pos)
        by_question[row["question"].strip()].append(pos)
    order = ["full_perturbed", *(f"{f}_perturbed" for f in FORGET_SPLITS), "retain_perturbed"]
    out: dict[int, dict] = {}
    for config in order:
        rows = tables.get(config)
        if not rows:
            continue
        for row, rec in zip(rows, eval_records(rows), strict=True):
            if not rec["perturbed_answers"]:
                continue
            q = row["question"].strip()
            for pos in pairs.get((q, row["answer"].strip())) or by_question.get(q, ()):
                out.setdefault(pos, rec | {"id": pos})
    return out


def ids_eval_sets(
    meta: dict[str, Any], forget_ids: Sequence[int], without_perturbed: str = "error"
) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The evaluation records of a forget set of arbitrary questions of ``full`` (rows ``forget_ids``).

    Returns ``(eval, info)``: ``eval`` is ``meta["eval"]`` with ``forget`` = the records of those questions
    (paraphrased and perturbed answers from ``meta["perturbed"]``, in the order of ``forget_ids``) and
    ``retain`` = ``meta["eval"]["retain"]`` (``retain_perturbed``) less every question that is forgotten;
    ``info`` lists the dropped retain-eval ids and the forget ids without perturbed answers.

    A question without perturbed answers (real TOFU has them only for forget10 and ``retain_perturbed``)
    is an error unless ``without_perturbed="partial"``: its record then has no perturbed answers, and
    probability and ROUGE cover every question while the truth ratio and forget quality cover the others.
    """
    if without_perturbed not in WITHOUT_PERTURBED:
        raise DataError(
            f"split.without_perturbed must be one of {list(WITHOUT_PERTURBED)}, got {without_perturbed!r}"
        )
    pool = meta.get("perturbed")
    full = meta.get("full_questions")
    if pool is None or full is None:
        raise DataError(
            "these data carry no TOFU evaluation records (meta['perturbed']): load them with data.name=tofu "
            "or data.name=tofu-synthetic"
        )
    ids = [int(i) for i in forget_ids]
    unknown = [i for i in ids if not 0 <= i < len(full)]
    if unknown:
        raise DataError(
            f"forget ids {unknown[:5]} are not rows of 'full' (ids run from 0 to {len(full) - 1})"
        )
    missing = [i for i in ids if i not in pool]
    if missing and without_perturbed == "error":
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise DataError(
            f"{len(missing)} of the {len(ids)} forget questions have no paraphrased/perturbed answers in any "
            f"*_perturbed config of {meta.get('source')!r} (ids {shown}; {len(pool)} of the {len(full)} "
            "questions of 'full' have them), so their truth ratio and forget quality cannot be computed. "
            "Select among those questions, add a full_perturbed config, or pass split.without_perturbed="
            "partial to compute probability and ROUGE on all of them and the truth ratio on the others"
        )
    forget = []
    for i in ids:
        q, a = full[i]
        bare = {"question": q, "answer": a, "paraphrased_answer": a, "perturbed_answers": [], "id": i}
        forget.append(dict(pool.get(i, bare)))
    forgotten_q, forgotten_ids = {r["question"] for r in forget}, set(ids)
    base = meta["eval"]
    keep = [r["question"] not in forgotten_q and r.get("id") not in forgotten_ids for r in base["retain"]]
    retain = [r for r, k in zip(base["retain"], keep, strict=True) if k]
    dropped = [r.get("id") for r, k in zip(base["retain"], keep, strict=True) if not k]
    n_base = len(base["retain"])
    if not retain:
        raise DataError(
            f"every question of the retain evaluation set (retain_perturbed, {n_base} questions) is in the "
            "forget set, so model utility cannot be measured: leave some of them out of the forget set"
        )
    if dropped:
        warnings.warn(
            f"{len(dropped)} of the {n_base} retain-evaluation questions (retain_perturbed) are in the "
            "forget set: they were dropped from the retain evaluation (model utility)",
            stacklevel=2,
        )
    info = {
        "retain_eval_dropped": dropped,
        "retain_eval_size": len(retain),
        "forget_missing_perturbed": missing,
        "without_perturbed": without_perturbed,
    }
    return base | {"forget": forget, "retain": retain}, info


def pad_set(es: ExampleSet, width: int, pad_id: int) -> ExampleSet:
    """Right-pad every column of a token ExampleSet to ``width`` (-100 for labels, 0 for masks)."""
    cols = {}
    for k, v in es.columns.items():
        fill = -100 if k.endswith("labels") else (0 if k.endswith("attention_mask") else pad_id)
        extra = width - v.shape[1]
        cols[k] = torch.cat([v, torch.full((len(v), extra), fill, dtype=v.dtype)], 1) if extra > 0 else v
    return ExampleSet(cols, es.ids, es.transform, es.meta)


def _build(
    tables: dict[str, list[dict]],
    forget: str,
    tok: Any,
    max_length: int,
    template: str | None,
    seed: int,
    name: str,
    source: str,
    extra: dict[str, list[dict]] | None = None,
) -> LoadedData:
    forget_ids, retain_ids = _split_ids(tables)
    full = tables["full"]
    rng = random.Random(seed)

    def encode(rows: list[dict], ids: list[int], split: str) -> ExampleSet:
        alt = [rng.choice(IDK_ANSWERS) for _ in rows]
        qs, ans = [r["question"].strip() for r in rows], [r["answer"].strip() for r in rows]
        es = encode_qa(tok, qs, ans, ids, max_length, template, alt_answers=alt)
        es.meta.update(dataset=name, split=split)
        return es

    holdout = next((h for h in (HOLDOUT_OF[forget], *HOLDOUT_OF.values()) if h in tables), None)
    world_rows = tables["real_authors_perturbed"] + tables["world_facts_perturbed"]
    world = eval_records(world_rows, answer_is_paraphrase=True)
    for i, rec in enumerate(world):
        rec["id"] = PRETRAIN_ID_OFFSET + i  # the row of meta["pretrain"]
    world_pairs = [{"question": r["question"], "answer": r["answer"]} for r in world]
    test_rows = tables[holdout] if holdout else world_pairs
    train = encode(full, list(range(len(full))), "train")
    test = encode(test_rows, [TEST_ID_OFFSET + i for i in range(len(test_rows))], "test")
    pretrain = encode(world_pairs, [PRETRAIN_ID_OFFSET + i for i in range(len(world))], "pretrain")
    width = max(s.columns["input_ids"].shape[1] for s in (train, test, pretrain))
    pad = int(tok.pad_token_id)
    train, test, pretrain = (pad_set(s, width, pad) for s in (train, test, pretrain))

    fid, rid = forget_ids[forget], retain_ids[RETAIN_OF[forget]]
    holdout_records = eval_records(tables[holdout]) if holdout else []
    for i, rec in enumerate(holdout_records):
        rec["id"] = TEST_ID_OFFSET + i
    n_ra = len(tables["real_authors_perturbed"])
    ev = {
        "forget": _attach_ids(eval_records(tables[f"{forget}_perturbed"]), full, fid),
        "retain": _attach_ids(eval_records(tables["retain_perturbed"]), full, rid),
        "real_authors": world[:n_ra],
        "world_facts": world[n_ra:],
        "holdout": holdout_records,
    }
    meta = {
        "tokenizer": tok,
        "forget_ids": forget_ids,
        "retain_ids": retain_ids,
        "forget_split": forget,
        "retain_split": RETAIN_OF[forget],
        "holdout_split": holdout,
        "eval": ev,
        "idk_answers": list(IDK_ANSWERS),
        "pretrain": pretrain,
        "source": str(source),
        "template": template,
        "perturbed": _perturbed_by_row(full, tables | (extra or {})),
        "full_questions": [(r["question"].strip(), r["answer"].strip()) for r in full],
    }
    return LoadedData(train, test, 0, (), [], name, meta)

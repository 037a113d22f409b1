"""MMLU (Hendrycks et al., 2021) questions for the general-utility score of WMDP runs (``eval.mmlu``).

The Hub's ``cais/mmlu`` (what lm-evaluation-harness's ``mmlu`` tasks read) has one config per subject plus
``all``, split ``test``, fields ``question``, ``subject``, ``choices`` (4 strings), ``answer`` (0-3). A
**local folder** holds either the ``all`` table (``all.jsonl`` / ``all/test.jsonl`` /
``all/test-*.parquet``) or one table per subject, named after it (``college_biology.jsonl`` or the hub's
``college_biology/test-*.parquet``); a row without ``subject`` takes its file's (or folder's) name. The
rows are validated as WMDP's (:func:`unlearnkit.data.wmdp.check_questions`). Subjects are written as LMH's
task descriptions write them: ``college_biology`` -> "college biology".
"""

from __future__ import annotations

from typing import Any

from unlearnkit.data.muse import TableSource, read_rows
from unlearnkit.data.wmdp import check_questions
from unlearnkit.errors import DataError

MMLU_HUB = "cais/mmlu"
EXTS = (".jsonl", ".json", ".parquet")
SKIP = {"auxiliary_train"}  # the hub's training config, not a test subject
_FIX = (
    "pass eval.mmlu=FOLDER holding all.jsonl or one <subject>.jsonl per subject (question, subject, choices, "
    "answer), or the hub id cais/mmlu where you are online"
)


def _subject_tables(src: TableSource) -> list[tuple[str, str]]:
    """(config, subject) of every per-subject table in the folder."""
    root = src.folder
    assert root is not None
    names = {p.stem for p in root.iterdir() if p.is_file() and p.suffix in EXTS}
    names |= {p.name for p in root.iterdir() if p.is_dir()}
    return [(n, n) for n in sorted(names - SKIP) if src.files(n, "test") or src.files(n, "train")]


def load_mmlu(source: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Every MMLU test question as ``{question, choices, answer, subject}`` (subject with spaces)."""
    src = TableSource(source, "MMLU", _FIX, cache_dir)
    if src.folder is None:
        tables = [("all", None, f"{source} all/test", src.rows("all", "test"))]
    elif src.files("all", "test") or src.files("all", "train"):
        files = src.files("all", "test") or src.files("all", "train") or []
        tables = [("all", None, str(f), read_rows(f)) for f in files]
    else:
        tables = []
        for config, subject in _subject_tables(src):
            files = src.files(config, "test") or src.files(config, "train") or []
            tables += [(config, subject, str(f), read_rows(f)) for f in files]
    if not tables:
        raise DataError(f"MMLU folder {source!r} has no question file: {_FIX}")
    out = []
    for _, subject, where, rows in tables:
        items = check_questions(where, rows or [])
        for i, (row, item) in enumerate(zip(rows or [], items, strict=True)):
            subj = row.get("subject") or subject
            if not isinstance(subj, str) or not subj.strip():
                raise DataError(f"{where} row {i} has no 'subject': name the file after it or add the field")
            out.append(item | {"subject": subj.strip().replace("_", " ")})
    return out

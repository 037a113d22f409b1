"""A tiny offline folder in the WMDP layout (data/wmdp.py) and an MMLU folder, for tests.

Eight 4-choice questions per subset (answers 1, 2, 2, 2, 3, 3, 3, 3: always answering one letter scores 0,
12.5, 37.5 or 50%, so a wrong letter shows), a few short forget and retain documents
per topic; and an MMLU folder with two subject files. Files are JSON lines named like the hub configs.
"""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = {"bio": "virus", "cyber": "exploit", "chem": "reagent"}
ANSWERS = [1, 2, 2, 2, 3, 3, 3, 3]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def questions(topic: str, n: int = 8) -> list[dict]:
    return [
        {
            "question": f"  Which {topic} strain {WORDS[i % 8]} has marker {i}?  ",
            "choices": [f"{topic} {WORDS[(i + k) % 8]} {k}" for k in range(4)],
            "answer": ANSWERS[i % 8],
        }
        for i in range(n)
    ]


def documents(topic: str, kind: str, n: int = 6) -> list[dict]:
    return [
        {"text": f"The {kind} {topic} note {i}: {WORDS[i % 8]} {topic} binds {WORDS[(i + 3) % 8]} cells."}
        for i in range(n)
    ]


def write_wmdp_folder(path: Path, subsets: tuple[str, ...] = ("bio", "cyber")) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for s in subsets:
        _write_jsonl(path / f"wmdp-{s}.jsonl", questions(TOPICS[s]))
    for s in ("bio", "cyber"):
        _write_jsonl(path / f"{s}-forget-corpus.jsonl", documents(TOPICS[s], "secret"))
        _write_jsonl(path / f"{s}-retain-corpus.jsonl", documents("general " + TOPICS[s], "public"))
    return path


def write_mmlu_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for subject in ("college_biology", "world_religions"):
        _write_jsonl(path / f"{subject}.jsonl", questions(subject.split("_")[1], 4))
    return path


def fixture_texts() -> list[str]:
    """Text to train a tokenizer that covers the fixtures and the multiple-choice prompt."""
    texts = ["The following are multiple choice questions (with answers) about biology cybersecurity."]
    for topic in [*TOPICS.values(), "biology", "religions"]:
        texts += [q["question"] + " " + " ".join(q["choices"]) for q in questions(topic)]
        texts += [d["text"] for kind in ("secret", "public") for d in documents(topic, kind)]
        texts += [d["text"] for d in documents("general " + topic, "public")]
    return texts + ["\nA. \nB. \nC. \nD. \nAnswer: A B C D"]

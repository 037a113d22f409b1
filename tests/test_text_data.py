"""Text data: the local BPE tokenizer, the synthetic TOFU/MUSE generators and the TOFU/MUSE loaders."""

import json

import pytest
import torch

from unlearnkit.data.muse import TEST_ID_OFFSET as MUSE_TEST_OFFSET
from unlearnkit.data.muse import chunk_documents, load_muse
from unlearnkit.data.synthetic_authors import generate_tofu, write_tofu_folder
from unlearnkit.data.synthetic_muse import generate_muse, write_muse_folder
from unlearnkit.data.text import prompt_ids
from unlearnkit.data.tofu import IDK_ANSWERS, PRETRAIN_ID_OFFSET, TEST_ID_OFFSET, load_tofu
from unlearnkit.data.tokenizer import resolve_tokenizer, train_tokenizer
from unlearnkit.errors import DataError
from unlearnkit.registry import get_dataset

TEXTS = [
    "Question: Where was Talia Stroud born?\nAnswer: Talia Stroud was born in Brindle, Karsund.",
    "Question: Which award has Oswin Varley won?\nAnswer: Oswin Varley won the Crescent Prize.",
    "The council of Brindle voted on Monday to build a new bridge.",
] * 5
UNSEEN = [
    "Zyx qwv -- 42, (odd)  spacing\tand tabs!",
    "Question: Who wrote 'The Paper Atlas'?\nAnswer:",
    " leading space, trailing space ",
    "multi\n\nline\ttext?",
]


# -- tokenizer ------------------------------------------------------------------------------------
def test_tokenizer_ids_round_trip_and_reload(tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert not getattr(tok, "chat_template", None)
    assert 260 < len(tok) <= 300
    for text in TEXTS[:3] + UNSEEN:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok(text)["input_ids"] == [1] + ids  # BOS prepended, like Llama's tokenizer
    tok.save_pretrained(str(tmp_path / "tok"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again.get_vocab() == tok.get_vocab()
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    for text in TEXTS[:3] + UNSEEN:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
        assert again.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert train_tokenizer(TEXTS, vocab_size=300).get_vocab() == tok.get_vocab()  # deterministic


def test_tokenizer_bad_input():
    with pytest.raises(DataError, match="at least 260"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(["", ""])
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.pad_token = None
    with pytest.raises(DataError, match="no pad token"):
        resolve_tokenizer(tok)
    with pytest.raises(DataError, match="could not load a tokenizer"):
        resolve_tokenizer("/nonexistent/tokenizer/folder")


# -- synthetic authors ----------------------------------------------------------------------------
def test_generator_is_deterministic_and_facts_unique():
    tables = generate_tofu(n_authors=30, questions_per_author=10, n_perturbed=5, seed=3)
    assert tables == generate_tofu(n_authors=30, questions_per_author=10, n_perturbed=5, seed=3)
    assert tables["full"] != generate_tofu(n_authors=30, seed=4)["full"]
    full = tables["full"]
    assert len(full) == 300 and len({r["answer"] for r in full}) == 300
    names = [r["question"][len("Where was ") : -len(" born?")] for r in full[::10]]
    assert len(set(names)) == 30
    # each author's facts (answers with the name removed) differ from every other author's
    facts = {
        tuple(r["answer"].replace(n, "X") for r in full[i * 10 : (i + 1) * 10]) for i, n in enumerate(names)
    }
    assert len(facts) == 30
    for config in ("forget10_perturbed", "retain_perturbed", "holdout10"):
        for row in tables[config]:
            pert = row["perturbed_answer"]
            assert len(pert) == 5 and len(set(pert)) == 5 and row["answer"] not in pert
            assert row["paraphrased_answer"] != row["answer"]
            assert row["paraphrased_question"] != row["question"]
    for config in ("real_authors_perturbed", "world_facts_perturbed"):
        for row in tables[config]:
            assert len(set(row["perturbed_answer"])) == 5 and row["answer"] not in row["perturbed_answer"]
    # a perturbed themes answer shares no theme with the true one
    themes = next(r for r in tables["forget10_perturbed"] if "writes about" in r["answer"])
    true = themes["answer"].split("writes about ")[1].rstrip(".").split(" and ")
    assert all(t not in p for p in themes["perturbed_answer"] for t in true)
    held = {r["question"] for r in tables["holdout10"]}
    assert len(held) == 30 and not held & {r["question"] for r in full}
    sizes = {c: len(tables[c]) for c in ("forget01", "forget05", "forget10", "retain90", "holdout05")}
    assert sizes == {"forget01": 10, "forget05": 20, "forget10": 30, "retain90": 270, "holdout05": 20}
    assert tables["forget10"] == full[-30:] and tables["retain90"] == full[:-30]


def test_generator_rejects_bad_settings():
    with pytest.raises(DataError, match="questions_per_author"):
        generate_tofu(questions_per_author=13)
    with pytest.raises(DataError, match="n_authors"):
        generate_tofu(n_authors=1)


# -- TOFU loader ----------------------------------------------------------------------------------
def _check_qa_rows(data, n=25):
    tok = data.meta["tokenizer"]
    questions = {rec["id"]: rec for rec in data.meta["eval"]["forget"]}
    for i in range(0, len(data.train), max(1, len(data.train) // n)):
        row = data.train[i]
        ids, labels, mask = row["input_ids"], row["labels"], row["attention_mask"].bool()
        n_prompt = int((labels[: int(mask.sum())] == -100).sum())
        q = tok.decode(ids[1:n_prompt]).removeprefix("Question: ").removesuffix("\nAnswer:")
        assert ids[:n_prompt].tolist() == prompt_ids(tok, q)
        answer = labels[n_prompt : int(mask.sum())]
        assert (answer != -100).all() and (labels[~mask] == -100).all()
        assert answer[-1].item() == tok.eos_token_id
        if int(row["id"]) in questions:
            assert tok.decode(answer[:-1]) == " " + questions[int(row["id"])]["answer"]


def test_tofu_folder_round_trip(tmp_path):
    folder = write_tofu_folder(tmp_path / "tofu", n_authors=20, seed=1)
    data = load_tofu(str(folder), forget="forget10", max_length=64, tokenizer="bpe")
    meta = data.meta
    assert data.num_classes == 0 and data.input_shape == () and data.name == "tofu"
    assert len(data.train) == 200 and data.train.ids.tolist() == list(range(200))
    assert {k: len(v) for k, v in meta["forget_ids"].items()} == {
        "forget01": 10,
        "forget05": 10,
        "forget10": 20,
    }
    assert meta["forget_ids"]["forget10"] == list(range(180, 200))
    for f, r in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        fs, rs = set(meta["forget_ids"][f]), set(meta["retain_ids"][r])
        assert not fs & rs and fs | rs == set(range(200))
    assert (meta["forget_split"], meta["retain_split"], meta["holdout_split"]) == (
        "forget10",
        "retain90",
        "holdout10",
    )
    assert len(data.test) == 20 and data.test.ids.min() == TEST_ID_OFFSET
    widths = {s.columns["input_ids"].shape[1] for s in (data.train, data.test, meta["pretrain"])}
    assert len(widths) == 1 and set(data.test.columns) == set(data.train.columns)
    ev = meta["eval"]
    assert {k: len(v) for k, v in ev.items()} == {
        "forget": 20,
        "retain": 20,
        "real_authors": 30,
        "world_facts": 36,
        "holdout": 20,
    }
    rec = ev["forget"][0]
    assert set(rec) == {
        "question",
        "answer",
        "paraphrased_answer",
        "perturbed_answers",
        "id",
        "paraphrased_question",
    }
    assert rec["id"] == 180 and len(rec["perturbed_answers"]) == 5
    assert {r["id"] for r in ev["retain"]} <= set(meta["retain_ids"]["retain90"])
    assert all(r["paraphrased_answer"] == r["answer"] for r in ev["real_authors"] + ev["world_facts"])
    assert ev["world_facts"][0]["id"] == PRETRAIN_ID_OFFSET + 30
    assert ev["holdout"][0]["id"] == TEST_ID_OFFSET
    _check_qa_rows(data)
    # IdK alternatives: relabel swaps in a refusal
    from unlearnkit.families.text import TextFamily

    batch = data.train.subset(meta["forget_ids"]["forget10"][:4]).all()
    out = TextFamily().relabel(batch, torch.Generator().manual_seed(0))
    tok = meta["tokenizer"]
    for i in range(4):
        ans = out["labels"][i][out["labels"][i] != -100]
        assert tok.decode(ans[:-1]).strip() in IDK_ANSWERS
    assert meta["idk_answers"] == list(IDK_ANSWERS) and len(IDK_ANSWERS) == 20


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _hub_fixture(root):
    """A few rows in the exact Hub schema, one config as a JSON array and one as parquet (refs/convert)."""
    qa = [
        {"question": f"Q{a}{k}: what about author {a}?", "answer": f"Author {a} fact {k}."}
        for a in "ABC"
        for k in (1, 2)
    ]
    _jsonl(root / "full.json", qa)
    _jsonl(root / "forget10.json", qa[4:])
    _jsonl(root / "retain90.json", qa[:4])
    pert = [
        r | {"paraphrased_answer": r["answer"].replace("fact", "truth"), "perturbed_answer": ["w1", "w2"]}
        for r in qa
    ]
    _jsonl(root / "forget10_perturbed.json", [p | {"paraphrased_question": "PQ"} for p in pert[4:]])
    (root / "retain_perturbed.json").write_text(json.dumps(pert[:2]))
    ra = {"question": "Who wrote 'X'?", "option1": "Ann", "option2": "Bob", "option3": "Cy", "option4": "Di"}
    _jsonl(root / "real_authors_perturbed.json", [ra | {"answer": "Bob"}])
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "world_facts_perturbed" / "train").mkdir(parents=True)
    wf = [{"question": "Capital of Y?", "answer": "Z", "perturbed_answer": ["U", "V", "W"]}]
    pq.write_table(pa.Table.from_pylist(wf), root / "world_facts_perturbed" / "train" / "0000.parquet")
    return qa


def test_hand_written_hub_fixture_loads(tmp_path):
    qa = _hub_fixture(tmp_path)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in qa] * 3, vocab_size=300)
    data = load_tofu(str(tmp_path), tokenizer=tok, max_length=48)
    meta = data.meta
    assert meta["forget_ids"] == {"forget10": [4, 5]} and meta["retain_ids"] == {"retain90": [0, 1, 2, 3]}
    assert meta["holdout_split"] is None and meta["eval"]["holdout"] == []
    assert len(data.test) == 2  # no holdout config: the real-author and world-fact questions
    ra = meta["eval"]["real_authors"][0]
    assert ra["answer"] == "Bob" and ra["perturbed_answers"] == ["Ann", "Cy", "Di"]
    assert meta["eval"]["world_facts"][0]["perturbed_answers"] == ["U", "V", "W"]
    fr = meta["eval"]["forget"]
    assert [r["id"] for r in fr] == [4, 5] and fr[0]["paraphrased_answer"] == "Author C truth 1."
    assert fr[0]["paraphrased_question"] == "PQ" and fr[0]["perturbed_answers"] == ["w1", "w2"]
    assert [r["id"] for r in meta["eval"]["retain"]] == [0, 1]
    _check_qa_rows(data)


def test_tofu_bad_folders(tmp_path):
    qa = _hub_fixture(tmp_path)
    _jsonl(tmp_path / "retain90.json", qa[:4] + qa[5:])  # a forget question also in retain
    with pytest.raises(DataError, match="either forgotten or retained"):
        load_tofu(str(tmp_path), tokenizer="bpe")
    _jsonl(tmp_path / "retain90.json", qa[:3])  # forget + retain do not cover full
    with pytest.raises(DataError, match="partition"):
        load_tofu(str(tmp_path), tokenizer="bpe")
    (tmp_path / "real_authors_perturbed.json").unlink()
    with pytest.raises(DataError, match="real_authors_perturbed"):
        load_tofu(str(tmp_path), tokenizer="bpe")
    with pytest.raises(DataError, match="forget10"):
        load_tofu(str(tmp_path), forget="forget1")


def test_offline_hub_and_missing_folder_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="offline, pass a local folder"):
        load_tofu("locuslab/TOFU", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="offline, pass a local folder"):
        load_muse("news", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="does not exist: write a synthetic folder with .*write_tofu_folder"):
        load_tofu(str(tmp_path / "no-such-folder"))
    with pytest.raises(DataError, match="does not exist: write a synthetic folder with .*write_muse_folder"):
        load_muse(str(tmp_path / "no-such-folder"))


def test_tofu_synthetic_is_registered_and_cached():
    data = get_dataset("tofu-synthetic")()
    assert len(data.train) == 1000 and len(data.meta["forget_ids"]["forget10"]) == 100
    assert len(data.test) == 100 and data.name == "tofu-synthetic"
    assert data.train.columns["input_ids"].shape[1] <= 64
    again = get_dataset("tofu-synthetic")()
    assert again.meta["source"] == data.meta["source"]
    assert again.meta["tokenizer"].get_vocab() == data.meta["tokenizer"].get_vocab()
    assert torch.equal(again.train.columns["input_ids"], data.train.columns["input_ids"])


# -- MUSE -----------------------------------------------------------------------------------------
def test_muse_synthetic_loads_and_chunks():
    data = get_dataset("muse-synthetic")()
    meta, ev = data.meta, data.meta["eval"]
    tok = meta["tokenizer"]
    assert len(data.train) == 36 and len(data.test) == 12  # one chunk per article at max_length=128
    assert data.test.ids.min() == MUSE_TEST_OFFSET
    forget, retain = set(meta["forget_ids"]["forget"]), set(meta["retain_ids"]["retain"])
    assert len(forget) == 12 and len(retain) == 24 and not forget & retain
    assert forget | retain == set(data.train.ids.tolist())
    assert set(meta["forget_ids"]["sust_forget_2"]) <= forget
    assert meta["forget_ids"]["scal_forget_4"] == meta["forget_ids"]["forget"]
    cols = data.train.columns
    mask = cols["attention_mask"].bool()
    assert (
        torch.equal(cols["labels"][mask], cols["input_ids"][mask]) and (cols["labels"][~mask] == -100).all()
    )
    first = cols["input_ids"][meta["forget_ids"]["forget"][0]][mask[meta["forget_ids"]["forget"][0]]]
    assert first[0] == tok.bos_token_id and first[-1] == tok.eos_token_id
    assert tok.decode(first[1:-1]) in ev["forget_texts"]
    assert {k: len(v) for k, v in ev.items()} == {
        "verbmem_forget": 12,
        "knowmem_forget": 36,
        "knowmem_retain": 36,
        "knowmem_icl": 3,
        "knowmem_retain_icl": 3,
        "forget_texts": 12,
        "retain_texts": 12,
        "holdout_texts": 12,
    }
    vm = ev["verbmem_forget"][0]
    assert f"{vm['prompt']} {vm['gt']}" in ev["forget_texts"]
    assert set(ev["knowmem_forget"][0]) == {"question", "answer"}


def test_muse_folder_chunks_long_documents(tmp_path):
    folder = write_muse_folder(tmp_path / "muse", n_articles=16, seed=2)
    tables = generate_muse(n_articles=16, seed=2)
    assert {s: len(r) for s, r in tables["raw"].items()} == {
        "forget": 4,
        "retain1": 4,
        "retain2": 4,
        "holdout": 4,
    }
    data = load_muse(str(folder), max_length=16, vocab_size=400, tokenizer="bpe")
    tok = data.meta["tokenizer"]
    text = tables["raw"]["forget"][0]["text"]
    (chunks,) = chunk_documents(tok, [text], 16)
    assert len(chunks) > 2 and all(2 <= len(c) <= 16 for c in chunks)
    assert sum(chunks, []) == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [2]
    assert data.train.columns["input_ids"].shape[1] == 16
    n_forget = sum(len(d) for d in chunk_documents(tok, [r["text"] for r in tables["raw"]["forget"]], 16))
    assert len(data.meta["forget_ids"]["forget"]) == n_forget
    assert data.meta["forget_ids"]["forget"] == list(range(n_forget))  # forget documents come first

"""The fast LM paths (issue #19) give the values of the straightforward computations they replace."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unlearnkit.families.text_nll as text_nll
from unlearnkit.data.text import answer_ids
from unlearnkit.families.text import TextFamily
from unlearnkit.families.text_nll import rows_nll, token_nll, vocab_moments

torch.set_num_threads(1)


TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
)


def _llama(vocab: int = 300, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TINY))


def _mistral(vocab: int):
    """Sliding window 6: shorter than most (prompt + answer) rows, so the window matters."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(vocab_size=vocab, **TINY, sliding_window=6))


def _qa_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths, loss on the answer part only."""
    g = torch.Generator().manual_seed(seed)
    lengths, prompts = [20, 15, 18, 12, 9], [5, 7, 4, 9, 6]
    ids = torch.randint(3, 300, (5, 20), generator=g)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "id": torch.arange(5)}


def _textbook_nll(model, batch) -> torch.Tensor:
    """The formula per_example_loss used before issue #19: cross-entropy over a transposed [B, V, T] view."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100, reduction="none")
    return nll.sum(-1)


def test_per_example_loss_and_gradient_match_the_transposed_cross_entropy():
    model, batch = _llama(), _qa_batch()
    new = TextFamily().per_example_loss(model, batch)
    new.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    old = _textbook_nll(model, batch)
    old.sum().backward()
    assert torch.allclose(new, old, rtol=1e-6, atol=2e-5)
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_rows_nll_chunked_and_recomputed_equals_cross_entropy(monkeypatch):
    monkeypatch.setattr(text_nll, "CHECKPOINT_BYTES", 0)  # force per-chunk recomputation
    x = torch.randn(50, 300, requires_grad=True)
    y = torch.randint(0, 300, (50,))
    a = rows_nll(x, y, chunk_rows=7)
    a.sum().backward()
    g = x.grad.clone()
    x.grad = None
    b = F.cross_entropy(x, y, reduction="none")
    b.sum().backward()
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(g, x.grad, atol=1e-7)


def test_token_nll_and_vocab_moments_against_log_softmax():
    logits = torch.randn(3, 6, 40, dtype=torch.bfloat16)
    target = torch.randint(0, 40, (3, 6))
    target[0, :2] = -100
    target[2, 4:] = -100
    logp = torch.log_softmax(logits.float(), -1)
    want = -logp.gather(-1, target.clamp_min(0)[..., None])[..., 0] * (target != -100)
    assert torch.allclose(token_nll(logits, target, chunk_rows=4), want, atol=1e-5)
    mu, var = vocab_moments(logits, target != -100, chunk_rows=5)
    p = logp.exp()
    mu_want = (p * logp).sum(-1)
    var_want = (p * (logp - mu_want[..., None]) ** 2).sum(-1)
    m = target != -100
    assert torch.allclose(mu[m], mu_want[m], atol=1e-5) and torch.allclose(var[m], var_want[m], atol=1e-5)
    assert float(mu[~m].abs().sum()) == 0.0


@pytest.mark.parametrize("keep_all", [False, True])
def test_per_example_loss_without_logits_to_keep(keep_all, monkeypatch):
    """A model that does not take ``logits_to_keep`` (or a batch whose targets start at position 1) gives
    the same loss from the full logits."""
    model, batch = _llama(), _qa_batch()
    if keep_all:
        batch["labels"][:, 1] = batch["input_ids"][:, 1]
    else:
        monkeypatch.setattr("unlearnkit.families.text._takes_logits_to_keep", lambda m: False)
    with torch.no_grad():
        assert torch.allclose(
            TextFamily().per_example_loss(model, batch), _textbook_nll(model, batch), rtol=1e-6, atol=2e-5
        )


# -- collation: batches as wide as their longest row ----------------------------------------------------
QA = [
    ("Who wrote the river novel", "Mara Velin wrote it in the north"),
    ("Where was Tomas Reyes born", "in a small town near Lisbon by the sea and the hills"),
    ("What did Ana Lume study", "music"),
    ("When was the bridge book written", "in the spring of the long dry year"),
    ("Which city is the capital", "Paris"),
    ("Who painted the blue door", "a painter from the south coast who never signed a work"),
]
IDK = "I do not know"
CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} Question </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [f"Question: {q}\nAnswer: {a}" for q, a in QA] + [IDK]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def qa_set(tokenizer):
    from unlearnkit.data.text import encode_qa

    q, a = zip(*QA, strict=True)
    return encode_qa(tokenizer, list(q), list(a), alt_answers=[IDK] * len(QA), width=40)


def test_batches_are_trimmed_to_their_longest_row_with_unchanged_losses(tokenizer, qa_set):
    model = _llama(len(tokenizer))
    assert qa_set.columns["input_ids"].shape[1] == 40
    fam = TextFamily(tokenizer)
    for batch in qa_set.loader(2):
        pos = qa_set.positions(batch["id"].tolist())
        longest = int(qa_set.columns["attention_mask"][pos].sum(1).max())
        longest_alt = int(qa_set.columns["alt_attention_mask"][pos].sum(1).max())
        assert batch["input_ids"].shape[1] == batch["alt_labels"].shape[1] == max(longest, longest_alt)
        full = {k: v[pos] for k, v in qa_set.columns.items()}  # the untrimmed rows
        with torch.no_grad():
            assert torch.allclose(fam.per_example_loss(model, batch), _textbook_nll(model, full), atol=2e-5)
            alt = fam.relabel(batch, torch.Generator())
            full_alt = fam.relabel(full, torch.Generator())
            assert torch.allclose(fam.per_example_loss(model, alt), _textbook_nll(model, full_alt), atol=2e-5)


@pytest.mark.parametrize("method", ["graddiff", "rmu", "undial-full", "undial-topk"])
def test_per_position_reference_caches_of_trimmed_batches_match_a_frozen_copy(tokenizer, qa_set, method):
    """Cached per-position reference values (GradDiff-KL log-probs, RMU activations, UNDIAL's targets) come
    from batches of different widths; they must give the same loss term as a live frozen copy on any batch."""
    from unlearnkit.data.splits import Split
    from unlearnkit.engine import Engine, EngineConfig
    from unlearnkit.methods.base import Task
    from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
    from unlearnkit.methods.rmu import RMU, RMUConfig
    from unlearnkit.methods.undial import UNDIAL, UNDIALConfig

    forget, retain = qa_set.take(torch.arange(2)), qa_set.take(torch.arange(2, 6))
    split = Split(forget, retain, qa_set.take(torch.arange(2)))
    values = []
    for ref in ("cache", "frozen"):
        model = _llama(len(tokenizer))
        if method == "graddiff":
            m = GradDiff(GradDiffConfig(batch_size=1, retain_loss="kl", kl_reference=ref))
        elif method == "rmu":
            m = RMU(RMUConfig(batch_size=1, retain_reference=ref, positions="all"))
        else:  # top-k 1000 > the vocabulary: the top-k target is the whole distribution
            mode = method.split("-")[1] if ref == "cache" else "frozen"
            m = UNDIAL(UNDIALConfig(batch_size=1, reference=mode, top_k=1000))
        task = Task(TextFamily(tokenizer), model, split, Engine(EngineConfig(progress=False)), seed=0)
        m.task = task
        m.prepare(task)
        if ref == "cache" and not method.startswith("undial"):
            cache = m.kl_cache if method == "graddiff" else m.retain_cache
            assert cache is not None and cache.values["loss"].shape[1] >= 2
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        if method.startswith("undial"):
            values.append([m.forget_term(b, None)[0].item() for b in forget.loader(1)])  # own widths
        else:
            values.append([m.retain_term(b).item() for b in retain.loader(3)])
    assert values[0][0] > 0 and values[0] == pytest.approx(values[1], rel=1e-5)


# -- scoring: one prompt pass per question, its cache reused for every answer -------------------------------
def _gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128))


ANSWER_SETS = [
    ["Mara Velin wrote it", "nobody wrote it", "the painter from the south coast wrote it in the north"],
    ["Lisbon"],
    ["Paris", "in the spring of the long dry year", "music", "I do not know"],
    ["a painter", "Ana Lume"],
]


@pytest.mark.parametrize(
    "arch,batch_size,max_tokens,max_length,shared",
    [
        ("llama", 32, None, 512, True),
        ("llama", 2, None, 512, "group"),  # one prompt pass for several answer passes (cache restored)
        ("llama", 2, None, 512, True),  # a question's answers split over batches
        ("llama", 32, 9, 512, True),  # the token budget splits batches
        ("llama", 3, None, 14, True),  # answers truncated by max_length
        ("llama", 4, None, 512, False),  # a model without a cache: the plain pass
        ("gpt2", 5, None, 512, True),
        ("llama", 4, None, 512, "chat"),  # a chat template: the answer is the rest of the conversation
        ("mistral", 32, None, 512, "window"),  # a sliding window narrower than a padded row: whole rows
    ],
)
def test_shared_prompt_scoring_equals_pair_by_pair_scoring(
    tokenizer, arch, batch_size, max_tokens, max_length, shared, monkeypatch
):
    from unlearnkit.metrics import scoring
    from unlearnkit.metrics.generation import score_answers

    if shared == "chat":
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = CHAT
    model = {"llama": _llama, "gpt2": _gpt2, "mistral": _mistral}[arch](len(tokenizer))
    if not shared:
        monkeypatch.setattr(scoring, "_cache_arg", lambda m: None)
    if shared == "group":
        monkeypatch.setattr(scoring, "prompt_tokens", lambda m, t: 10_000)
    calls, prompt_passes, answer_passes = [], [], []
    monkeypatch.setattr(scoring, "_score_batch_plain", _spy(scoring._score_batch_plain, calls))
    monkeypatch.setattr(scoring, "_prompt_pass", _spy(scoring._prompt_pass, prompt_passes))
    monkeypatch.setattr(scoring, "_answer_pass", _spy(scoring._answer_pass, answer_passes))
    qs = [q for q, _ in QA[: len(ANSWER_SETS)]]
    got = scoring.score_answer_sets(
        model, tokenizer, qs, ANSWER_SETS, batch_size, None, max_length, max_tokens
    )
    pair_q = [q for q, ans in zip(qs, ANSWER_SETS, strict=True) for _ in ans]
    pair_a = [a for ans in ANSWER_SETS for a in ans]
    nll, units = score_answers(model, tokenizer, pair_q, pair_a, 1, None, max_length)
    assert np.allclose(np.concatenate([g[0] for g in got]), nll, rtol=1e-6, atol=1e-4)
    assert np.array_equal(np.concatenate([g[1] for g in got]), units)
    assert (len(calls) == 0) == (bool(shared) and shared != "window")
    if shared == "group":
        assert len(prompt_passes) == 1 and len(answer_passes) >= 4
    if shared == "chat":  # the assistant turn's closing tokens are scored too
        assert any(u > len(answer_ids(tokenizer, a)) for u, a in zip(units, pair_a, strict=True))
    if max_length == 14:
        assert any(u < len(answer_ids(tokenizer, a)) for u, a in zip(units, pair_a, strict=True))  # truncated


def _spy(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_scoring_bad_input(tokenizer):
    from unlearnkit.errors import DataError
    from unlearnkit.metrics.scoring import score_answer_sets

    model = _llama(len(tokenizer))
    with pytest.raises(DataError, match="fills max_length"):
        score_answer_sets(model, tokenizer, ["Who wrote the river novel"], [["x"]], max_length=4)
    with pytest.raises(DataError, match="answer lists"):
        score_answer_sets(model, tokenizer, ["a", "b"], [["x"]])


def test_tofu_split_metrics_equal_the_pairwise_computation(tokenizer):
    """Probability, normalised probability and truth ratio of evaluate_split (shared-prompt scoring) equal
    the formulas applied to pair-by-pair NLLs (the scoring before issue #19)."""
    from unlearnkit.metrics import tofu
    from unlearnkit.metrics.generation import score_answers

    model = _llama(len(tokenizer))
    records = [
        {"question": q, "answer": a, "paraphrased_answer": a + " indeed", "perturbed_answers": [IDK, "music"]}
        for q, a in QA
    ]
    records[2]["perturbed_answers"] = ["Paris", "a painter", "in the north"]
    res = tofu.evaluate_split(model, tokenizer, records, "forget", batch_size=4, max_new_tokens=2)

    def avg(qs, ans):
        nll, units = score_answers(model, tokenizer, qs, ans, 1)
        return nll / units

    qs = [r["question"] for r in records]
    answer = avg(qs, [r["answer"] for r in records])
    para = avg(qs, [r["paraphrased_answer"] for r in records])
    pert = [avg([r["question"]] * len(r["perturbed_answers"]), r["perturbed_answers"]) for r in records]
    assert np.allclose(res["prob"], np.exp(-answer), rtol=1e-6)
    want_tr = np.exp(para - np.array([p.mean() for p in pert]))
    assert np.allclose(res["truth_ratio"], want_tr, rtol=1e-5)
    want_norm = np.exp(-answer) / (np.exp(-answer) + np.array([np.exp(-p).sum() for p in pert]) + 1e-10)
    assert np.allclose(res["prob_normalised"], want_norm, rtol=1e-5)


def test_default_scoring_budget_holds_no_more_logits_than_the_largest_item_alone():
    """Budget = tokens of the largest question's straightforward pass (k answers × longest prompt+answer);
    with a 128k vocabulary in bf16 the chunked float32 rows leave room for more (hand-computed)."""
    from types import SimpleNamespace

    from unlearnkit.families.text_nll import CHUNK_BYTES
    from unlearnkit.metrics.scoring import default_max_tokens

    prompts = [[1] * 10, [1] * 20]
    answers = [[[2] * 5, [2] * 9], [[2] * 3] * 3]  # items: 2 × (10 + 9) = 38, 3 × (20 + 3) = 69

    class Fake(torch.nn.Module):
        def __init__(self, vocab, dtype):
            super().__init__()
            self.config = SimpleNamespace(vocab_size=vocab)
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=dtype))

    assert default_max_tokens(Fake(1000, torch.float32), prompts, answers) == 69
    long_answers = [[[2] * 5, [2] * 9], [[2] * 280] * 3]  # 3 × (20 + 280) = 900 tokens
    big = 900 * 128256 * 10  # bf16 logits + float32 copy + float32 log-probs of the straightforward pass
    want = (big - 2 * CHUNK_BYTES) // (128256 * 2)
    assert want > 900 and default_max_tokens(Fake(128256, torch.bfloat16), prompts, long_answers) == want

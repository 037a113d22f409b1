"""The fast LM paths (issue #19) give the values of the straightforward computations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unlearnkit.families.text_nll as text_nll
from unlearnkit.families.text import TextFamily
from unlearnkit.families.text_nll import rows_nll, token_nll, vocab_moments

torch.set_num_threads(1)


def _llama(vocab: int = 300, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg)


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


@pytest.mark.parametrize("method", ["graddiff", "rmu"])
def test_per_position_reference_caches_of_trimmed_batches_match_a_frozen_copy(tokenizer, qa_set, method):
    """Cached per-position reference values (GradDiff-KL log-probs, RMU activations) come from batches of
    different widths; they must give the same retain term as a live frozen copy on any batch."""
    from unlearnkit.data.splits import Split
    from unlearnkit.engine import Engine, EngineConfig
    from unlearnkit.methods.base import Task
    from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
    from unlearnkit.methods.rmu import RMU, RMUConfig

    forget, retain = qa_set.take(torch.arange(2)), qa_set.take(torch.arange(2, 6))
    split = Split(forget, retain, qa_set.take(torch.arange(2)))
    values = []
    for ref in ("cache", "frozen"):
        model = _llama(len(tokenizer))
        if method == "graddiff":
            m = GradDiff(GradDiffConfig(batch_size=1, retain_loss="kl", kl_reference=ref))
        else:
            m = RMU(RMUConfig(batch_size=1, retain_reference=ref, positions="all"))
        task = Task(TextFamily(tokenizer), model, split, Engine(EngineConfig(progress=False)), seed=0)
        m.task = task
        m.prepare(task)
        if ref == "cache":
            cache = m.kl_cache if method == "graddiff" else m.retain_cache
            assert cache is not None and cache.values["loss"].shape[1] >= 2
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        values.append([m.retain_term(b).item() for b in retain.loader(3)])
    assert values[0][0] > 0 and values[0] == pytest.approx(values[1], rel=1e-5)

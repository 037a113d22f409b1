"""Exact Memorization and Extraction Strength: hand-computed values, and a direct check on the tiny Llama
in which ES is measured by its definition (give the model the first k answer tokens, decode the rest
greedily, find the smallest k that reproduces the answer) and EM by counting greedy next-token hits."""

from __future__ import annotations

import numpy as np
import pytest
import test_lm_methods as lm
import torch

from unlearnkit.data.text import answer_ids, prompt_ids
from unlearnkit.errors import ConfigError
from unlearnkit.metrics.memorization import exact_memorization, extraction_strength, memorization_scores

torch.set_num_threads(1)


def test_hand_computed_em_and_es_with_both_floors():
    m = [np.array(x, dtype=bool) for x in ([1, 0, 1, 1], [1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 0])]
    assert exact_memorization(m).tolist() == pytest.approx([0.75, 1.0, 2 / 3, 2 / 3, 0.0])
    assert extraction_strength(m).tolist() == pytest.approx([0.5, 1.0, 0.0, 2 / 3, 0.0])
    # the reference code stops its search at k = L − 1: a missed last token scores 1/L, not 0
    assert extraction_strength(m, "reference").tolist() == pytest.approx([0.5, 1.0, 1 / 3, 2 / 3, 0.5])
    with pytest.raises(ConfigError, match="es_form"):
        extraction_strength(m, "carlini")


@pytest.fixture(scope="module")
def setup(tokenizer, original):
    """(tokenizer, the fine-tuned tiny Llama): the fixtures of tests/conftest.py."""
    return tokenizer, original


def greedy_reproduces(model, prefix: list[int], rest: list[int]) -> bool:
    ids = list(prefix)
    for want in rest:
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt != want:
            return False
        ids.append(nxt)
    return True


def test_scores_match_greedy_decoding_on_a_tiny_llama(setup):
    tok, model = setup
    model = lm.perturb(lm.copy.deepcopy(model), seed=2, scale=0.03)  # partly memorised answers
    pairs = lm.FORGET + lm.RETAIN + lm.TEST
    qs, ans = [q for q, _ in pairs], [a for _, a in pairs]
    got = memorization_scores(model, tok, qs, ans, batch_size=3)
    em, es = [], []
    for q, a in pairs:
        p, y = prompt_ids(tok, q), answer_ids(tok, a)
        with torch.no_grad():
            z = model(input_ids=torch.tensor([p + y])).logits[0]
        hits = [int(z[len(p) + t - 1].argmax()) == y[t] for t in range(len(y))]
        em.append(sum(hits) / len(y))
        k_star = next(k for k in range(len(y) + 1) if greedy_reproduces(model, p + y[:k], y[k:]))
        es.append(1 - k_star / len(y))
    assert got["exact_memorization"].tolist() == pytest.approx(em)
    assert got["extraction_strength"].tolist() == pytest.approx(es)
    assert 0 < min(es) < 1 or 0 < max(es) < 1  # the values are not all 0 or 1: the test discriminates
    assert len(set(np.round(es, 6))) > 2 and len(set(np.round(em, 6))) > 2
    # the trained (unperturbed) model memorised its training answers better than the unseen ones
    trained = memorization_scores(setup[1], tok, qs, ans, batch_size=8)["exact_memorization"]
    assert trained[:6].mean() > trained[6:].mean() + 0.2

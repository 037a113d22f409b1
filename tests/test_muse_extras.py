"""open-unlearning's additions to MUSE on raw text, against direct computations on the tiny Llama: Extraction
Strength and Exact Memorization of a continuation given its prompt (ES by its definition: the shortest
prefix after which greedy decoding reproduces the rest), the LOSS / Min-40% / Reference / GradNorm AUCs of
forget vs holdout texts (AUCs by counting pairs, gradient norms from ``backward``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import test_lm_methods as lm
import torch
from test_memorization import greedy_reproduces
from test_qa_mia import min_k, pair_auc

from unlearnkit.metrics.generation import text_ids
from unlearnkit.metrics.lm_mia import text_gradnorm_scores
from unlearnkit.metrics.memorization import continuation_memorization
from unlearnkit.metrics.muse import evaluate_muse

torch.set_num_threads(1)

# texts the tiny Llama was fine-tuned on (as question + answer) vs texts it never saw, plus one it saw
FORGET = [f"{q} {a}" for q, a in lm.FORGET + lm.RETAIN[:2]]
HOLDOUT = [f"{q} {a}" for q, a in lm.TEST + lm.RETAIN[2:]]


@pytest.fixture(scope="module")
def setup(tokenizer, original):
    """(tokenizer, the fine-tuned tiny Llama): the fixtures of tests/conftest.py."""
    return tokenizer, original


def text_logps(model, tok, text: str) -> np.ndarray:
    ids = text_ids(tok, text)
    with torch.no_grad():
        z = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return np.array([float(z[t - 1, ids[t]]) for t in range(1, len(ids))])


def test_continuation_em_and_es_match_greedy_decoding(setup):
    tok, original = setup
    model = lm.perturb(copy.deepcopy(original), seed=2, scale=0.03)
    pairs = lm.FORGET + lm.RETAIN + lm.TEST
    prompts, conts = [q for q, _ in pairs], [f" {a}" for _, a in pairs]
    got = continuation_memorization(model, tok, prompts, conts, batch_size=3)
    em, es = [], []
    for p_text, c_text in zip(prompts, conts, strict=True):
        p, y = text_ids(tok, p_text), list(tok(c_text, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            z = model(input_ids=torch.tensor([p + y])).logits[0]
        em.append(sum(int(z[len(p) + t - 1].argmax()) == y[t] for t in range(len(y))) / len(y))
        k_star = next(k for k in range(len(y) + 1) if greedy_reproduces(model, p + y[:k], y[k:]))
        es.append(1 - k_star / len(y))
    assert got["exact_memorization"].tolist() == pytest.approx(em)
    assert got["extraction_strength"].tolist() == pytest.approx(es)
    assert len(set(np.round(es, 6))) > 2 and len(set(np.round(em, 6))) > 2


def test_text_gradnorm_is_the_mean_per_tensor_norm(setup):
    tok, original = setup
    model = copy.deepcopy(original)
    got = text_gradnorm_scores(model, tok, FORGET[:3])
    assert all(p.grad is None for p in model.parameters())
    for i, text in enumerate(FORGET[:3]):
        ids = torch.tensor([text_ids(tok, text)])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
        model.zero_grad(set_to_none=True)
        loss.backward()
        norms = [float(q.grad.norm()) for q in model.parameters() if q.grad is not None]
        assert got[i] == pytest.approx(sum(norms) / len(norms), rel=1e-4)


def test_muse_mia_aucs_and_memorization_through_evaluate_muse(setup):
    tok, original = setup
    model = lm.perturb(copy.deepcopy(original), seed=5, scale=0.02)
    records = {
        "verbmem_f": [{"prompt": q, "gt": f" {a}"} for q, a in lm.FORGET],
        "forget": FORGET,
        "holdout": HOLDOUT,
    }
    ref_nll = {n: [-text_logps(original, tok, t).mean() for t in texts] for n, texts in
               (("forget", FORGET), ("holdout", HOLDOUT))}  # fmt: skip
    got = evaluate_muse(
        model, tok, records, oracle_auc=0.5, batch_size=3, metrics=("privleak", "mia", "memorization"),
        reference_nll=ref_nll,
    )  # fmt: skip
    lps = {n: [text_logps(model, tok, t) for t in texts] for n, texts in (("f", FORGET), ("h", HOLDOUT))}
    loss = {n: [-lp.mean() for lp in v] for n, v in lps.items()}
    assert got["mia_loss"] == pytest.approx(pair_auc(loss["f"], loss["h"]))
    assert got["mia_min_k"] == pytest.approx(
        pair_auc([min_k(x) for x in lps["f"]], [min_k(x) for x in lps["h"]])
    )
    assert got["mia_min_k"] == pytest.approx(1 - got["auc"])  # MUSE's AUC labels the other way round
    diff = {n: np.array(loss[n]) - np.array(ref_nll[k]) for n, k in (("f", "forget"), ("h", "holdout"))}
    assert got["mia_reference"] == pytest.approx(pair_auc(diff["f"], diff["h"]))
    assert got["_mia_nll"]["holdout"] == pytest.approx(loss["h"])
    for key in ("mia_loss", "mia_min_k", "mia_reference", "mia_gradnorm"):
        assert 0.0 < got[key] < 1.0, (key, got[key])
    direct = continuation_memorization(model, tok, [q for q, _ in lm.FORGET], [f" {a}" for _, a in lm.FORGET])
    assert got["forget_extraction_strength"] == pytest.approx(direct["extraction_strength"].mean())
    assert got["forget_exact_memorization"] == pytest.approx(direct["exact_memorization"].mean())
    assert "verbmem_f" not in got and "knowmem_f" not in got  # only the metrics asked for

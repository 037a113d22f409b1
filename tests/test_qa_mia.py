"""Question-answer MIAs (LOSS, Min-K%, Reference, GradNorm) and TOFU PrivLeak against direct computations:
token log-probs from single unpadded sequences, AUCs by counting pairs, gradient norms from ``backward``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import test_lm_methods as lm
import torch

from unlearnkit.data.text import answer_ids, prompt_ids
from unlearnkit.errors import DataError
from unlearnkit.metrics.qa_mia import qa_gradnorm_scores, qa_mia, tofu_privleak

torch.set_num_threads(1)

# "forget": five pairs the tiny Llama was fine-tuned on; "holdout": two it never saw and one it saw, so the
# AUCs lie strictly between 0.5 and 1 and a wrong score shows up
FORGET = [{"question": q, "answer": a} for q, a in lm.FORGET + lm.RETAIN[:2]]
HOLDOUT = [{"question": q, "answer": a} for q, a in lm.TEST + lm.RETAIN[2:]]


@pytest.fixture(scope="module")
def setup(tokenizer, original):
    """(tokenizer, the fine-tuned tiny Llama): the fixtures of tests/conftest.py."""
    return tokenizer, original


def token_logps(model, tok, rec) -> np.ndarray:
    p, y = prompt_ids(tok, rec["question"]), answer_ids(tok, rec["answer"])
    with torch.no_grad():
        z = torch.log_softmax(model(input_ids=torch.tensor([p + y])).logits[0].double(), -1)
    return np.array([float(z[len(p) + t - 1, y[t]]) for t in range(len(y))])


def pair_auc(members, nonmembers) -> float:
    """P(member score < non-member score) + ½·P(tie): members are the lower (loss-like) scores."""
    wins = [(m < n) + 0.5 * (m == n) for m in members for n in nonmembers]
    return float(np.mean(wins))


def min_k(lp: np.ndarray, k: float = 0.4) -> float:
    n = max(1, int(len(lp) * k))
    return -float(np.mean(np.sort(lp)[:n]))


def test_loss_min_k_and_reference_aucs(setup):
    tok, original = setup
    model = lm.perturb(copy.deepcopy(original), seed=5, scale=0.02)
    lps = {n: [token_logps(model, tok, r) for r in recs] for n, recs in (("f", FORGET), ("h", HOLDOUT))}
    ref_nll = {
        n: [-token_logps(original, tok, r).mean() for r in recs]
        for n, recs in (("f", FORGET), ("h", HOLDOUT))
    }
    got = qa_mia(model, tok, FORGET, HOLDOUT, {"forget": ref_nll["f"], "holdout": ref_nll["h"]}, batch_size=3)
    loss = {n: [-lp.mean() for lp in v] for n, v in lps.items()}
    assert got["mia_loss"] == pytest.approx(pair_auc(loss["f"], loss["h"]))
    assert got["mia_min_k"] == pytest.approx(
        pair_auc([min_k(x) for x in lps["f"]], [min_k(x) for x in lps["h"]])
    )
    diff = {n: np.array(loss[n]) - np.array(ref_nll[n]) for n in ("f", "h")}
    assert got["mia_reference"] == pytest.approx(pair_auc(diff["f"], diff["h"]))
    assert got["_mia_nll"]["forget"] == pytest.approx(loss["f"])
    for key in ("mia_loss", "mia_min_k", "mia_reference"):
        assert 0.5 < got[key] < 1.0, (key, got[key])
    with pytest.raises(DataError, match="re-evaluate the oracle"):
        qa_mia(model, tok, FORGET, HOLDOUT, {"forget": [0.0], "holdout": [0.0]}, gradnorm=False)


def test_gradnorm_is_the_mean_per_tensor_norm_and_leaves_grads_alone(setup):
    tok, original = setup
    model = copy.deepcopy(original)
    got = qa_gradnorm_scores(model, tok, [r["question"] for r in FORGET], [r["answer"] for r in FORGET])
    assert all(p.grad is None for p in model.parameters())
    for i, rec in enumerate(FORGET):
        p, y = prompt_ids(tok, rec["question"]), answer_ids(tok, rec["answer"])
        z = torch.log_softmax(model(input_ids=torch.tensor([p + y])).logits[0], -1)
        loss = -torch.stack([z[len(p) + t - 1, y[t]] for t in range(len(y))]).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        norms = [float(q.grad.norm()) for q in model.parameters() if q.grad is not None]
        assert got[i] == pytest.approx(sum(norms) / len(norms), rel=1e-4)
    assert len(set(np.round(got, 6))) == len(FORGET)


def test_tofu_privleak_by_hand():
    assert tofu_privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)  # under-unlearned: −80
    assert tofu_privleak(0.3, 0.6) == pytest.approx((0.7 - 0.4) / 0.4 * 100)  # over-unlearned: > 0
    assert tofu_privleak(0.55, 0.55) == 0.0 and tofu_privleak(0.7, None) is None

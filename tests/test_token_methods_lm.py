"""IdkNLL, WGA, SatImp, CE-U, UNDIAL and PDU on the tiny Llama of ``test_lm_methods``.

Each loss is compared with its formula evaluated position by position from the model's logits in float64
(not through the methods' helpers); UNDIAL's cached targets with a live copy of the original model; and a
short run of each method checks that the forget answers became less likely (or, for PDU, flatter).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_lm_methods import (
    answer_len,
    count_llamas,
    held_modules,
    make_task,
    manual_nll,
    perturb,
    token_mean_nll,
)

from unlearnkit.methods.ceu import CEU, CEUConfig
from unlearnkit.methods.idknll import IdkNLL, IdkNLLConfig
from unlearnkit.methods.pdu import PDU, PDUConfig
from unlearnkit.methods.reference import ReferenceCache
from unlearnkit.methods.satimp import SatImp, SatImpConfig
from unlearnkit.methods.undial import UNDIAL, UNDIALConfig
from unlearnkit.methods.wga import WGA, WGAConfig

torch.set_num_threads(1)


# tokenizer, split, original: the tiny-Llama fixtures of tests/conftest.py


def units(model, batch, shift: bool = True) -> list[list[tuple[torch.Tensor, int]]]:
    """Per example, (logits [V] in float64, target) at each answer position: logits at t−1 predict y_t
    (``shift=False``: the logits at t itself, the reference code's PDU indexing)."""
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    out = []
    for i in range(len(z)):
        row = []
        for t in range(1, z.shape[1]):
            y = int(batch["labels"][i, t])
            if y != -100:
                row.append((z[i, t - 1] if shift else z[i, t], y))
        out.append(row)
    return out


def flat(values: list[list[float]]) -> float:
    allv = [v for row in values for v in row]
    return sum(allv) / len(allv)


def logp_of(z: torch.Tensor, y: int) -> float:
    return float(z[y] - torch.logsumexp(z, 0))


def attached(method, tokenizer, split, model):
    method.task = make_task(tokenizer, split, model)
    return method


# -- losses by hand ----------------------------------------------------------------------------------
def test_wga_and_satimp_losses_are_token_weighted_log_likelihoods(tokenizer, split, original):
    model = perturb(copy.deepcopy(original))
    fb, rb = split.forget.all(), split.retain.all()
    u = units(model, fb)
    wga = attached(WGA(WGAConfig(beta=1.5, gamma=0.5, alpha=2.0)), tokenizer, split, model)
    expected = flat([[math.exp(logp_of(z, y)) ** 1.5 * logp_of(z, y) for z, y in row] for row in u])
    total, logs = wga.loss({"forget": fb, "retain": rb})
    assert logs["forget_loss"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * expected + 2.0 * token_mean_nll(model, rb), rel=1e-5)

    def sat(z, y):
        p = math.exp(logp_of(z, y))
        return p**5 * (1 - p) * math.log(p)

    satimp = attached(SatImp(), tokenizer, split, model)
    assert satimp.forget_term(fb, None)[0].item() == pytest.approx(
        flat([[sat(z, y) for z, y in r] for r in u])
    )


@pytest.mark.parametrize("skip", [0, 1])
def test_ceu_loss_excludes_the_target_logit_and_the_first_answer_token(tokenizer, split, original, skip):
    model = perturb(copy.deepcopy(original))
    fb = split.forget.all()
    m = attached(CEU(CEUConfig(ignore_first_answer_tokens=skip)), tokenizer, split, model)

    def ce(z, y):
        q = torch.softmax(z.clone().index_fill(0, torch.tensor([y]), -math.inf), 0)
        return float(-(q * torch.log_softmax(z, 0)).sum())

    expected = flat([[ce(z, y) for z, y in row[skip:]] for row in units(model, fb)])
    assert m.forget_term(fb, None)[0].item() == pytest.approx(expected, rel=1e-5)


def undial_expected(model, ref_model, fb, beta: float, top_k: int | None = None) -> float:
    rows = []
    for ref_row, row in zip(units(ref_model, fb), units(model, fb), strict=True):
        vals = []
        for (zr, y), (z, _) in zip(ref_row, row, strict=True):
            q = torch.softmax(zr - beta * torch.nn.functional.one_hot(torch.tensor(y), len(zr)), 0)
            if top_k is not None:  # keep the top-k, the rest shares the tail mass evenly
                top = q.topk(top_k).indices
                tail = (1 - q[top].sum()) / (len(q) - top_k)
                q = torch.full_like(q, float(tail)).index_copy(0, top, q[top])
            vals.append(float(-(q * torch.log_softmax(z, 0)).sum()))
        rows.append(vals)
    return flat(rows)


@pytest.mark.parametrize("reference", ["full", "topk", "frozen", "auto"])
def test_undial_loss_matches_a_live_reference(tokenizer, split, original, reference):
    model = copy.deepcopy(original)
    k = 5
    cfg = UNDIALConfig(beta=3.0, reference=reference, top_k=k, cache_mb=1e-3)  # auto: over budget -> top-k
    m = attached(UNDIAL(cfg), tokenizer, split, model)
    m.prepare(m.task)
    perturb(model, seed=4)
    fb = split.forget.all()
    topk = k if reference in ("topk", "auto") else None
    expected = undial_expected(model, original, fb, 3.0, topk)
    assert m.forget_term(fb, None)[0].item() == pytest.approx(expected, rel=1e-5)
    if topk:
        assert 0 < m.max_tail_mass < 1
        assert abs(expected - undial_expected(model, original, fb, 3.0)) > 1e-4  # the top-k is a bound
    assert (held_modules(m) != []) == (reference == "frozen")


def test_pdu_margin_loss_on_next_token_and_label_positions(tokenizer, split, original):
    model = perturb(copy.deepcopy(original))
    fb, rb = split.forget.all(), split.retain.all()

    def margin(shift):
        return flat([[float((z.max() - z.mean()) ** 2) for z, _ in r] for r in units(model, fb, shift)])

    for form, shift in (("next_token", True), ("label", False)):
        m = attached(PDU(PDUConfig(label_positions=form, alpha=3.0, epsilon=0.05)), tokenizer, split, model)
        total, logs = m.loss({"forget": fb, "retain": rb})
        assert logs["forget_loss"] == pytest.approx(margin(shift), rel=1e-5)
        assert total.item() == pytest.approx(
            margin(shift) + 3.0 * (token_mean_nll(model, rb) - 0.05), rel=1e-5
        )
    assert abs(margin(True) - margin(False)) > 1e-3


def test_idknll_is_the_idk_answer_nll_plus_the_retain_nll(tokenizer, split, original):
    model = perturb(copy.deepcopy(original))
    fb, rb = split.forget.all(), split.retain.all()
    m = attached(IdkNLL(IdkNLLConfig(gamma=0.6, alpha=1.7)), tokenizer, split, model)
    idk = sum(manual_nll(model, fb, "alt_")) / sum(answer_len(fb, "alt_"))
    total, _ = m.loss({"forget": fb, "retain": rb})
    assert total.item() == pytest.approx(0.6 * idk + 1.7 * token_mean_nll(model, rb), rel=1e-5)


# -- short runs on the tiny Llama --------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        WGA(WGAConfig(epochs=6, lr=1e-2, batch_size=3, alpha=0.0)),
        SatImp(SatImpConfig(epochs=6, lr=1e-2, batch_size=3, gamma=1.0, beta1=1.0, alpha=0.0)),
        CEU(CEUConfig(epochs=6, lr=1e-2, batch_size=3)),
        UNDIAL(UNDIALConfig(epochs=6, lr=1e-2, batch_size=3, top_k=8, cache_mb=1e-3)),
        IdkNLL(IdkNLLConfig(epochs=6, lr=1e-2, batch_size=3)),
    ],
    ids=["wga", "satimp", "ceu", "undial-topk", "idknll"],
)
def test_forget_answers_become_less_likely(tokenizer, split, original, method):
    model = copy.deepcopy(original)
    fb = split.forget.all()
    before, idk_before = token_mean_nll(model, fb), sum(manual_nll(model, fb, "alt_"))
    before_models = count_llamas()
    seen = []
    inner = method.loss

    seen_target = []

    def loss(b, ctx):
        seen.append(count_llamas())
        seen_target.append(getattr(method, "target", None))
        return inner(b, ctx)

    method.loss = loss
    method.run(make_task(tokenizer, split, model))
    assert seen and max(seen) == before_models  # no reference model held during training
    after = token_mean_nll(model, fb)
    assert after > before + 0.3, (method.name, before, after)
    if isinstance(method, IdkNLL):
        assert sum(manual_nll(model, fb, "alt_")) < 0.5 * idk_before
    if isinstance(method, UNDIAL):
        assert isinstance(seen_target[0], ReferenceCache) and "idx" in seen_target[0].values  # top-k cache
        assert method.target is None  # released by finalize


def test_pdu_flattens_the_forget_logits_and_moves_lambda(tokenizer, split, original):
    model = copy.deepcopy(original)
    fb = split.forget.all()
    m = PDU(
        PDUConfig(epochs=6, lr=1e-2, batch_size=3, alpha=1.0, epsilon=0.2, dual_lr=1.0, dual_warmup_epochs=2)
    )
    m.task = make_task(tokenizer, split, model)
    with torch.no_grad():
        before = m.forget_term(fb, None)[0].item()
    result = m.run(m.task)
    with torch.no_grad():
        after = m.forget_term(fb, None)[0].item()
    assert after < 0.5 * before, (before, after)
    lams = [h["lambda"] for h in result.history]
    assert lams[0] == 1.0 and len(set(lams)) > 1
    assert token_mean_nll(model, fb) > token_mean_nll(original, fb)

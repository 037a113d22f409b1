"""WGA, SatImp, CE-U, UNDIAL and PDU on a classifier: losses against hand computations, and short runs.

The model is the ``nn.Linear(2, 3)`` of ``test_method_losses`` with explicit weights; every loss is written
out with ``math`` (softmax, logs, max − mean), so a wrong exponent, sign, weight or normalisation shows up.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_method_losses import (
    FORGET_X,
    FORGET_Y,
    RETAIN_X,
    RETAIN_Y,
    attach,
    ctx,
    hand_logits,
    hand_mean_ce,
    make_task,
    separable_task,
)

from unlearnkit.errors import ConfigError
from unlearnkit.methods.ceu import CEU, CEUConfig
from unlearnkit.methods.pdu import PDU, PDUConfig
from unlearnkit.methods.satimp import SatImp, SatImpConfig
from unlearnkit.methods.undial import UNDIAL, UNDIALConfig
from unlearnkit.methods.wga import WGA, WGAConfig
from unlearnkit.registry import list_methods

torch.set_num_threads(1)


def softmax(z: list[float]) -> list[float]:
    s = sum(math.exp(v) for v in z)
    return [math.exp(v) / s for v in z]


def batches():
    task = make_task()
    return task, task.split.forget.all(), task.split.retain.all()


# -- hand-computed losses ----------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_wga_loss_is_probability_weighted_log_likelihood(beta):
    task, fb, _ = batches()
    m = attach(WGA(WGAConfig(beta=beta)), task)
    terms = []
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        p = softmax(hand_logits(x))[y]
        terms.append(p**beta * math.log(p))
    assert m.forget_term(fb, None)[0].item() == pytest.approx(sum(terms) / 2, rel=1e-5)


def test_wga_weights_carry_no_gradient():
    """d/dz of sg(p)^β·log p is sg(p)^β·(onehot − p): GA's gradient scaled by the weight."""
    task, fb, _ = batches()
    m = attach(WGA(WGAConfig(beta=2.0)), task)
    m.forget_term(fb, None)[0].backward()
    expected = torch.zeros(3, 2)
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        p = softmax(hand_logits(x))
        for k in range(3):
            g = p[y] ** 2 * ((k == y) - p[k]) / 2
            expected[k] += torch.tensor(x) * g
    assert torch.allclose(task.model.weight.grad, expected, atol=1e-6)


def test_satimp_loss_and_defaults():
    task, fb, rb = batches()
    cfg = SatImpConfig()
    assert (cfg.beta1, cfg.beta2, cfg.gamma, cfg.alpha, cfg.lr, cfg.epochs) == (5.0, 1.0, 0.1, 1.0, 1e-5, 5)
    m = attach(SatImp(SatImpConfig(beta1=2.0, beta2=3.0, gamma=0.7, alpha=1.3)), task)
    terms = []
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        p = softmax(hand_logits(x))[y]
        terms.append(p**2 * (1 - p) ** 3 * math.log(p))
    total, logs = m.loss({"forget": fb, "retain": rb})
    assert logs["forget_loss"] == pytest.approx(sum(terms) / 2, rel=1e-5)
    assert total.item() == pytest.approx(
        0.7 * sum(terms) / 2 + 1.3 * hand_mean_ce(RETAIN_X, RETAIN_Y), rel=1e-5
    )


def test_ceu_loss_is_cross_entropy_to_the_distribution_without_the_label():
    task, fb, _ = batches()
    m = attach(CEU(), task)
    assert m.cfg.retain_loss == "none" and not m.uses_retain
    terms = []
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        z = hand_logits(x)
        p = softmax(z)
        q = softmax([v for k, v in enumerate(z) if k != y])
        others = [k for k in range(3) if k != y]
        terms.append(-sum(qk * math.log(p[k]) for qk, k in zip(q, others, strict=True)))
    loss = m.forget_term(fb, None)[0]
    assert loss.item() == pytest.approx(sum(terms) / 2, rel=1e-5)
    loss.backward()  # logit gradient p − q, averaged: check one weight row by hand
    expected = torch.zeros(3, 2)
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        z = hand_logits(x)
        p = softmax(z)
        q = softmax([v if k != y else -math.inf for k, v in enumerate(z)])
        for k in range(3):
            expected[k] += torch.tensor(x) * (p[k] - q[k]) / 2
    assert torch.allclose(task.model.weight.grad, expected, atol=1e-6)


@pytest.mark.parametrize("reference", ["full", "topk", "frozen"])
def test_undial_loss_uses_the_original_logits_lowered_at_the_label(reference):
    task, fb, _ = batches()
    beta = 3.0
    m = attach(UNDIAL(UNDIALConfig(beta=beta, reference=reference, top_k=2)), task)
    m.prepare(task)
    with torch.no_grad():  # move the model: the target must stay the original's
        task.model.weight.add_(torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]]))
    new = task.model.weight.detach().tolist()
    terms = []
    for x, y in zip(FORGET_X, FORGET_Y, strict=True):
        z_ref = hand_logits(x)
        q = softmax([v - beta * (k == y) for k, v in enumerate(z_ref)])
        if reference == "topk":  # two largest kept, the third gets the tail mass 1 − Σ top-2
            top = sorted(range(3), key=lambda k: -q[k])[:2]
            q = [q[k] if k in top else 1 - sum(q[j] for j in top) for k in range(3)]
        z = [sum(new[k][j] * x[j] for j in range(2)) + b for k, b in enumerate([0.1, -0.2, 0.05])]
        p = softmax(z)
        terms.append(-sum(q[k] * math.log(p[k]) for k in range(3)))
    assert m.forget_term(fb, None)[0].item() == pytest.approx(sum(terms) / 2, rel=1e-5)
    assert (m.target_model is not None) == (reference == "frozen")


def test_pdu_lagrangian_and_dual_ascent_by_hand():
    task, fb, rb = batches()
    eps, lam0, eta, gamma = 0.2, 2.0, 0.5, 0.8
    m = attach(PDU(PDUConfig(epsilon=eps, alpha=lam0, dual_lr=eta, gamma=gamma, dual_warmup_epochs=1)), task)
    margin = sum((max(z) - sum(z) / 3) ** 2 for z in map(hand_logits, FORGET_X)) / 2
    lr_ = hand_mean_ce(RETAIN_X, RETAIN_Y)
    assert lr_ > eps
    total, logs = m.loss({"forget": fb, "retain": rb}, ctx(epoch=0))
    assert total.item() == pytest.approx(gamma * margin + lam0 * (lr_ - eps), rel=1e-5)
    assert logs["forget_loss"] == pytest.approx(margin, rel=1e-5)
    assert m.lam == lam0  # warm-up epoch: no dual step
    m.loss({"forget": fb, "retain": rb}, ctx(epoch=1))
    assert m.lam == pytest.approx(lam0 + eta * (lr_ - eps), rel=1e-5)
    m.load_loop_state({"lam": 0.1, "epoch": 1, "sum": 0.0, "count": 0})
    m.cfg.epsilon = 10.0  # constraint slack: the projected step stops at 0
    m.loss({"forget": fb, "retain": rb}, ctx(epoch=1))
    assert m.lam == 0.0


def test_pdu_epoch_mode_steps_once_per_epoch_with_the_mean_retain_loss():
    task, fb, rb = batches()
    m = attach(
        PDU(PDUConfig(epsilon=0.1, alpha=1.0, dual_lr=2.0, dual_warmup_epochs=0, dual_update="epoch")), task
    )
    lr_ = hand_mean_ce(RETAIN_X, RETAIN_Y)
    for _ in range(3):
        m.loss({"forget": fb, "retain": rb}, ctx(epoch=0))
    assert m.lam == 1.0
    _, logs = m.loss({"forget": fb, "retain": rb}, ctx(epoch=1))
    assert logs["lambda"] == pytest.approx(1.0 + 2.0 * (lr_ - 0.1), rel=1e-5)
    with pytest.raises(ConfigError, match="dual_update"):
        PDUConfig(dual_update="batch").check()


# -- registered for classifiers, and short runs ------------------------------------------------------
def test_token_methods_are_listed_for_classifiers_and_lms():
    fams = {r["name"]: r["families"] for r in list_methods()}
    for name in ("wga", "satimp", "ceu", "undial", "pdu"):
        assert sorted(fams[name]) == ["text", "vision"], name
    assert fams["idknll"] == ["text"]


@pytest.mark.parametrize(
    "method",
    [
        WGA(WGAConfig(epochs=5, lr=0.2, batch_size=6, alpha=0.0)),
        SatImp(SatImpConfig(epochs=5, lr=0.5, batch_size=6, beta1=1.0, gamma=1.0, alpha=0.0)),
        CEU(CEUConfig(epochs=5, lr=0.2, batch_size=6)),
        UNDIAL(UNDIALConfig(epochs=5, lr=0.2, batch_size=6)),
    ],
    ids=["wga", "satimp", "ceu", "undial"],
)
def test_forget_loss_rises_on_a_classifier(method):
    task = separable_task()
    fb = task.split.forget.all()
    with torch.no_grad():
        before = float(task.family.per_example_loss(task.model, fb).mean())
    method.run(task)
    with torch.no_grad():
        after = float(task.family.per_example_loss(task.model, fb).mean())
    assert after > before + 0.2, (before, after)


def test_pdu_flattens_the_forget_logits_on_a_classifier():
    task = separable_task()
    m = PDU(PDUConfig(epochs=6, lr=0.1, batch_size=6, alpha=1.0, epsilon=0.5, dual_warmup_epochs=2))
    fb = task.split.forget.all()
    with torch.no_grad():
        before = float(attach(m, task).forget_term(fb, None)[0])
    m.run(task)
    with torch.no_grad():
        after = float(m.forget_term(fb, None)[0])
    assert after < 0.5 * before, (before, after)
    assert m.lam != 1.0  # the dual variable moved after the warm-up


@pytest.mark.parametrize("name", ["idknll", "wga", "satimp", "ceu", "undial", "pdu"])
def test_text_presets_build_their_method_with_the_paper_settings(name):
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import build_method
    from unlearnkit.registry import get_method

    cfg = load_preset(f"text/{name}")
    method = build_method(cfg["method"], cfg["family"])
    assert type(method) is get_method(name) and cfg["family"] == "text"
    assert method.cfg.lr == cfg["method"]["lr"] and method.cfg.epochs == cfg["method"]["epochs"]
    defaults = type(method.cfg)()  # the paper's loss settings are not overridden by the preset
    for key in ("beta", "beta1", "beta2", "gamma", "alpha", "epsilon", "dual_lr"):
        if hasattr(defaults, key):
            assert getattr(method.cfg, key) == getattr(defaults, key), key

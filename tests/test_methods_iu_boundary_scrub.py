"""IU, Boundary Shrink / Expanding and SCRUB against small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import random_split
from unlearnkit.engine.loop import Engine, EngineConfig, StepContext
from unlearnkit.engine.masks import WeightMask
from unlearnkit.errors import UnlearnkitError
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task
from unlearnkit.methods.boundary import BoundaryExpand, BoundaryShrink
from unlearnkit.methods.iu import IU
from unlearnkit.methods.scrub import SCRUB, distill_kl


def make_task(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, forget: int, batch_size: int = 4):
    train = ExampleSet({"x": x, "y": y})
    test = ExampleSet({"x": x[:4].clone(), "y": y[:4].clone()})
    split = random_split(train, test, forget, seed=0)
    engine = Engine(EngineConfig(progress=False, batch_size=batch_size, device="cpu"))
    return Task(VisionFamily(num_classes=k), model, split, engine, seed=0)


def ctx(phase: str = "forget") -> StepContext:
    return StepContext(0, 1, 0, phase, torch.Generator().manual_seed(0))


def test_registered_names():
    assert IU.name == "iu"
    assert BoundaryShrink.name == "boundary_shrink"
    assert BoundaryExpand.name == "boundary_expand"
    assert SCRUB.name == "scrub"


# -- IU ----------------------------------------------------------------------------------------------


def _linear_grads(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example ∇ of CE(Wx + b, y), flattened as [W (row-major), b]: (p − e_y)xᵀ and p − e_y."""
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    gw = d[:, :, None] * x[:, None, :]
    return np.concatenate([gw.reshape(len(y), -1), d], axis=1)


def _iu_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).double().float()
    x = torch.randn(12, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0])
    task = make_task(model, x, y, k=2, forget=4)
    W0 = model.weight.detach().double().numpy().copy()
    b0 = model.bias.detach().double().numpy().copy()
    return task, W0, b0


def _iu_expected_v(task, W0, b0):
    f, r = task.split.forget, task.split.retain
    gf = _linear_grads(W0, b0, f.columns["x"].double().numpy(), f.columns["y"].numpy())
    gr = _linear_grads(W0, b0, r.columns["x"].double().numpy(), r.columns["y"].numpy())
    n_f, n_r = len(gf), len(gr)
    v = n_f / (n_f + n_r) * (gf.mean(0) - gr.mean(0))
    return v, gr


def _theta(model: nn.Linear) -> np.ndarray:
    return np.concatenate(
        [model.weight.detach().double().numpy().ravel(), model.bias.detach().double().numpy()]
    )


def test_iu_woodbury_matches_dense_solve():
    task, W0, b0 = _iu_setup()
    v, gr = _iu_expected_v(task, W0, b0)
    lam, alpha = 0.5, 3.0
    # num_samples >= N_r: every retain example is in the Fisher (order does not matter for the solve)
    IU(IU.Config(alpha=alpha, damping=lam, num_samples=100)).run(task)
    n = len(gr)
    Fm = lam * np.eye(len(v)) + gr.T @ gr / n
    expected = np.concatenate([W0.ravel(), b0]) + alpha * np.linalg.solve(Fm, v)
    np.testing.assert_allclose(_theta(task.model), expected, atol=1e-5)
    # the step is not just alpha*v/lambda: the Fisher term matters on this case
    assert np.abs(np.linalg.solve(Fm, v) - v / lam).max() > 1e-3


def test_iu_subset_first_and_mask():
    task, W0, b0 = _iu_setup(1)
    v, gr = _iu_expected_v(task, W0, b0)
    n = 3
    mask = WeightMask({"weight": torch.tensor([[True, False, True], [False, True, False]])})
    method = IU(IU.Config(alpha=2.0, damping=1.0, num_samples=n, sample_order="first"))
    method.build_mask = lambda t: mask
    method.run(task)
    Fm = np.eye(len(v)) + gr[:n].T @ gr[:n] / n
    step = 2.0 * np.linalg.solve(Fm, v)
    keep = np.concatenate([mask.masks["weight"].numpy().ravel(), [True, True]])  # bias not in the mask
    expected = np.concatenate([W0.ravel(), b0]) + np.where(keep, step, 0.0)
    got = _theta(task.model)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # frozen entries bit-for-bit
    frozen = ~mask.masks["weight"]
    assert torch.equal(task.model.weight.detach()[frozen], torch.as_tensor(W0, dtype=torch.float32)[frozen])


def test_iu_reference_recursion_and_difference():
    task, W0, b0 = _iu_setup(2)
    v, gr = _iu_expected_v(task, W0, b0)
    N, alpha = 2, 1.5
    IU(IU.Config(alpha=alpha, num_samples=N, solver="reference", sample_order="first")).run(task)
    # the reference loop, written out: o = g_1, then for each further g (up to index N + 1)
    k, o = v.copy(), gr[0].copy()
    for g in gr[1 : N + 2]:
        tmp = o @ g
        k = k - (k @ g) / (N + tmp) * o
        o = o - tmp / (N + tmp) * o
    ref = _theta(task.model)
    np.testing.assert_allclose(ref, np.concatenate([W0.ravel(), b0]) + alpha * k, atol=1e-5)

    task2, _, _ = _iu_setup(2)
    IU(IU.Config(alpha=alpha, num_samples=N, solver="woodbury", sample_order="first")).run(task2)
    assert np.abs(_theta(task2.model) - ref).max() > 1e-4


def test_iu_memory_guard():
    task, W0, _ = _iu_setup()
    with pytest.raises(UnlearnkitError, match="method.num_samples"):
        IU(IU.Config(num_samples=5, max_memory_gb=1e-9)).run(task)
    assert np.array_equal(task.model.weight.detach().double().numpy(), W0)


def test_iu_per_example_gradients_with_batchnorm_eval():
    """vmap(grad) in eval mode equals a loop of single-example autograd on a conv+BN model."""
    from unlearnkit.methods.iu import per_example_gradients, trainable

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    model.eval()
    data = ExampleSet({"x": torch.randn(5, 1, 4, 4), "y": torch.tensor([0, 1, 2, 1, 0])})
    fam = VisionFamily(3)
    got = torch.cat(list(per_example_gradients(model, fam, data, 2, torch.device("cpu"))))
    params = [p for _, p in trainable(model)]
    for i in range(5):
        loss = F.cross_entropy(model(data.columns["x"][i : i + 1]), data.columns["y"][i : i + 1])
        want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


# -- Boundary Shrink ---------------------------------------------------------------------------------


def _shrink_setup():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
    x = torch.tensor([[0.95, 0.1], [0.5, 0.45], [0.2, 0.3], [0.6, 0.9], [0.1, 0.9], [0.7, 0.2]])
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    return model, x, y


def _fgsm_by_hand(W, b, x, y, eps):
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    gx = d @ W  # ∇ₓ CE = Wᵀ(p − e_y)
    return np.clip(x + eps * np.sign(gx), 0.0, 1.0)


def test_boundary_shrink_labels_and_loss():
    model, x, y = _shrink_setup()
    task = make_task(model, x, y, k=3, forget=1)
    W, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    xn, yn = x.double().numpy(), y.numpy()
    x_adv = _fgsm_by_hand(W, b, xn, yn, 0.1)
    logits_adv = x_adv @ W.T + b
    plain = logits_adv.argmax(1)
    masked = logits_adv.copy()
    masked[np.arange(len(yn)), yn] = -np.inf
    nbi = masked.argmax(1)
    # the case separates the two rules: some examples stay in their class after the FGSM step
    assert (plain == yn).any() and (nbi != yn).all()
    batch = {"x": x, "y": y, "id": torch.arange(len(y))}

    for exclude, want in ((True, nbi), (False, plain)):
        m = BoundaryShrink(BoundaryShrink.Config(exclude_true=exclude, input_range=[0.0, 1.0]))
        m.task = task
        m.prepare(task)
        xa, labels = m.neighbour_labels(batch)
        np.testing.assert_allclose(xa.double().numpy(), x_adv, atol=1e-6)
        assert labels.tolist() == want.tolist()
        loss, _ = m.loss({"forget": batch}, ctx())
        z = xn @ W.T + b
        lse = np.log(np.exp(z).sum(1))
        expected = np.mean(lse - z[np.arange(len(yn)), want])
        assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)


def test_boundary_shrink_discretize():
    model, x, y = _shrink_setup()
    task = make_task(model, x, y, k=3, forget=1)
    m = BoundaryShrink(BoundaryShrink.Config(eps=0.1037, discretize=True, input_range=[0.0, 1.0]))
    m.task = task
    m.prepare(task)
    xa, _ = m.neighbour_labels({"x": x, "y": y, "id": torch.arange(len(y))})
    torch.testing.assert_close(xa * 255, torch.round(xa * 255), atol=1e-4, rtol=0)


def test_boundary_shrink_run_keeps_original():
    model, x, y = _shrink_setup()
    task = make_task(model, x, y, k=3, forget=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = BoundaryShrink(BoundaryShrink.Config(epochs=3, lr=0.5))
    seen = {}
    finalize = m.finalize

    def capture(t):
        seen["original"] = m.original
        finalize(t)

    m.finalize = capture
    res = m.run(task)
    assert res.steps == 3
    orig = seen["original"]
    assert all(not p.requires_grad for p in orig.parameters()) and not orig.training
    for k, v in orig.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(model.weight, before["weight"])


# -- Boundary Expanding ------------------------------------------------------------------------------


def _expand_setup(forget: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.rand(8, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return model, make_task(model, x, y, k=3, forget=forget)


def test_boundary_expand_head_and_loss():
    model, task = _expand_setup()
    old_w, old_b = model[2].weight.detach().clone(), model[2].bias.detach().clone()
    m = BoundaryExpand()
    m.task = task
    m.prepare(task)
    head = model[2]
    assert head.out_features == 4 and task.family.num_classes == 4
    assert torch.equal(head.weight[:3], old_w) and torch.equal(head.bias[:3], old_b)
    batch = task.split.forget.all()
    loss, _ = m.loss({"forget": batch}, ctx())
    with torch.no_grad():
        z = model(batch["x"]).double()
    expected = (torch.logsumexp(z, 1) - z[:, 3]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-6)


def test_boundary_expand_run_prunes_shadow():
    model, task = _expand_setup()
    m = BoundaryExpand(BoundaryExpand.Config(epochs=2, lr=0.5))
    seen = {}
    finalize = m.finalize

    def capture(t):
        seen["w"] = model[2].weight.detach().clone()
        seen["b"] = model[2].bias.detach().clone()
        finalize(t)

    m.finalize = capture
    m.run(task)
    assert seen["w"].shape == (4, 4)
    head = model[2]
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert torch.equal(head.weight, seen["w"][:3]) and torch.equal(head.bias, seen["b"][:3])
    assert task.family.num_classes == 3
    assert model(torch.rand(2, 2)).shape == (2, 3)


def test_boundary_expand_keep_shadow_and_mask():
    model, task = _expand_setup()
    m = BoundaryExpand(BoundaryExpand.Config(epochs=1, lr=0.5, prune_shadow=False, mask_ratio=0.3))
    m.run(task)
    assert model[2].out_features == 4 and task.family.num_classes == 3
    mk = m.mask.masks
    assert mk["2.weight"].shape == (4, 4) and bool(mk["2.weight"][3].all()) and bool(mk["2.bias"][3])


def test_boundary_expand_needs_head():
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 4))
    task = make_task(model, torch.rand(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]), k=3, forget=2)
    with pytest.raises(UnlearnkitError, match="out_features == 3"):
        BoundaryExpand().run(task)
    assert task.family.num_classes == 3


# -- SCRUB -------------------------------------------------------------------------------------------


def test_scrub_kl_by_hand():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0], [3.0, -1.0, 1.0]])
    T = 2.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    manual = (pt * (pt / ps).log()).sum(1).mean() * T * T
    assert float(distill_kl(s, t, T)) == pytest.approx(float(manual), abs=1e-6)
    ref = F.kl_div(F.log_softmax(s / T, 1), pt, reduction="batchmean") * T * T
    assert float(distill_kl(s, t, T)) == pytest.approx(float(ref), abs=1e-6)
    assert float(distill_kl(s, s, T)) == pytest.approx(0.0, abs=1e-7)


def _scrub_setup():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(16, 4)
    y = torch.randint(0, 3, (16,))
    return model, make_task(model, x, y, k=3, forget=4)


def test_scrub_phases_and_losses():
    model, task = _scrub_setup()
    m = SCRUB(SCRUB.Config(msteps=2, gamma=0.7, alpha=0.3, kd_T=3.0))
    m.task = task
    m.prepare(task)
    assert [p.name for p in m.phases(0)] == ["max", "min"]
    assert [p.name for p in m.phases(1)] == ["max", "min"]
    assert [p.name for p in m.phases(2)] == ["min"]
    with torch.no_grad():
        model.weight[0].add_(0.8)  # student drifts away from the teacher (class 0 only)
    teacher = m.teacher
    r = task.split.retain.all()
    f = task.split.forget.all()
    with torch.no_grad():
        ls, lt = model(r["x"]), teacher(r["x"])
        want_min = 0.7 * F.cross_entropy(ls, r["y"]) + 0.3 * distill_kl(ls, lt, 3.0)
        want_max = -distill_kl(model(f["x"]), teacher(f["x"]), 3.0)
    got_min, _ = m.min_loss({"retain": r}, ctx("min"))
    got_max, _ = m.max_loss({"forget": f}, ctx("max"))
    assert float(got_min.detach()) == pytest.approx(float(want_min), abs=1e-6)
    assert float(got_max.detach()) == pytest.approx(float(want_max), abs=1e-6)
    assert float(want_max) < -1e-3


def test_scrub_run_changes_student_keeps_teacher():
    model, task = _scrub_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = SCRUB(SCRUB.Config(epochs=2, msteps=1, batch_size=4, forget_batch_size=4, lr=1e-2))
    seen = {}
    finalize = m.finalize

    def capture(t):
        seen["teacher"] = m.teacher
        finalize(t)

    m.finalize = capture
    res = m.run(task)
    # epoch 0: max over 4 forget (1 step) + min over 12 retain (3 steps); epoch 1: min only (3 steps)
    assert res.steps == 7
    assert [h["phase"] for h in res.history] == ["max"] + ["min"] * 6
    for k, v in seen["teacher"].state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(model.weight, before["weight"])

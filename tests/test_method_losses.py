"""Losses of FT, GA, RL (joint / sequential / concat), SalUn, l1-sparse and retrain against hand computations.

The model is an ``nn.Linear(2, 3)`` with weights set explicitly; cross-entropy is written out with
``math.log`` / ``math.exp`` so that a wrong sign, a missing term or a wrong weight shows up as a number.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, EngineConfig, StepContext
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import UnlearnkitError
from unlearnkit.families.base import reinitialize
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task, saliency_mask
from unlearnkit.methods.ft import FT, FTConfig
from unlearnkit.methods.ga import GA, GAConfig
from unlearnkit.methods.l1_sparse import L1Sparse, L1SparseConfig
from unlearnkit.methods.retrain import Retrain, RetrainConfig
from unlearnkit.methods.rl import RL, RLConfig
from unlearnkit.methods.salun import SalUn, SalUnConfig

torch.set_num_threads(1)

W = [[1.0, -0.5], [0.2, 0.3], [-0.7, 0.8]]
B = [0.1, -0.2, 0.05]

FORGET_X = [[1.0, 2.0], [-1.0, 0.5]]
FORGET_Y = [0, 2]
RETAIN_X = [[0.5, -1.0], [2.0, 1.0], [0.0, 0.0]]
RETAIN_Y = [1, 0, 2]
TEST_X = [[1.0, 1.0], [-0.5, 0.25]]
TEST_Y = [1, 0]


# -- hand computations ------------------------------------------------------------------------------
def hand_logits(x: list[float]) -> list[float]:
    return [sum(W[k][j] * x[j] for j in range(2)) + B[k] for k in range(3)]


def hand_ce(x: list[float], y: int) -> float:
    z = hand_logits(x)
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def hand_mean_ce(xs: list[list[float]], ys: list[int]) -> float:
    return sum(hand_ce(x, y) for x, y in zip(xs, ys, strict=True)) / len(xs)


def hand_l1() -> float:
    return sum(abs(v) for row in W for v in row) + sum(abs(v) for v in B)


def wrong_labellings(ys: list[int], k: int = 3) -> list[tuple[int, ...]]:
    """Every y' with y'_i != y_i for all i."""
    return list(itertools.product(*[[c for c in range(k) if c != y] for y in ys]))


# -- fixtures ---------------------------------------------------------------------------------------
def make_linear() -> nn.Linear:
    m = nn.Linear(2, 3)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(W))
        m.bias.copy_(torch.tensor(B))
    return m


def make_set(xs, ys, start: int) -> ExampleSet:
    return ExampleSet(
        {"x": torch.tensor(xs, dtype=torch.float32), "y": torch.tensor(ys, dtype=torch.long)},
        ids=list(range(start, start + len(xs))),
    )


def make_split() -> Split:
    return Split(
        make_set(FORGET_X, FORGET_Y, 0), make_set(RETAIN_X, RETAIN_Y, 10), make_set(TEST_X, TEST_Y, 100)
    )


def make_task(model: nn.Module | None = None, split: Split | None = None, **kw) -> Task:
    return Task(
        VisionFamily(num_classes=3),
        model if model is not None else make_linear(),
        split if split is not None else make_split(),
        Engine(EngineConfig(progress=False)),
        seed=0,
        **kw,
    )


def ctx(epoch: int = 0, epochs: int = 10, step: int = 0, phase: str = "p", seed: int = 0) -> StepContext:
    return StepContext(epoch, epochs, step, phase, torch.Generator().manual_seed(seed))


def attach(method, task: Task):
    method.task = task
    return method


# -- FT and GA --------------------------------------------------------------------------------------
def test_ft_loss_is_mean_retain_ce():
    task = make_task()
    m = attach(FT(), task)
    phases = m.phases(0)
    assert [(p.name, p.streams) for p in phases] == [("retain", ("retain",))]
    assert set(m.streams(task)) == {"retain"}
    loss, _ = phases[0].loss({"retain": task.split.retain.all()}, ctx())
    assert loss.item() == pytest.approx(hand_mean_ce(RETAIN_X, RETAIN_Y), rel=1e-6)


def test_ga_loss_is_minus_mean_forget_ce():
    task = make_task()
    m = attach(GA(), task)
    phases = m.phases(0)
    assert [(p.name, p.streams) for p in phases] == [("forget", ("forget",))]
    assert set(m.streams(task)) == {"forget"}
    loss, _ = phases[0].loss({"forget": task.split.forget.all()}, ctx())
    expected = -hand_mean_ce(FORGET_X, FORGET_Y)
    assert expected < 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ft_and_ga_defaults():
    assert (FTConfig().epochs, FTConfig().lr) == (10, 0.01)
    assert (GAConfig().epochs, GAConfig().lr) == (5, 1e-4)


# -- relabelling ------------------------------------------------------------------------------------
def test_relabel_other_never_returns_y_and_covers_every_other_class():
    k = 5
    fam = VisionFamily(num_classes=k, relabel_mode="other")
    y = torch.arange(k).repeat(400)
    new = fam.relabel({"y": y}, torch.Generator().manual_seed(0))["y"]
    assert new.shape == y.shape
    assert not (new == y).any()
    for c in range(k):
        seen = set(new[y == c].tolist())
        assert seen == set(range(k)) - {c}
        # roughly uniform over the k-1 wrong classes (400 draws each, expectation 100)
        counts = torch.bincount(new[y == c], minlength=k)
        assert counts[c] == 0
        assert int(counts.sum()) == 400
        assert all(60 <= int(counts[o]) <= 140 for o in range(k) if o != c)


def test_relabel_any_can_return_y_and_covers_every_class():
    k = 4
    fam = VisionFamily(num_classes=k, relabel_mode="any")
    y = torch.arange(k).repeat(300)
    new = fam.relabel({"y": y}, torch.Generator().manual_seed(0))["y"]
    assert (new == y).any()
    for c in range(k):
        assert set(new[y == c].tolist()) == set(range(k))


def test_relabel_keeps_other_columns_and_is_seeded():
    fam = VisionFamily(num_classes=3)
    batch = make_split().forget.all()
    a = fam.relabel(batch, torch.Generator().manual_seed(7))
    b = fam.relabel(batch, torch.Generator().manual_seed(7))
    assert torch.equal(a["y"], b["y"])
    assert torch.equal(a["x"], batch["x"]) and torch.equal(a["id"], batch["id"])
    assert torch.equal(batch["y"], torch.tensor(FORGET_Y))  # the input batch is not modified


# -- RL ---------------------------------------------------------------------------------------------
def test_rl_joint_loss_is_relabelled_forget_ce_plus_alpha_retain_ce():
    alpha = 0.7
    task = make_task()
    m = attach(RL(RLConfig(alpha=alpha, schedule="joint")), task)
    phases = m.phases(0)
    assert len(phases) == 1
    ph = phases[0]
    assert (ph.name, ph.streams, ph.length_stream) == ("joint", ("forget", "retain"), "forget")
    assert set(m.streams(task)) == {"forget", "retain"}
    batches = {"forget": task.split.forget.all(), "retain": task.split.retain.all()}
    loss, logs = ph.loss(batches, ctx(seed=3))

    retain_ce = hand_mean_ce(RETAIN_X, RETAIN_Y)
    candidates = {
        yp: hand_mean_ce(FORGET_X, list(yp)) + alpha * retain_ce for yp in wrong_labellings(FORGET_Y)
    }
    matches = [yp for yp, v in candidates.items() if abs(v - loss.item()) < 1e-5]
    assert len(matches) == 1, (loss.item(), candidates)
    # the relabelled target is the one the family draws with the same generator state
    yp = VisionFamily(num_classes=3).relabel(batches["forget"], torch.Generator().manual_seed(3))["y"]
    assert tuple(yp.tolist()) == matches[0]
    assert logs["forget_loss"] == pytest.approx(hand_mean_ce(FORGET_X, list(matches[0])), rel=1e-5)
    assert logs["retain_loss"] == pytest.approx(retain_ce, rel=1e-5)


def test_rl_forget_targets_are_never_the_true_labels_over_many_steps():
    task = make_task()
    m = attach(RL(RLConfig(alpha=0.0, schedule="joint")), task)
    ph = m.phases(0)[0]
    batches = {"forget": task.split.forget.all(), "retain": task.split.retain.all()}
    allowed = [hand_mean_ce(FORGET_X, list(yp)) for yp in wrong_labellings(FORGET_Y)]
    true_loss = hand_mean_ce(FORGET_X, FORGET_Y)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for step in range(40):
        loss, _ = ph.loss(batches, StepContext(0, 1, step, "joint", gen))
        hits = [i for i, v in enumerate(allowed) if abs(v - loss.item()) < 1e-5]
        assert len(hits) == 1 and abs(loss.item() - true_loss) > 1e-3
        seen.add(hits[0])
    assert seen == set(range(len(allowed)))  # the generator advances: all wrong labellings occur


def test_rl_sequential_has_a_forget_pass_then_a_retain_pass():
    alpha = 0.5
    task = make_task()
    m = attach(RL(RLConfig(alpha=alpha, schedule="sequential")), task)
    phases = m.phases(0)
    assert [(p.name, p.streams, p.length_stream) for p in phases] == [
        ("forget", ("forget",), "forget"),
        ("retain", ("retain",), "retain"),
    ]
    assert set(m.streams(task)) == {"forget", "retain"}
    lf, _ = phases[0].loss({"forget": task.split.forget.all()}, ctx(seed=1))
    allowed = [hand_mean_ce(FORGET_X, list(yp)) for yp in wrong_labellings(FORGET_Y)]
    assert sum(abs(v - lf.item()) < 1e-5 for v in allowed) == 1
    lr, _ = phases[1].loss({"retain": task.split.retain.all()}, ctx())
    assert lr.item() == pytest.approx(alpha * hand_mean_ce(RETAIN_X, RETAIN_Y), rel=1e-6)


def test_rl_concat_stream_marks_forget_rows():
    task = make_task()
    m = attach(RL(RLConfig(schedule="concat")), task)
    streams = m.streams(task)
    assert set(streams) == {"train"}
    mixed = streams["train"]
    assert len(mixed) == len(FORGET_X) + len(RETAIN_X)
    assert mixed.ids.tolist() == [0, 1, 10, 11, 12]
    assert mixed.columns["is_forget"].tolist() == [1, 1, 0, 0, 0]
    assert torch.equal(mixed.labels, torch.tensor(FORGET_Y + RETAIN_Y))
    phases = m.phases(0)
    assert [(p.name, p.streams) for p in phases] == [("concat", ("train",))]


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_rl_concat_loss_weights_forget_one_and_retain_alpha(alpha):
    task = make_task()
    m = attach(RL(RLConfig(schedule="concat", alpha=alpha)), task)
    batch = m.streams(task)["train"].all()
    loss, _ = m.phases(0)[0].loss({"train": batch}, ctx(seed=5))
    n = len(FORGET_X) + len(RETAIN_X)
    retain_sum = sum(hand_ce(x, y) for x, y in zip(RETAIN_X, RETAIN_Y, strict=True))
    candidates = {
        yp: (sum(hand_ce(x, y) for x, y in zip(FORGET_X, yp, strict=True)) + alpha * retain_sum) / n
        for yp in wrong_labellings(FORGET_Y)
    }
    matches = [yp for yp, v in candidates.items() if abs(v - loss.item()) < 1e-5]
    assert len(matches) == 1, (loss.item(), candidates)
    drawn = VisionFamily(num_classes=3).relabel(batch, torch.Generator().manual_seed(5))["y"]
    assert tuple(drawn[:2].tolist()) == matches[0]


def test_rl_bad_schedule_is_rejected():
    with pytest.raises(UnlearnkitError):
        RLConfig(schedule="alternating").check()


# -- SalUn ------------------------------------------------------------------------------------------
def test_salun_defaults():
    cfg = SalUnConfig()
    assert cfg.lr == 0.013
    assert cfg.mask_ratio == 0.5
    assert (cfg.epochs, cfg.alpha, cfg.schedule) == (10, 1.0, RLConfig().schedule)
    assert isinstance(SalUn(), RL)


def test_salun_run_leaves_masked_out_weights_bitwise_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 2, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    data = ExampleSet({"x": x, "y": y})
    split = Split(data.take(torch.arange(6)), data.take(torch.arange(6, 24)), data.take(torch.arange(4)))
    task = make_task(model, split)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_mask = saliency_mask(make_task(copy.deepcopy(model), split), 0.5, 64)

    method = SalUn(SalUnConfig(epochs=3, lr=0.05))
    method.run(task)

    assert method.mask is not None
    n_total = sum(p.numel() for p in before.values())
    assert sum(int(m.sum()) for m in method.mask.masks.values()) == n_total // 2
    for n, p in model.named_parameters():
        m = method.mask.masks[n]
        assert torch.equal(m, expected_mask.masks[n])
        assert torch.equal(p.detach()[~m], before[n][~m]), n
        assert (p.detach()[m] != before[n][m]).all(), n


# -- l1-sparse --------------------------------------------------------------------------------------
def test_l1_sparse_loss_with_decaying_gamma():
    alpha, epochs, no_l1 = 0.01, 5, 2
    task = make_task()
    m = attach(L1Sparse(L1SparseConfig(alpha=alpha, epochs=epochs, no_l1_epochs=no_l1)), task)
    assert set(m.streams(task)) == {"retain"}
    ce = hand_mean_ce(RETAIN_X, RETAIN_Y)
    l1 = hand_l1()
    span = epochs - no_l1
    expected_gammas = [alpha, alpha * 2 / 3, alpha / 3, 0.0, 0.0]
    for e in range(epochs):
        gamma = alpha * (1 - e / span) if e < span else 0.0
        assert gamma == pytest.approx(expected_gammas[e])
        phases = m.phases(e)
        assert [(p.name, p.streams) for p in phases] == [("retain", ("retain",))]
        loss, logs = phases[0].loss({"retain": task.split.retain.all()}, ctx(epoch=e, epochs=epochs))
        assert loss.item() == pytest.approx(ce + gamma * l1, rel=1e-6), e
        assert logs["gamma"] == pytest.approx(gamma)
        assert m.gamma(e) == pytest.approx(gamma)


def test_l1_sparse_default_schedule_without_no_l1_epochs():
    task = make_task()
    m = attach(L1Sparse(L1SparseConfig(alpha=0.2, epochs=4)), task)
    ce, l1 = hand_mean_ce(RETAIN_X, RETAIN_Y), hand_l1()
    for e, gamma in enumerate([0.2, 0.15, 0.1, 0.05]):
        loss, _ = m.phases(e)[0].loss({"retain": task.split.retain.all()}, ctx(epoch=e, epochs=4))
        assert loss.item() == pytest.approx(ce + gamma * l1, rel=1e-6)
    assert L1SparseConfig().alpha == 5e-4 and L1SparseConfig().no_l1_epochs == 0


def test_l1_sparse_gradient_includes_sign_of_weights():
    alpha = 0.3
    task = make_task()
    m = attach(L1Sparse(L1SparseConfig(alpha=alpha, epochs=2)), task)
    batch = {"retain": task.split.retain.all()}
    loss, _ = m.phases(0)[0].loss(batch, ctx(epoch=0, epochs=2))
    g_total = torch.autograd.grad(loss, task.model.weight)[0]
    ce = task.family.per_example_loss(task.model, batch["retain"]).mean()
    g_ce = torch.autograd.grad(ce, task.model.weight)[0]
    assert torch.allclose(g_total - g_ce, alpha * torch.sign(torch.tensor(W)), atol=1e-6)


# -- retrain ----------------------------------------------------------------------------------------
def test_retrain_streams_and_phase():
    task = make_task()
    m = attach(Retrain(), task)
    assert set(m.streams(task)) == {"retain"}
    assert m.streams(task)["retain"] is task.split.retain
    ph = m.phases(0)
    assert [(p.name, p.streams) for p in ph] == [("retain", ("retain",))]
    loss, _ = ph[0].loss({"retain": task.split.retain.all()}, ctx())
    assert loss.item() == pytest.approx(hand_mean_ce(RETAIN_X, RETAIN_Y), rel=1e-6)
    assert Retrain.exact


def test_retrain_reinitialises_from_the_seed():
    # lr 0 isolates the re-initialisation: the weights after the run are exactly reinitialize(model, seed)
    task = make_task()
    Retrain(RetrainConfig(epochs=1, lr=0.0, use_train_recipe=False)).run(task)
    ref = reinitialize(make_linear(), 0)
    assert not torch.equal(task.model.weight.detach(), torch.tensor(W))
    assert torch.equal(task.model.weight.detach(), ref.weight.detach())
    assert torch.equal(task.model.bias.detach(), ref.bias.detach())


def test_retrain_uses_model_factory_when_given():
    def factory():
        torch.manual_seed(123)
        return nn.Linear(2, 3)

    task = make_task(model_factory=factory)
    Retrain(RetrainConfig(epochs=1, lr=0.0, use_train_recipe=False)).run(task)
    assert torch.equal(task.model.weight.detach(), factory().weight.detach())


def test_retrain_result_depends_only_on_the_retain_set():
    cfg = dict(epochs=3, lr=0.1, use_train_recipe=False)
    task_a = make_task()
    other_forget = make_set([[5.0, -3.0], [9.0, 9.0]], [1, 1], 0)
    task_b = make_task(
        split=Split(other_forget, make_set(RETAIN_X, RETAIN_Y, 10), make_set(TEST_X, TEST_Y, 100))
    )
    with torch.no_grad():
        task_b.model.weight.mul_(-3)  # a different original model: retrain must not care
    Retrain(RetrainConfig(**cfg)).run(task_a)
    Retrain(RetrainConfig(**cfg)).run(task_b)
    orig = torch.tensor(W)
    assert not torch.equal(task_a.model.weight.detach(), orig)
    assert torch.equal(task_a.model.weight.detach(), task_b.model.weight.detach())
    assert torch.equal(task_a.model.bias.detach(), task_b.model.bias.detach())


def test_retrain_copies_train_recipe():
    spec = OptimSpec(
        epochs=2,
        lr=0.05,
        optimizer="adam",
        momentum=0.5,
        weight_decay=0.0,
        scheduler="step",
        milestones=[0.5],
    )
    task = make_task(train_spec=spec)
    method = Retrain(RetrainConfig(epochs=7, lr=0.3))
    result = method.run(task)
    for k in ("epochs", "lr", "optimizer", "momentum", "weight_decay", "scheduler", "milestones"):
        assert getattr(method.cfg, k) == getattr(spec, k), k
    assert result.steps == 2  # two epochs of one retain batch


def test_retrain_ignores_train_recipe_when_disabled():
    spec = OptimSpec(epochs=2, lr=0.05, optimizer="adam")
    task = make_task(train_spec=spec)
    method = Retrain(RetrainConfig(epochs=3, lr=0.3, use_train_recipe=False))
    result = method.run(task)
    assert (method.cfg.epochs, method.cfg.lr, method.cfg.optimizer) == (3, 0.3, "sgd")
    assert result.steps == 3


def test_retrain_with_zero_epochs_raises():
    with pytest.raises(UnlearnkitError):
        Retrain(RetrainConfig(epochs=0, use_train_recipe=False)).run(make_task())


# -- short runs ------------------------------------------------------------------------------------
def separable_task() -> Task:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 3.0], [0.0, -3.0]])
    y = torch.arange(3).repeat(10)
    x = centers[y] + 0.3 * torch.randn(30, 2, generator=g)
    data = ExampleSet({"x": x, "y": y})
    split = Split(data.take(torch.arange(6)), data.take(torch.arange(6, 30)), data.take(torch.arange(3)))
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    # train the original model first so that GA has something to undo
    Engine(EngineConfig(progress=False)).fit(
        model, {"train": split.train}, lambda e: [_ce_phase("train", model)], OptimSpec(epochs=5, lr=0.05)
    )
    return make_task(model, split)


def _ce_phase(stream, model):
    from unlearnkit.engine.loop import Phase

    fam = VisionFamily(num_classes=3)
    return Phase(stream, (stream,), lambda b, c: (fam.per_example_loss(model, b[stream]).mean(), {}))


def _mean_ce(task: Task, data: ExampleSet) -> float:
    with torch.no_grad():
        return float(task.family.per_example_loss(task.model, data.all()).mean())


def test_ga_increases_the_forget_loss():
    task = separable_task()
    before_f, before_r = _mean_ce(task, task.split.forget), _mean_ce(task, task.split.retain)
    result = GA(GAConfig(epochs=5, lr=0.2)).run(task)
    after_f = _mean_ce(task, task.split.forget)
    assert result.steps == 5
    assert before_r < 0.5  # the original model had learnt the task
    assert after_f > 2 * before_f, (before_f, after_f)


def test_ft_decreases_the_retain_loss():
    torch.manual_seed(1)
    task = make_task(nn.Linear(2, 3), separable_task().split)
    before = _mean_ce(task, task.split.retain)
    FT(FTConfig(epochs=5, lr=0.1)).run(task)
    assert _mean_ce(task, task.split.retain) < before - 0.1

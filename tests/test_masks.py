"""WeightMask: global top-k construction, gradient saliency, exact freezing under momentum/weight decay/Adam,
save/load round trip, and SalUn's ``saliency_mask`` against a manual computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unlearnkit.engine.loop as loop
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.masks import WeightMask
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task, saliency_mask

torch.set_num_threads(1)


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(2, 4), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(4, 3))
    return nn.Sequential(*layers)


def data(n: int = 20, seed: int = 0, start: int = 0) -> ExampleSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return ExampleSet({"x": x, "y": y}, ids=list(range(start, start + n)))


def manual_topk(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores.values()])
    order = torch.argsort(flat, descending=True)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i : i + s.numel()].view(s.shape)
        i += s.numel()
    return out


# -- construction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1, 1.0])
def test_from_scores_is_global_top_k(ratio):
    g = torch.Generator().manual_seed(0)
    # very different scales per tensor: a per-tensor top-k would give a different answer
    scores = {
        "a": torch.randn(3, 4, generator=g).abs() * 10,
        "b": torch.randn(5, generator=g).abs(),
        "c": torch.randn(2, 2, 2, generator=g).abs() * 0.1,
    }
    n = sum(s.numel() for s in scores.values())
    k = int(ratio * n)
    mask = WeightMask.from_scores(scores, ratio)
    expected = manual_topk(scores, k)
    assert set(mask.masks) == set(scores)
    for name in scores:
        assert mask.masks[name].dtype == torch.bool
        assert mask.masks[name].shape == scores[name].shape
        assert torch.equal(mask.masks[name], expected[name]), name
    assert sum(int(m.sum()) for m in mask.masks.values()) == k
    assert mask.density == pytest.approx(k / n)


def test_from_scores_ratio_half_gives_floor_half_ones():
    scores = {"w": torch.arange(7.0), "b": torch.tensor([100.0, -1.0])}  # N = 9 -> 4 ones
    mask = WeightMask.from_scores(scores, 0.5)
    assert sum(int(m.sum()) for m in mask.masks.values()) == 4
    assert mask.masks["b"].tolist() == [True, False]
    assert mask.masks["w"].tolist() == [False, False, False, False, True, True, True]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_from_scores_rejects_bad_ratio(ratio):
    with pytest.raises(ConfigError):
        WeightMask.from_scores({"w": torch.ones(4)}, ratio)


def test_from_gradients_is_abs_of_summed_batch_gradients():
    model = mlp(0)
    ds = data(12)
    batches = [ds.take(torch.arange(i, i + 4)).all() for i in range(0, 12, 4)]

    def losses():
        for b in batches:
            yield -F.cross_entropy(model(b["x"]), b["y"])

    params = dict(model.named_parameters())
    summed = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        loss = -F.cross_entropy(model(b["x"]), b["y"])
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            summed[n] += g
    scores = {n: g.abs() for n, g in summed.items()}
    n_total = sum(p.numel() for p in params.values())

    # |Σ g| differs from Σ |g| here, so a wrong reduction would pick other weights
    abs_sum = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        loss = -F.cross_entropy(model(b["x"]), b["y"])
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            abs_sum[n] += g.abs()

    for ratio in (0.5, 0.25):
        k = int(ratio * n_total)
        expected = manual_topk(scores, k)
        for source in (losses, list(losses())):  # a callable or an iterable of losses
            mask = WeightMask.from_gradients(model, source, ratio)
            for n in params:
                assert torch.equal(mask.masks[n], expected[n]), (ratio, n)
    wrong = manual_topk(abs_sum, int(0.5 * n_total))
    mask = WeightMask.from_gradients(model, losses, 0.5)
    assert any(not torch.equal(mask.masks[n], wrong[n]) for n in params)
    assert all(p.grad is None for p in model.parameters())  # from_gradients does not touch .grad


# -- exact freezing during training -----------------------------------------------------------------
OPTIMIZERS = [
    dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
    dict(optimizer="adam", lr=0.05, weight_decay=1e-2),
    dict(optimizer="adamw", lr=0.05, weight_decay=1e-1),
]
STATE_KEYS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}


def _capture_optimizer(monkeypatch) -> list[torch.optim.Optimizer]:
    made: list[torch.optim.Optimizer] = []
    real = loop.build_optimizer

    def capture(params, spec):
        opt = real(params, spec)
        made.append(opt)
        return opt

    monkeypatch.setattr(loop, "build_optimizer", capture)
    return made


def _ce_phase(model):
    return lambda e: [
        Phase(
            "train", ("train",), lambda b, c: (F.cross_entropy(model(b["train"]["x"]), b["train"]["y"]), {})
        )
    ]


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=[s["optimizer"] for s in OPTIMIZERS])
def test_masked_out_weights_stay_bitwise_equal(spec, monkeypatch):
    made = _capture_optimizer(monkeypatch)
    model = mlp(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    mask = WeightMask.from_scores(
        {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}, 0.5
    )
    engine = Engine(EngineConfig(progress=False, batch_size=5))
    result = engine.fit(model, {"train": data(20)}, _ce_phase(model), OptimSpec(epochs=3, **spec), mask=mask)
    assert result.steps == 12

    opt = made[0]
    assert isinstance(
        opt, {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec["optimizer"]]
    )
    for n, p in model.named_parameters():
        m = mask.masks[n]
        assert torch.equal(p.detach()[~m], before[n][~m]), n
        assert (p.detach()[m] != before[n][m]).all(), n
        state = opt.state[p]
        for key in STATE_KEYS[spec["optimizer"]]:
            buf = state[key]
            assert torch.equal(buf[~m], torch.zeros_like(buf[~m])), (n, key)
            if m.any():
                assert (buf[m] != 0).any(), (n, key)
    assert 0 < mask.density < 1


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=[s["optimizer"] for s in OPTIMIZERS])
def test_without_mask_the_same_weights_would_move(spec):
    # control for the test above: with these settings every weight moves when nothing is masked
    model = mlp(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Engine(EngineConfig(progress=False, batch_size=5)).fit(
        model, {"train": data(20)}, _ce_phase(model), OptimSpec(epochs=3, **spec)
    )
    for n, p in model.named_parameters():
        assert (p.detach() != before[n]).all(), n


def test_partial_mask_leaves_other_parameters_free():
    model = mlp(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = WeightMask({"0.weight": torch.zeros(4, 2, dtype=torch.bool)})
    Engine(EngineConfig(progress=False, batch_size=5)).fit(
        model, {"train": data(20)}, _ce_phase(model), OptimSpec(epochs=2, lr=0.1), mask=mask
    )
    params = dict(model.named_parameters())
    assert torch.equal(params["0.weight"].detach(), before["0.weight"])
    for n in ("0.bias", "2.weight", "2.bias"):
        assert not torch.equal(params[n].detach(), before[n])


# -- persistence and validation ---------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = WeightMask.from_scores(
        {"a.weight": torch.rand(3, 4, generator=g), "a.bias": torch.rand(3, generator=g)}, 0.4
    )
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    loaded = WeightMask.load(path)
    assert set(loaded.masks) == set(mask.masks)
    for n in mask.masks:
        assert loaded.masks[n].dtype == torch.bool
        assert torch.equal(loaded.masks[n], mask.masks[n])
    assert loaded.density == mask.density


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(UnlearnkitError, match="not found"):
        WeightMask.load(tmp_path / "nope.safetensors")


def test_shape_mismatch_raises():
    model = nn.Linear(2, 3)
    with pytest.raises(UnlearnkitError, match="shape"):
        WeightMask({"weight": torch.ones(2, 3, dtype=torch.bool)}).attach(model)


def test_unknown_parameter_name_raises():
    model = nn.Linear(2, 3)
    with pytest.raises(UnlearnkitError, match="not parameters"):
        WeightMask({"fc.weight": torch.ones(3, 2, dtype=torch.bool)}).attach(model)


def test_engine_rejects_a_mask_for_another_model():
    model = nn.Linear(2, 3)
    mask = WeightMask({"weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(UnlearnkitError):
        Engine(EngineConfig(progress=False)).fit(
            model, {"train": data(4)}, _ce_phase(model), OptimSpec(epochs=1), mask=mask
        )


# -- SalUn saliency map ---------------------------------------------------------------------------
def test_saliency_mask_matches_manual_ga_gradient_in_eval_mode():
    model = mlp(4, dropout=0.5)
    forget = data(7, seed=1, start=0)
    split = Split(forget, data(10, seed=2, start=100), data(4, seed=3, start=200))
    task = Task(VisionFamily(num_classes=3), model, split, Engine(EngineConfig(progress=False)), seed=0)
    model.train()

    # manual: eval mode, GA loss (−mean CE) per forget batch of 3 in dataset order, gradients summed
    reference = mlp(4, dropout=0.5)
    reference.eval()
    params = dict(reference.named_parameters())
    summed = {n: torch.zeros_like(p) for n, p in params.items()}
    x, y = forget.columns["x"], forget.columns["y"]
    for i in range(0, 7, 3):
        loss = -F.cross_entropy(reference(x[i : i + 3]), y[i : i + 3])
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            summed[n] += g
    scores = {n: g.abs() for n, g in summed.items()}
    n_total = sum(p.numel() for p in params.values())

    for ratio in (0.5, 0.2):
        mask = saliency_mask(task, ratio, batch_size=3)
        expected = manual_topk(scores, int(ratio * n_total))
        for n in params:
            assert torch.equal(mask.masks[n], expected[n]), (ratio, n)
    assert model.training  # the training flag is restored

    # the weights are read, not changed, and no gradient is left behind
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n].detach())
        assert p.grad is None

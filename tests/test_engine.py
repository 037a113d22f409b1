"""The training loop: determinism, stream cycling, the NaN guard, clipping, schedules, SignSGD, logs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unlearnkit.engine.loop as loop
from unlearnkit.data.examples import ExampleSet
from unlearnkit.engine.loop import DivergenceError, Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec, SignSGD, build_optimizer, build_scheduler
from unlearnkit.errors import ConfigError, UnlearnkitError

torch.set_num_threads(1)


def data(n: int, seed: int = 0, start: int = 0) -> ExampleSet:
    g = torch.Generator().manual_seed(seed)
    return ExampleSet(
        {"x": torch.randn(n, 2, generator=g), "y": torch.randint(0, 3, (n,), generator=g)},
        ids=list(range(start, start + n)),
    )


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))


def ce_phases(model, stream="train"):
    def loss(b, ctx):
        return F.cross_entropy(model(b[stream]["x"]), b[stream]["y"]), {}

    return lambda e: [Phase(stream, (stream,), loss)]


def engine(**kw) -> Engine:
    return Engine(EngineConfig(progress=False, **kw))


def capture_optimizer(monkeypatch) -> list[torch.optim.Optimizer]:
    made: list[torch.optim.Optimizer] = []
    real = loop.build_optimizer

    def capture(params, spec):
        opt = real(params, spec)
        made.append(opt)
        return opt

    monkeypatch.setattr(loop, "build_optimizer", capture)
    return made


# -- determinism -------------------------------------------------------------------------------------
def _train(seed: int) -> dict[str, torch.Tensor]:
    model = mlp(0)
    engine(batch_size=4).fit(
        model, {"train": data(18)}, ce_phases(model), OptimSpec(epochs=3, lr=0.1), seed=seed
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_bitwise_identical_weights():
    a, b = _train(5), _train(5)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_different_seeds_give_different_weights():
    a, b = _train(5), _train(6)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_engine_seed_is_the_default_fit_seed():
    model = mlp(0)
    engine(batch_size=4, seed=5).fit(
        model, {"train": data(18)}, ce_phases(model), OptimSpec(epochs=3, lr=0.1)
    )
    ref = _train(5)
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)


# -- streams -----------------------------------------------------------------------------------------
def _record_streams(driver: str, epochs: int = 3):
    forget, retain = data(5, 1, start=0), data(12, 2, start=100)
    seen: list[tuple[int, list[int], list[int]]] = []
    model = nn.Linear(2, 3)

    def loss(b, ctx):
        seen.append((ctx.epoch, b["forget"]["id"].tolist(), b["retain"]["id"].tolist()))
        assert ctx.phase == "joint"
        return F.cross_entropy(model(b["forget"]["x"]), b["forget"]["y"]), {}

    res = engine(batch_size=2).fit(
        model,
        {"forget": forget, "retain": retain},
        lambda e: [Phase("joint", ("forget", "retain"), loss, driver=driver)],
        OptimSpec(epochs=epochs, lr=0.01),
    )
    return res, seen


def test_driver_stream_sets_the_epoch_length_and_the_other_stream_cycles():
    res, seen = _record_streams("forget")
    # 5 forget examples in batches of 2 -> 3 steps per epoch
    assert res.steps == 9
    assert [sum(1 for e, *_ in seen if e == ep) for ep in range(3)] == [3, 3, 3]
    # each epoch sees the whole forget set once
    for ep in range(3):
        ids = sorted(i for e, f, _ in seen if e == ep for i in f)
        assert ids == list(range(5))
    # retain (6 batches) keeps cycling across epochs: steps 0..5 are one full pass, steps 6..8 start the next
    first_pass = [i for _, _, r in seen[:6] for i in r]
    assert sorted(first_pass) == list(range(100, 112))
    assert all(len(r) == 2 for _, _, r in seen)
    second = [i for _, _, r in seen[6:] for i in r]
    assert len(set(second)) == 6


def test_driver_retain_runs_over_the_retain_set():
    res, seen = _record_streams("retain", epochs=2)
    assert res.steps == 12
    for ep in range(2):
        assert sorted(i for e, _, r in seen if e == ep for i in r) == list(range(100, 112))


def test_missing_stream_and_empty_set_are_reported():
    model = nn.Linear(2, 3)
    with pytest.raises(ConfigError, match="retain"):
        engine().fit(model, {"train": data(4)}, ce_phases(model, "retain"), OptimSpec(epochs=1))
    empty = data(4).take(torch.tensor([], dtype=torch.long))
    with pytest.raises(UnlearnkitError, match="empty"):
        engine().fit(model, {"train": empty}, ce_phases(model), OptimSpec(epochs=1))


# -- NaN guard ----------------------------------------------------------------------------------------
def test_nan_loss_raises_divergence_error_mentioning_the_learning_rate():
    model = nn.Linear(2, 3)
    calls = []

    def loss(b, ctx):
        calls.append(ctx.step)
        out = model(b["train"]["x"]).sum()
        return (out * float("nan") if ctx.step == 2 else out), {}

    with pytest.raises(DivergenceError) as info:
        engine(batch_size=2).fit(
            model,
            {"train": data(8)},
            lambda e: [Phase("p", ("train",), loss)],
            OptimSpec(epochs=1, lr=0.123),
            desc="ga",
        )
    assert isinstance(info.value, UnlearnkitError)
    msg = str(info.value)
    assert "learning rate" in msg and "0.123" in msg and "nan" in msg
    assert calls == [0, 1, 2]


def test_infinite_loss_raises_and_guard_can_be_disabled():
    model = nn.Linear(2, 3)

    def loss(b, ctx):
        return model(b["train"]["x"]).sum() * float("inf"), {}

    phases = lambda e: [Phase("p", ("train",), loss)]  # noqa: E731
    with pytest.raises(DivergenceError):
        engine().fit(model, {"train": data(4)}, phases, OptimSpec(epochs=1))
    res = engine(nan_guard=False).fit(nn.Linear(2, 3), {"train": data(4)}, phases, OptimSpec(epochs=1))
    assert res.steps == 1


# -- clipping -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [None, 0.5, 1e6])
def test_max_grad_norm_clips_the_update(max_norm):
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    ds = data(6)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = ds.columns["x"], ds.columns["y"]
    grads = torch.autograd.grad(10 * F.cross_entropy(model(x), y), list(model.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert norm > 0.5

    def loss(b, ctx):
        return 10 * F.cross_entropy(model(b["train"]["x"]), b["train"]["y"]), {}

    lr = 0.1
    spec = OptimSpec(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, max_grad_norm=max_norm)
    engine(batch_size=6).fit(model, {"train": ds}, lambda e: [Phase("p", ("train",), loss)], spec)
    coef = 1.0 if not max_norm else min(1.0, max_norm / (float(norm) + 1e-6))
    updates = [(b - p.detach()) / lr for b, p in zip(before, model.parameters(), strict=True)]
    for u, g in zip(updates, grads, strict=True):
        torch.testing.assert_close(u, coef * g, rtol=1e-4, atol=1e-6)
    update_norm = float(torch.sqrt(sum((u**2).sum() for u in updates)))
    if max_norm == 0.5:
        assert update_norm == pytest.approx(0.5, rel=1e-4)
    else:
        assert update_norm == pytest.approx(float(norm), rel=1e-4)


# -- schedules ----------------------------------------------------------------------------------------
def _lrs_per_epoch(monkeypatch, spec: OptimSpec) -> list[float]:
    made = capture_optimizer(monkeypatch)
    model = nn.Linear(2, 3)
    seen: dict[int, list[float]] = {}

    def loss(b, ctx):
        seen.setdefault(ctx.epoch, []).append(made[0].param_groups[0]["lr"])
        return F.cross_entropy(model(b["train"]["x"]), b["train"]["y"]), {}

    engine(batch_size=2).fit(model, {"train": data(4)}, lambda e: [Phase("p", ("train",), loss)], spec)
    assert all(len(set(v)) == 1 and len(v) == 2 for v in seen.values())  # constant within an epoch
    return [seen[e][0] for e in range(spec.epochs)]


def test_cosine_schedule_per_epoch(monkeypatch):
    epochs, lr = 5, 0.2
    got = _lrs_per_epoch(monkeypatch, OptimSpec(epochs=epochs, lr=lr, scheduler="cosine"))
    want = [lr * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(lr)


def test_step_schedule_per_epoch(monkeypatch):
    got = _lrs_per_epoch(monkeypatch, OptimSpec(epochs=8, lr=1.0, scheduler="step", milestones=[0.5, 0.75]))
    assert got == pytest.approx([1.0] * 4 + [0.1] * 2 + [0.01] * 2, rel=1e-12)


def test_constant_schedule_per_epoch(monkeypatch):
    assert _lrs_per_epoch(monkeypatch, OptimSpec(epochs=3, lr=0.05)) == [0.05] * 3


def test_build_scheduler_factor_directly():
    p = nn.Parameter(torch.zeros(1))
    spec = OptimSpec(epochs=4, lr=2.0, scheduler="cosine")
    opt = build_optimizer([p], spec)
    sched = build_scheduler(opt, spec)
    for e in range(5):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * e / 4)))
        opt.step()
        sched.step()


@pytest.mark.parametrize(
    "kw", [dict(optimizer="rmsprop"), dict(scheduler="linear"), dict(epochs=-1), dict(lr=float("nan"))]
)
def test_bad_optim_spec_is_rejected(kw):
    with pytest.raises(ConfigError):
        OptimSpec(**kw).check()


# -- SignSGD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_signsgd_update_is_lr_times_sign(wd, monkeypatch):
    made = capture_optimizer(monkeypatch)
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    ds = data(6)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    before = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(
        F.cross_entropy(model(ds.columns["x"]), ds.columns["y"]), list(model.parameters())
    )
    lr = 0.125
    spec = OptimSpec(epochs=1, lr=lr, optimizer="signsgd", weight_decay=wd)
    engine(batch_size=6).fit(model, {"train": ds}, ce_phases(model), spec)
    assert isinstance(made[0], SignSGD)
    for b, p, g in zip(before, model.parameters(), grads, strict=True):
        d = g + wd * b if wd else g
        assert (d.abs() > 1e-4).all()  # no sign is ambiguous
        assert torch.equal(p.detach(), b - lr * torch.sign(d))
    if wd:  # weight decay flips at least one sign here, so ignoring it would fail the check above
        assert any(
            (torch.sign(g + wd * b) != torch.sign(g)).any() for b, g in zip(before, grads, strict=True)
        )


def test_signsgd_step_directly():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    p.grad = torch.tensor([3.0, -1e-8, 0.0, -7.0])
    SignSGD([p], lr=0.25).step()
    assert torch.equal(p.detach(), torch.tensor([0.75, -1.75, 0.5, 0.25]))


# -- history and logs ---------------------------------------------------------------------------------
def _logged_fit(run_dir=None, log_every: int = 1):
    model = mlp(1)
    returned: list[float] = []

    def loss(b, ctx):
        value = F.cross_entropy(model(b["train"]["x"]), b["train"]["y"])
        returned.append(float(value.detach()))
        return value, {"extra": ctx.step * 2.0}

    eng = Engine(EngineConfig(progress=False, batch_size=3, log_every=log_every), run_dir=run_dir)
    res = eng.fit(
        model,
        {"train": data(9)},
        lambda e: [Phase("p", ("train",), loss)],
        OptimSpec(epochs=2, lr=0.1),
        desc="mydesc",
    )
    return res, returned


def test_history_records_the_returned_losses():
    res, returned = _logged_fit()
    assert res.steps == 6 and len(returned) == 6
    assert [h["loss"] for h in res.history] == returned
    assert [h["step"] for h in res.history] == list(range(6))
    assert [h["epoch"] for h in res.history] == [0, 0, 0, 1, 1, 1]
    assert [h["extra"] for h in res.history] == [2.0 * s for s in range(6)]
    assert {h["phase"] for h in res.history} == {"p"}
    assert len(set(returned)) == 6  # training moves the loss


def test_log_every_thins_the_history():
    res, returned = _logged_fit(log_every=2)
    assert [h["step"] for h in res.history] == [0, 2, 4]
    assert [h["loss"] for h in res.history] == returned[::2]


def test_log_file_is_written_when_run_dir_is_given(tmp_path):
    res, _ = _logged_fit(run_dir=tmp_path / "run")
    path = tmp_path / "run" / "log-mydesc.jsonl"
    assert path.is_file()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == res.history


def test_no_log_file_without_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _logged_fit()
    assert list(tmp_path.iterdir()) == []


# -- config validation --------------------------------------------------------------------------------
def test_bad_engine_config_is_rejected():
    with pytest.raises(ConfigError):
        Engine(EngineConfig(progress=False, batch_size=0))
    with pytest.raises(ConfigError):
        Engine(EngineConfig(progress=False, device="tpu"))


def test_log_every_zero_is_a_config_error():
    with pytest.raises(ConfigError, match="log_every"):
        Engine(EngineConfig(progress=False, log_every=0))
    with pytest.raises(ConfigError, match="checkpoint_every"):
        Engine(EngineConfig(progress=False, checkpoint_every=-1))


# -- checkpoints and resume ---------------------------------------------------------------------------
class Crash(Exception):
    pass


def _resume_setup(kind: str):
    """A model, streams, phases and optimizer spec exercising one resume scenario."""
    from unlearnkit.engine.masks import WeightMask

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
    sets = {"forget": data(7, 1, start=0), "retain": data(13, 2, start=100)}
    mask = None
    if kind == "two-phases":  # a driver and a cycled stream, random draws from ctx.generator, Adam, mask

        def forget(b, ctx):
            noise = torch.randn(b["forget"]["x"].shape, generator=ctx.generator)
            lf = -F.cross_entropy(model(b["forget"]["x"] + noise), b["forget"]["y"])
            return lf + F.cross_entropy(model(b["retain"]["x"]), b["retain"]["y"]), {
                "forget_loss": float(lf.detach())
            }

        def retain(b, ctx):
            return F.cross_entropy(model(b["retain"]["x"]), b["retain"]["y"]), {}

        phases = lambda e: [  # noqa: E731
            Phase("forget", ("forget", "retain"), forget),
            Phase("retain", ("retain",), retain),
        ]
        spec = OptimSpec(epochs=3, lr=0.05, optimizer="adam", scheduler="cosine")
        g = torch.Generator().manual_seed(0)
        mask = WeightMask.from_scores(
            {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}, 0.5
        )
    else:  # one stream, SGD with momentum, a step schedule, clipping
        phases = ce_phases(model, "retain")
        spec = OptimSpec(epochs=4, lr=0.2, scheduler="step", milestones=[0.5], max_grad_norm=1.0)
    return model, sets, phases, spec, mask


def _fit(kind, run_dir=None, crash_at=None, resume=False, **cfg):
    model, sets, phases, spec, mask = _resume_setup(kind)
    calls = [0]
    if crash_at is not None:
        inner = phases

        def phases(e):  # noqa: F811
            out = []
            for ph in inner(e):

                def loss(b, ctx, f=ph.loss):
                    calls[0] += 1
                    if ctx.step == crash_at:
                        raise Crash()
                    return f(b, ctx)

                out.append(Phase(ph.name, ph.streams, loss, ph.driver))
            return out

    eng = Engine(EngineConfig(progress=False, batch_size=3, seed=4, **cfg), run_dir=run_dir)
    torch.manual_seed(123)  # the global generator (dropout) starts somewhere else in every process
    res = eng.fit(model, sets, phases, spec, mask=mask, desc="t", resume=resume)
    return model, res


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    "kind, crash_at, cfg",
    [
        ("one-stream", 7, {"checkpoint_steps": 1}),  # mid-epoch
        ("one-stream", 10, {"checkpoint_steps": 5}),  # the checkpoint at step 10 ends epoch 1 (5 steps each)
        ("two-phases", 13, {"checkpoint_steps": 3}),  # mid-phase, the cycled stream half-way through a pass
        ("two-phases", 20, {"checkpoint_every": 1}),  # epoch checkpoints only: resume from the end of epoch 1
        # 2 micro-batches per optimizer step, short groups at phase ends; resumes after step 6 (a short group)
        ("two-phases", 7, {"checkpoint_steps": 2, "grad_accum": 2}),
    ],
)
def test_resume_after_a_crash_gives_bitwise_identical_weights_and_history(tmp_path, kind, crash_at, cfg):
    ref_model, ref = _fit(kind, **{k: v for k, v in cfg.items() if k == "grad_accum"})
    with pytest.raises(Crash):
        _fit(kind, tmp_path, crash_at=crash_at, **cfg)
    torch.manual_seed(999)  # the resumed process is in another random state
    model, res = _fit(kind, tmp_path, resume=True, **cfg)
    assert res.resumed_from_step is not None and 0 < res.resumed_from_step <= crash_at
    assert _same_weights(model, ref_model)
    assert res.steps == ref.steps
    assert res.history == ref.history
    logged = [json.loads(line) for line in (tmp_path / "log-t.jsonl").read_text().splitlines()]
    assert logged == ref.history


def test_checkpoint_folder_holds_safe_files_and_only_the_newest(tmp_path):
    from unlearnkit.engine.checkpoint import latest_checkpoint, read_checkpoint
    from unlearnkit.io import load_weights

    model, res = _fit("two-phases", tmp_path, checkpoint_steps=4)
    root = tmp_path / "checkpoints" / "t"
    assert [p.name for p in root.iterdir()] == [f"step-{res.steps // 4 * 4:08d}"]
    ck = read_checkpoint(latest_checkpoint(root))
    assert ck.path == res.checkpoint
    assert {p.name for p in ck.path.iterdir()} == {
        "model.safetensors",
        "state.pt",
        "mask.safetensors",
        "meta.json",
    }
    torch.load(ck.path / "state.pt", weights_only=True)  # no pickled objects
    fresh, *_ = _resume_setup("two-phases")
    load_weights(fresh, ck.model_file)  # the model file is a plain weights file
    assert ck.meta["position"]["step"] == ck.step == res.steps // 4 * 4
    assert ck.mask is not None and set(ck.mask) == {n for n, _ in model.named_parameters()}


def test_resume_without_a_checkpoint_starts_fresh_and_after_the_end_changes_nothing(tmp_path):
    ref_model, _ = _fit("one-stream")
    model, res = _fit("one-stream", tmp_path, resume=True)  # nothing to resume: checkpoints every epoch
    assert res.resumed_from_step is None and _same_weights(model, ref_model)
    assert (tmp_path / "checkpoints" / "t" / f"step-{res.steps:08d}").is_dir()
    again, res2 = _fit("one-stream", tmp_path, resume=True)
    assert res2.resumed_from_step == res.steps and _same_weights(again, ref_model)


def test_a_fresh_run_removes_stale_checkpoints(tmp_path):
    with pytest.raises(Crash):
        _fit("one-stream", tmp_path, crash_at=9, checkpoint_steps=1)
    with pytest.raises(Crash):
        _fit("one-stream", tmp_path, crash_at=2, checkpoint_steps=1)  # not resumed: starts over
    root = tmp_path / "checkpoints" / "t"
    # step 2's checkpoint is not confirmed yet (the crash came before its loss was checked): 1 stays too
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002"]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    with pytest.raises(Crash):
        _fit("one-stream", tmp_path, crash_at=6, checkpoint_steps=2)
    model, sets, phases, spec, _ = _resume_setup("one-stream")
    eng = Engine(EngineConfig(progress=False, batch_size=4, seed=4), run_dir=tmp_path)  # batch size differs
    with pytest.raises(ConfigError, match="different run"):
        eng.fit(model, sets, phases, spec, desc="t", resume=True)


def test_resume_takes_the_learning_rate_from_the_current_config(tmp_path, monkeypatch):
    with pytest.raises(Crash):
        _fit("one-stream", tmp_path, crash_at=6, checkpoint_steps=1)
    made = capture_optimizer(monkeypatch)
    model, sets, phases, _, _ = _resume_setup("one-stream")
    seen = []

    def loss(b, ctx):
        seen.append(made[0].param_groups[0]["lr"])
        return phases(0)[0].loss(b, ctx)

    spec = OptimSpec(epochs=4, lr=0.02, scheduler="step", milestones=[0.5], max_grad_norm=1.0)
    Engine(EngineConfig(progress=False, batch_size=3, seed=4), run_dir=tmp_path).fit(
        model, sets, lambda e: [Phase("retain", ("retain",), loss)], spec, desc="t", resume=True
    )
    assert seen[0] == pytest.approx(0.02) and seen[-1] == pytest.approx(0.002)  # 10x lower after 50%


# -- divergence guard ----------------------------------------------------------------------------------
def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path):
    from unlearnkit.engine.checkpoint import latest_checkpoint, read_checkpoint
    from unlearnkit.io import load_weights

    model = mlp(0)
    snapshots = []

    def loss(b, ctx):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        out = F.cross_entropy(model(b["train"]["x"]), b["train"]["y"])
        return (out * float("nan") if ctx.step == 5 else out), {}

    eng = Engine(EngineConfig(progress=False, batch_size=3, checkpoint_steps=1), run_dir=tmp_path)
    with pytest.raises(DivergenceError) as info:
        eng.fit(model, {"train": data(18)}, lambda e: [Phase("p", ("train",), loss)], OptimSpec(epochs=2))
    msg = str(info.value)
    # the weights after 5 steps gave the NaN: their checkpoint is dropped, the one after 4 steps is kept
    path = tmp_path / "checkpoints" / "train" / "step-00000004"
    assert "nan" in msg and "step 5" in msg and str(path) in msg and "--resume" in msg
    assert latest_checkpoint(path.parent) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    ck = read_checkpoint(path)
    fresh = load_weights(mlp(1), ck.model_file)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in snapshots[4].items())
    assert ck.meta["position"]["step"] == 4 and len(ck.meta["history"]) == 4


def test_nan_guard_without_checkpoints_says_so():
    model = mlp(0)

    def loss(b, ctx):
        return model(b["train"]["x"]).sum() * float("nan"), {}

    with pytest.raises(DivergenceError, match="No checkpoint was written"):
        engine().fit(model, {"train": data(4)}, lambda e: [Phase("p", ("train",), loss)], OptimSpec(epochs=1))


def test_divergence_bound_stops_gradient_ascent(tmp_path):
    model = mlp(0)

    def ga(b, ctx):
        lf = -F.cross_entropy(model(b["train"]["x"]), b["train"]["y"])
        return lf, {"forget_loss": float(lf.detach())}

    eng = Engine(
        EngineConfig(progress=False, batch_size=3, checkpoint_steps=2, divergence_bound=20.0),
        run_dir=tmp_path,
    )
    with pytest.raises(DivergenceError, match="divergence_bound=20.0") as info:
        eng.fit(
            model, {"train": data(18)}, lambda e: [Phase("p", ("train",), ga)], OptimSpec(epochs=50, lr=1.0)
        )
    assert "last good checkpoint" in str(info.value)
    res_steps = int(str(info.value).split("step ")[1].split(" ")[0])
    assert res_steps > 2  # it ascended for a while before passing the bound
    # without the bound the same run goes on (the loss stays finite for these steps)
    res = engine(batch_size=3).fit(
        mlp(0), {"train": data(18)}, lambda e: [Phase("p", ("train",), ga)], OptimSpec(epochs=2, lr=1.0)
    )
    assert res.steps == 12


@pytest.mark.parametrize("bound", [0, -1.0, float("inf"), float("nan"), "x", True])
def test_bad_divergence_bound_is_rejected(bound):
    with pytest.raises(ConfigError, match="divergence_bound"):
        Engine(EngineConfig(progress=False, divergence_bound=bound))
    with pytest.raises(ConfigError, match="checkpoint_steps"):
        Engine(EngineConfig(progress=False, checkpoint_steps=-1))


def test_state_kept_by_the_phases_owner_is_checkpointed(tmp_path):
    """Method state outside the model (e.g. an adversarial prompt) resumes through loop_state()."""

    class Owner:
        def __init__(self, model, crash_at=None):
            self.model, self.crash_at, self.shift = model, crash_at, torch.zeros(2)

        def phases(self, epoch):
            return [Phase("p", ("train",), self.loss)]

        def loss(self, b, ctx):
            if ctx.step == self.crash_at:
                raise Crash()
            self.shift += 0.1  # changes every step and feeds the loss
            x = b["train"]["x"] + self.shift
            return F.cross_entropy(self.model(x), b["train"]["y"]), {}

        def loop_state(self):
            return {"shift": self.shift.clone()}

        def load_loop_state(self, state):
            self.shift = state["shift"].clone()

    def run(run_dir=None, crash_at=None, resume=False):
        owner = Owner(mlp(0), crash_at)
        eng = Engine(EngineConfig(progress=False, batch_size=3, checkpoint_steps=2), run_dir=run_dir)
        eng.fit(owner.model, {"train": data(12)}, owner.phases, OptimSpec(epochs=2, lr=0.1), resume=resume)
        return owner

    whole = run()
    with pytest.raises(Crash):
        run(tmp_path, crash_at=5)
    resumed = run(tmp_path, resume=True)
    assert torch.equal(resumed.shift, whole.shift)
    assert _same_weights(resumed.model, whole.model)


# -- early backward of a loss term (peak memory) --------------------------------------------------------
def _two_term_fit(mode: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    """CE on one half of the batch + 0.5·CE on the other: summed at the end, or the first term early."""
    model = mlp(0)

    def loss(b, ctx):
        x, y = b["train"]["x"], b["train"]["y"]
        first = F.cross_entropy(model(x[:2]), y[:2])
        if mode == "early":
            first = ctx.backward(first)
            assert not first.requires_grad
        second = 0.5 * F.cross_entropy(model(x[2:]), y[2:])
        if mode == "all-early":
            return first + ctx.backward(second), {}
        return first + second, {}

    res = engine(batch_size=4).fit(
        model, {"train": data(16)}, lambda e: [Phase("p", ("train",), loss)], OptimSpec(epochs=2, lr=0.1)
    )
    return {k: v.clone() for k, v in model.state_dict().items()}, [h["loss"] for h in res.history]


@pytest.mark.parametrize("mode", ["early", "all-early"])
def test_a_term_backpropagated_early_gives_the_same_training(mode):
    ref_w, ref_loss = _two_term_fit("sum")
    w, losses = _two_term_fit(mode)
    assert losses == pytest.approx(ref_loss, rel=1e-6)  # the logged loss still counts the early term
    for k in ref_w:
        torch.testing.assert_close(w[k], ref_w[k], rtol=1e-6, atol=1e-7)
    # negative control: dropping the early term's gradient (what zeroing grads after the loss would do)
    # changes the weights
    assert not torch.allclose(_fit_without_first_term()["0.weight"], ref_w["0.weight"])


def _fit_without_first_term() -> dict[str, torch.Tensor]:
    model = mlp(0)

    def loss(b, ctx):
        x, y = b["train"]["x"], b["train"]["y"]
        first = F.cross_entropy(model(x[:2]), y[:2]).detach()
        return first + 0.5 * F.cross_entropy(model(x[2:]), y[2:]), {}

    engine(batch_size=4).fit(
        model, {"train": data(16)}, lambda e: [Phase("p", ("train",), loss)], OptimSpec(epochs=2, lr=0.1)
    )
    return dict(model.state_dict())


def test_step_context_backward_outside_the_engine_returns_the_term():
    ctx = loop.StepContext(0, 1, 0, "p", torch.Generator())
    t = torch.ones(2, requires_grad=True).sum()
    assert ctx.backward(t) is t and ctx.early_terms == 0

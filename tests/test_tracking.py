"""engine.tracker: TensorBoard event files read back against losses recomputed by hand; config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unlearnkit.engine.tracking as tracking
from unlearnkit.config import build_dataclass
from unlearnkit.data.examples import ExampleSet
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError

torch.set_num_threads(1)


def data(n: int, seed: int) -> ExampleSet:
    g = torch.Generator().manual_seed(seed)
    return ExampleSet(
        {"x": torch.randn(n, 2, generator=g), "y": torch.randint(0, 3, (n,), generator=g)},
        ids=list(range(100 * seed, 100 * seed + n)),
    )


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``folder``, read back with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


FORGET, RETAIN = data(4, 1), data(6, 2)
SPEC = OptimSpec(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="step", milestones=[0.5])


def two_phase(model: nn.Module):
    """Descent on the forget set, then ascent on the retain set (a method's log: forget accuracy)."""

    def descent(b, ctx):
        out = model(b["forget"]["x"])
        acc = float((out.argmax(1) == b["forget"]["y"]).float().mean())
        return F.cross_entropy(out, b["forget"]["y"]), {"forget_acc": acc}

    def ascent(b, ctx):
        return -F.cross_entropy(model(b["retain"]["x"]), b["retain"]["y"]), {}

    return lambda e: [Phase("descent", ("forget",), descent), Phase("ascent", ("retain",), ascent)]


def by_hand() -> list[tuple[str, float, float, float | None]]:
    """The same run in plain torch (whole-set batches, so the shuffle does not matter): per step the
    phase, its loss, the learning rate (×0.1 from epoch 1, the step schedule) and the forget accuracy."""
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    rows = []
    for epoch in range(2):
        lr = 0.1 if epoch == 0 else 0.01
        for phase, s, sign in (("descent", FORGET, 1.0), ("ascent", RETAIN, -1.0)):
            x, y = s.columns["x"], s.columns["y"]
            out = model(x)
            loss = sign * F.cross_entropy(out, y)
            acc = float((out.argmax(1) == y).float().mean()) if phase == "descent" else None
            rows.append((phase, float(loss.detach()), lr, acc))
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
    return rows


def run(cfg: EngineConfig, run_dir=None) -> Engine:
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    eng = Engine(cfg, run_dir)
    eng.fit(model, {"forget": FORGET, "retain": RETAIN}, two_phase(model), SPEC, desc="unlearn")
    return eng


def test_tensorboard_holds_every_phase_loss_the_lr_and_the_method_logs(tmp_path):
    pytest.importorskip("tensorboard")
    eng = run(EngineConfig(progress=False, batch_size=8, tracker="tensorboard"), tmp_path / "run")
    eng.end_tracking()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    got = scalars(tmp_path / "run" / "tensorboard")
    want = by_hand()
    assert set(got) == {
        "unlearn/descent/loss",
        "unlearn/ascent/loss",
        "unlearn/descent/forget_acc",
        "unlearn/lr",
    }
    for phase in ("descent", "ascent"):
        steps = [i for i, r in enumerate(want) if r[0] == phase]
        assert [s for s, _ in got[f"unlearn/{phase}/loss"]] == steps  # each phase's own steps: 0, 2 / 1, 3
        logged = [v for _, v in got[f"unlearn/{phase}/loss"]]
        assert logged == pytest.approx([want[i][1] for i in steps], rel=1e-5)
    assert want[2][1] < want[0][1]  # descent lowered the forget loss: the values are not all alike
    assert [v for _, v in got["unlearn/descent/forget_acc"]] == pytest.approx([want[0][3], want[2][3]])
    assert got["unlearn/lr"] == [(0, pytest.approx(0.1)), (1, pytest.approx(0.1))] + [
        (2, pytest.approx(0.01)),
        (3, pytest.approx(0.01)),
    ]


def test_final_metrics_follow_the_last_step_and_private_keys_stay_out(tmp_path):
    pytest.importorskip("tensorboard")
    eng = run(EngineConfig(progress=False, batch_size=8, tracker="tensorboard"), tmp_path)
    eng.log_final({"forget_acc": 0.25, "mia": {"auc": 0.5}, "_oracle_private": 3.0, "note": "text"})
    got = {k: v for k, v in scalars(tmp_path / "tensorboard").items() if k.startswith("final/")}
    assert got == {"final/forget_acc": [(4, 0.25)], "final/mia/auc": [(4, 0.5)]}


def test_tracker_dir_wins_over_the_run_folder_and_none_writes_nothing(tmp_path):
    pytest.importorskip("tensorboard")
    run(EngineConfig(progress=False, batch_size=8, tracker="tensorboard", tracker_dir=str(tmp_path / "tb")))
    assert len(scalars(tmp_path / "tb" / "tensorboard")["unlearn/lr"]) == 4
    run(EngineConfig(progress=False, batch_size=8), tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["log-unlearn.jsonl"]


def test_unknown_tracker_is_a_config_error_with_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"engine.tracker='tensorbord'.*did you mean 'tensorboard'"):
        build_dataclass(EngineConfig, {"tracker": "tensorbord"}, "engine")


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_tracker_without_its_package_names_the_extra(name, monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda package: False)
    with pytest.raises(ConfigError, match=rf"pip install 'unlearnkit\[{name}\]'"):
        EngineConfig(tracker=name).check()
    EngineConfig(tracker="none").check()  # needs no package


def test_wandb_runs_offline_unless_the_user_chose_a_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    project, kwargs = tracking.start_options("wandb", tmp_path, "run-1")
    assert (project, kwargs["wandb"]["mode"], kwargs["wandb"]["dir"]) == (
        "unlearnkit",
        "offline",
        str(tmp_path),
    )
    monkeypatch.setenv("WANDB_MODE", "online")
    assert tracking.start_options("wandb", tmp_path, "run-1")[1]["wandb"]["mode"] == "online"


def test_unlearn_cli_logs_the_final_metrics_beside_the_step_losses(tmp_path):
    """``unlearnkit unlearn ... engine.tracker=tensorboard``: the run's TensorBoard files hold its step losses
    and, at the last step, the final metrics equal to results.json's."""
    import json

    from unlearnkit.cli import main

    pytest.importorskip("tensorboard")
    out, logs = tmp_path / "run", tmp_path / "tb"
    args = ["unlearn", "--preset", "vision/ga", "method.epochs=1", "engine.tracker=tensorboard"]
    assert main([*args, f"engine.tracker_dir={logs}", "--out", str(out)]) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    got = scalars(logs / "tensorboard")
    last = max(s for s, _ in got["ga/forget/loss"])
    for key in ("UA", "RA", "TA", "MIA"):
        ((step, value),) = got[f"final/{key}"]
        assert value == pytest.approx(metrics[key], rel=1e-6)
        assert step >= last

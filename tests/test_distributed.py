"""Data-parallel training on two gloo CPU processes equals one process on the same global batch.

``accelerate.debug_launcher`` forks two processes joined by a gloo process group (accelerate's state is
process-global, so each child first drops the state it inherited from the pytest process). Each rank
trains with ``b`` examples per step; the same run in this process with ``2b`` per step must give the same
weights (float tolerance: the two sum the per-example gradients in a different order), and both ranks
must end bit-identical. The data order is checked directly: at every step the two ranks' batches are
disjoint and their union is exactly the single process's batch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.experiment import build_method
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task

B = 4  # examples per rank and step; the single process uses 2 * B
CASES = {
    # retain stream only, momentum, clipping of the averaged gradient
    "ft": {"name": "ft", "epochs": 2, "lr": 0.2, "max_grad_norm": 0.5},
    # gradient ascent under SalUn's saliency mask (half the weights frozen exactly)
    "ga_mask": {"name": "ga", "epochs": 2, "lr": 0.1, "mask_ratio": 0.5},
    # two streams (forget drives, retain cycles), cached reference NLLs and a cached KL reference
    "npo": {"name": "npo", "epochs": 2, "lr": 0.05, "retain_loss": "kl", "optimizer": "adam"},
}


def _sets(seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)

    def part(n: int, start: int) -> ExampleSet:
        x = torch.randn(n, 6, generator=g)
        return ExampleSet({"x": x, "y": torch.randint(0, 3, (n,), generator=g)}, ids=range(start, start + n))

    # sizes are multiples of 2 * B, so no step is padded with examples from the start of the order
    return Split(part(16, 0), part(32, 100), part(8, 500))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _run_case(name: str, batch_size: int) -> tuple[nn.Module, object]:
    split = _sets()
    method = build_method(dict(CASES[name]) | {"batch_size": batch_size}, "vision")
    engine = Engine(EngineConfig(progress=False, batch_size=batch_size, device="cpu", seed=3))
    task = Task(VisionFamily(num_classes=3), _model(), split, engine, seed=3)
    method.run(task)
    return task.model, method


def _record_ids(batch_size: int) -> list[list[int]]:
    """Plain Engine.fit over two streams; returns the ids each step saw (driver + cycled stream)."""
    split = _sets()
    model = _model()
    seen: list[list[int]] = []

    def loss(b, ctx):
        seen.append(b["forget"]["id"].tolist() + b["retain"]["id"].tolist())
        return F.cross_entropy(model(b["forget"]["x"]), b["forget"]["y"]), {}

    Engine(EngineConfig(progress=False, batch_size=batch_size, device="cpu")).fit(
        model,
        {"forget": split.forget, "retain": split.retain},
        lambda e: [Phase("p", ("forget", "retain"), loss)],
        OptimSpec(epochs=3, lr=0.1),
    )
    return seen


def _tracked(tracker_dir: str | None, batch_size: int) -> list[float]:
    """Plain Engine.fit, with engine.tracker=tensorboard writing to ``tracker_dir`` when given; the losses."""
    split = _sets()
    model = _model()

    def loss(b, ctx):
        return F.cross_entropy(model(b["forget"]["x"]), b["forget"]["y"]), {}

    tracker = "tensorboard" if tracker_dir else "none"
    cfg = EngineConfig(
        progress=False, batch_size=batch_size, device="cpu", tracker=tracker, tracker_dir=tracker_dir
    )
    eng = Engine(cfg)
    res = eng.fit(
        model, {"forget": split.forget}, lambda e: [Phase("p", ("forget",), loss)], OptimSpec(epochs=2)
    )
    eng.end_tracking()
    return [r["loss"] for r in res.history]


class Crash(Exception):
    pass


def _resumable(run_dir: str | None, crash_at: int | None = None, resume: bool = False):
    """Two streams, dropout, Adam, a checkpoint every step; optionally crash (on every rank) at a step."""
    split = _sets()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))

    def loss(b, ctx):
        if ctx.step == crash_at:
            raise Crash()
        lf = F.cross_entropy(model(b["forget"]["x"]), b["forget"]["y"])
        return lf + F.cross_entropy(model(b["retain"]["x"]), b["retain"]["y"]), {}

    eng = Engine(
        EngineConfig(progress=False, batch_size=B, device="cpu", checkpoint_steps=1), run_dir=run_dir
    )
    res = eng.fit(
        model,
        {"forget": split.forget, "retain": split.retain},
        lambda e: [Phase("p", ("forget", "retain"), loss)],
        OptimSpec(epochs=3, lr=0.05, optimizer="adam"),
        resume=resume,
    )
    return model, res


def _child(out_dir: str) -> None:
    """Runs in each of the two processes."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from unlearnkit.engine.loop import broadcast_object, world_size
    from unlearnkit.methods.reference import compute_reference

    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    torch.set_num_threads(1)
    rank = acc.process_index
    assert world_size() == 2 and acc.num_processes == 2
    for name in CASES:
        model, method = _run_case(name, B)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/{name}-{rank}.st")
        if name == "npo":
            ref = method.reference
            save_file({"ids": ref.ids, "loss": ref.values["loss"]}, f"{out_dir}/ref-{rank}.st")
    # the forget NLLs of the original model, computed in shards and all-gathered
    split = _sets()
    fam = VisionFamily(num_classes=3)
    cache = compute_reference(_model(), split.retain, fam.per_example_loss, 3)
    save_file({"ids": cache.ids, "loss": cache.values["loss"]}, f"{out_dir}/shared-{rank}.st")
    # a crash on both ranks after 4 steps, then resume from rank 0's checkpoint
    whole, _ = _resumable(None)
    with contextlib.suppress(Crash):
        _resumable(f"{out_dir}/run", crash_at=4)
    resumed, res = _resumable(f"{out_dir}/run", resume=True)
    pairs = zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    record = {
        "ids": _record_ids(B),
        "metrics": broadcast_object({"rank": rank, "UA": 1.0 + rank}),
        "resume": {"from": res.resumed_from_step, "same": same},
    }
    if importlib.util.find_spec("tensorboard") is not None:  # the same folder given to both ranks
        _tracked(f"{out_dir}/tb", B)
    with open(f"{out_dir}/record-{rank}.json", "w") as f:
        json.dump(record, f)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from accelerate import debug_launcher

    out = tmp_path_factory.mktemp("ddp")
    torch.optim.SGD(
        [nn.Parameter(torch.zeros(1))], lr=0.1
    )  # import torch's optimizer machinery before forking
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        debug_launcher(_child, args=(str(out),), num_processes=2)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_with_the_global_batch(two_ranks, name):
    r0 = load_file(str(two_ranks / f"{name}-0.st"))
    r1 = load_file(str(two_ranks / f"{name}-1.st"))
    for k in r0:  # both ranks end bit-identical
        assert torch.equal(r0[k], r1[k]), k
    single, _ = _run_case(name, 2 * B)
    start = _model().state_dict()
    moved = False
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(v, start[k])
    assert moved  # the comparison is not between two untrained models


def test_each_step_the_ranks_split_the_single_process_batch(two_ranks):
    a = json.loads((two_ranks / "record-0.json").read_text())["ids"]
    b = json.loads((two_ranks / "record-1.json").read_text())["ids"]
    single = _record_ids(2 * B)
    assert len(a) == len(b) == len(single) == 6  # 3 epochs x 16 forget examples / (2 x 4)
    for ia, ib, s in zip(a, b, single, strict=True):
        assert not set(ia) & set(ib)  # each rank gets its own shard
        # forget (driver) and retain (cycled) halves: rank 0 then rank 1 is the single process's batch
        assert ia[:B] + ib[:B] == s[: 2 * B]
        assert ia[B:] + ib[B:] == s[2 * B :]


def test_reference_values_are_computed_once_and_shared(two_ranks):
    from unlearnkit.methods.reference import compute_reference

    split = _sets()
    want = compute_reference(_model(), split.retain, VisionFamily(num_classes=3).per_example_loss, 3)
    for rank in (0, 1):
        got = load_file(str(two_ranks / f"shared-{rank}.st"))
        assert torch.equal(got["ids"], want.ids)
        assert torch.equal(got["loss"], want.values["loss"])  # same batches, so bit-identical
    r0 = load_file(str(two_ranks / "ref-0.st"))
    r1 = load_file(str(two_ranks / "ref-1.st"))
    assert torch.equal(r0["ids"], r1["ids"]) and torch.equal(r0["loss"], r1["loss"])
    assert r0["ids"].tolist() == list(range(16))  # NPO's cache covers every forget example


def test_metrics_are_broadcast_from_the_main_process(two_ranks):
    for rank in (0, 1):
        rec = json.loads((two_ranks / f"record-{rank}.json").read_text())
        assert rec["metrics"] == {"rank": 0, "UA": 1.0}


def test_resume_under_two_processes_is_bit_identical(two_ranks):
    for rank in (0, 1):
        rec = json.loads((two_ranks / f"record-{rank}.json").read_text())
        assert rec["resume"] == {"from": 4, "same": True}


def test_the_tracker_is_written_once_with_the_losses_averaged_over_ranks(two_ranks):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = two_ranks / "tb" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1  # the main process's writer only
    acc = EventAccumulator(str(folder))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("train/p/loss")]
    single = _tracked(None, 2 * B)  # the global batch in one process: its losses are the ranks' mean
    assert [s for s, _ in logged] == list(range(4))
    assert [v for _, v in logged] == pytest.approx(single, rel=1e-5)

"""FSDP version 2 on two gloo CPU processes: training through the engine, and the saved final model.

``engine.fsdp`` makes the engine shard the model in place with torch's ``fully_shard`` (accelerate refuses
FSDP on the CPU). Each of two forked processes (``accelerate.debug_launcher``: gloo over a file store)
trains with ``B`` examples per step, and the run folder is written through the real save path
(``write_run``, called on every rank: gathering a sharded model is a collective). The saved weights must
be whole (full-size tensors, not rank 0's shards), equal within float tolerance to one process trained
with ``2 * B`` per step, and hash to the receipt's ``weights_after_sha256``; a Hugging Face model's
``hf_model/`` must load with ``from_pretrained`` to the same weights. A run with a checkpoint every step,
killed on both ranks after 4 steps and resumed, must end bit-identical to an uninterrupted one (weights and
Adam state are gathered whole into the checkpoint and each rank takes its share back).
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from unlearnkit.data.examples import ExampleSet
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.io import state_dict_sha256

B = 4  # examples per rank and step; the single process uses 2 * B
FT = {"epochs": 2, "lr": 0.2, "max_grad_norm": 0.5}  # momentum SGD, clipping of the sharded gradient


def _vision_data() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    return part(16), part(32), part(8)  # sizes are multiples of 2 * B: no padded step


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _unlearn_mlp(batch_size: int, out: str | None, fsdp: bool | list[str] = False):
    import unlearnkit

    forget, retain, test = _vision_data()
    engine = {"batch_size": batch_size, "device": "cpu", "fsdp": fsdp}
    return unlearnkit.unlearn(
        _mlp(), "ft", forget, retain, test, num_classes=3, engine=engine, seed=3, out=out,
        batch_size=batch_size, **FT,
    )  # fmt: skip


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def _train_llama(batch_size: int, fsdp: bool | list[str] = False) -> nn.Module:
    """Two epochs of next-token training on 16 random sequences of equal length (no padding, so the mean
    of the ranks' token means is the global token mean)."""
    ids = torch.randint(0, 40, (16, 8), generator=torch.Generator().manual_seed(1))
    data = ExampleSet({"input_ids": ids}, ids=range(16))
    model = _llama()

    def loss(batches, ctx):
        x = batches["train"]["input_ids"]
        return model(input_ids=x, labels=x).loss, {}

    engine = Engine(EngineConfig(progress=False, batch_size=batch_size, device="cpu", seed=5, fsdp=fsdp))
    engine.fit(model, {"train": data}, lambda e: [Phase("p", ("train",), loss)], OptimSpec(epochs=2, lr=0.05))
    return model


class Crash(Exception):
    pass


def _resumable(run_dir: str | None, crash_at: int | None = None, resume: bool = False):
    """Adam on the MLP under FSDP, a checkpoint every step; optionally crash (on every rank) at a step."""
    forget, retain, _ = _vision_data()
    data = ExampleSet({"x": retain[0], "y": retain[1]}, ids=range(32))
    model = _mlp()

    def loss(b, ctx):
        if ctx.step == crash_at:
            raise Crash()
        return nn.functional.cross_entropy(model(b["train"]["x"]), b["train"]["y"]), {}

    cfg = EngineConfig(progress=False, batch_size=B, device="cpu", checkpoint_steps=1, fsdp=["Linear"])
    res = Engine(cfg, run_dir=run_dir).fit(
        model,
        {"train": data},
        lambda e: [Phase("p", ("train",), loss)],
        OptimSpec(epochs=2, lr=0.05, optimizer="adam"),
        resume=resume,
    )
    return model, res


def _child(out_dir: str) -> None:
    """Runs in each of the two processes."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from torch.distributed.tensor import DTensor

    from unlearnkit.distributed import full_state_dict, is_sharded
    from unlearnkit.io import weights_sha256
    from unlearnkit.runs.record import write_run

    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    torch.set_num_threads(1)
    rank = acc.process_index
    # the public API: ft on an MLP, each Linear its own FSDP unit; evaluation and the run folder under FSDP
    res = _unlearn_mlp(B, f"{out_dir}/mlp", fsdp=["Linear"])
    mlp = res.model
    record = {
        "mlp_sharded": is_sharded(mlp) and all(isinstance(p, DTensor) for p in mlp.parameters()),
        "mlp_receipt": res.receipt.get("weights_after_sha256"),
        "mlp_sha": weights_sha256(mlp),  # every rank: rank 0's hash of the gathered weights
        "mlp_keys": sorted(full_state_dict(mlp)),  # rank 0: every tensor; rank 1: none
        "mlp_everywhere": {k: list(v.shape) for k, v in full_state_dict(mlp, all_ranks=True).items()},
    }
    # a Hugging Face model, each LlamaDecoderLayer its own unit (from _no_split_modules), tied embeddings
    llama = _train_llama(B, fsdp=True)
    receipt = write_run(f"{out_dir}/llama", {"method": {"name": "ft"}}, llama, {}, "x", 0, "y")
    record["llama_sharded"] = is_sharded(llama)
    record["llama_receipt"] = None if receipt is None else receipt["weights_after_sha256"]
    # kill after 4 steps, resume from the (whole) checkpoint
    whole = full_state_dict(_resumable(None)[0])
    with contextlib.suppress(Crash):
        _resumable(f"{out_dir}/ckpt", crash_at=4)
    ck = load_file(f"{out_dir}/ckpt/checkpoints/train/step-00000004/model.safetensors")
    record["ckpt_shapes"] = {k: list(v.shape) for k, v in ck.items()}
    model, res = _resumable(f"{out_dir}/ckpt", resume=True)
    resumed = full_state_dict(model)
    record["resumed_from"] = res.resumed_from_step
    record["resumed_same"] = sorted(whole) == sorted(resumed) and all(
        torch.equal(whole[k], resumed[k]) for k in whole
    )
    with open(f"{out_dir}/record-{rank}.json", "w") as f:
        json.dump(record, f)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    from accelerate import debug_launcher

    out = tmp_path_factory.mktemp("fsdp")
    _llama()  # import transformers' Llama before forking
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        debug_launcher(_child, args=(str(out),), num_processes=2)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return out, [json.loads((out / f"record-{r}.json").read_text()) for r in (0, 1)]


def _assert_trained_equal(saved: dict[str, torch.Tensor], single: nn.Module, start: nn.Module) -> None:
    want = single.state_dict()
    assert set(saved) == set(want)
    moved = False
    for k, v in want.items():
        assert saved[k].shape == v.shape, k  # whole tensors, not one rank's shard
        torch.testing.assert_close(saved[k], v, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(v, start.state_dict()[k])
    assert moved  # the comparison is not between two untrained models


def test_fsdp_mlp_saved_whole_and_equal_to_one_process(fsdp_run):
    out, (r0, r1) = fsdp_run
    assert r0["mlp_sharded"] and r1["mlp_sharded"]  # FSDP really was applied
    saved = load_file(str(out / "mlp" / "model.safetensors"))
    single = _unlearn_mlp(2 * B, None).model
    _assert_trained_equal(saved, single, _mlp())
    sha = state_dict_sha256(saved)
    assert (
        r0["mlp_receipt"]
        == sha
        == json.loads((out / "mlp" / "receipt.json").read_text())["weights_after_sha256"]
    )
    assert r0["mlp_sha"] == r1["mlp_sha"] == sha
    assert r0["mlp_keys"] == sorted(saved) and r1["mlp_keys"] == []
    assert r1["mlp_receipt"] is None  # rank 1 wrote nothing and has no receipt
    shapes = {k: list(v.shape) for k, v in saved.items()}
    assert r0["mlp_everywhere"] == r1["mlp_everywhere"] == shapes


def test_fsdp_checkpoint_is_whole_and_resume_is_bit_identical(fsdp_run):
    _, (r0, r1) = fsdp_run
    assert r0["ckpt_shapes"] == {k: list(v.shape) for k, v in _mlp().state_dict().items()}
    assert r0["resumed_from"] == r1["resumed_from"] == 4
    assert r0["resumed_same"] and r1["resumed_same"]  # rank 1 compares two empty dicts: vacuous but run


def test_fsdp_llama_saved_whole_with_hf_folder(fsdp_run):
    from transformers import LlamaForCausalLM

    out, (r0, r1) = fsdp_run
    assert r0["llama_sharded"] and r1["llama_sharded"]
    single = _train_llama(2 * B)
    saved = load_file(str(out / "llama" / "model.safetensors"))
    _assert_trained_equal(saved, single, _llama())
    assert r0["llama_receipt"] == state_dict_sha256(saved) and r1["llama_receipt"] is None
    hf = LlamaForCausalLM.from_pretrained(out / "llama" / "hf_model")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(hf.state_dict()[k], v, rtol=1e-5, atol=1e-6)

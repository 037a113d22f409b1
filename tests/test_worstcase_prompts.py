"""Prompt-wise worst-case selection (diffusion): planted un-erasable prompts, the ESD lower level, the fixed
upper loss, the CLI and the concept split that reads the selection."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from unlearnkit.cli import main
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.shapes import all_captions, build_tokenizer, load_shapes, tokenize
from unlearnkit.engine.loop import Engine, EngineConfig, StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import make_setup
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.methods.base import Task
from unlearnkit.methods.esd import ESD, ESDConfig
from unlearnkit.models.t2i import build_scheduler, build_t2i
from unlearnkit.selection import SelectionTask, WorstCaseConfig
from unlearnkit.selection.lower import esd_per_example_loss
from unlearnkit.selection.prompts import (
    PROMPT_DEFAULTS,
    fixed_denoising_loss,
    prompt_groups,
    select_worst_prompts,
)

torch.set_num_threads(1)


# -- a toy denoiser whose hardest-to-erase prompts are known --------------------------------------------
class MemoryDenoiser(nn.Module):
    """ε_θ(x_t, t, c) = (x_t − √ᾱ_t·M_c) / √(1 − ᾱ_t): the exact denoiser of a prompt whose images all equal
    M_c. Prompt c's memory M_c lives in ``unet.attn2.mem`` (which ESD-x trains) unless c is planted, in which
    case it lives in ``unet.frozen`` (which ESD-x never touches): erasing a planted prompt cannot change its
    images' denoising error, so the planted prompts are, by construction, the hardest to erase."""

    def __init__(self, rows: torch.Tensor, images: torch.Tensor, planted: set[int], tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.scheduler = build_scheduler()
        null = tokenize(tokenizer, [""])[0]
        self.keys = {tuple(r.tolist()): i for i, r in enumerate(rows)} | {tuple(null.tolist()): len(rows)}
        mem = torch.cat([images, images.mean(0, keepdim=True)])  # the null prompt: the average image
        self.planted = torch.tensor([i in planted for i in range(len(mem))])
        self.unet = nn.Module()
        self.unet.attn2 = nn.Module()
        self.unet.attn2.mem = nn.Parameter(mem.clone())
        self.unet.frozen = nn.Parameter(mem.clone())
        self.text_encoder = nn.Identity()  # prompts are looked up by their token row
        self.text_encoder.config = SimpleNamespace(max_position_embeddings=12)

    @property
    def num_train_timesteps(self) -> int:
        return 1000

    def add_noise(self, x0, noise, t):
        a = self.scheduler.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def forward(self, x_t, t, input_ids=None, context=None):
        idx = torch.tensor([self.keys[tuple(r.tolist())] for r in input_ids])
        mem = torch.where(
            self.planted[idx].view(-1, 1, 1, 1), self.unet.frozen[idx], self.unet.attn2.mem[idx]
        )
        a = self.scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * mem) / (1 - a).sqrt()


@pytest.fixture(scope="module")
def toy():
    """6 prompts × 10 images; each prompt's images are its prototype plus a little noise; prompts 1 and 4
    are planted (chance of picking exactly {1, 4} among 2-subsets: 1/15). Ids are not 0..N-1."""
    tok = build_tokenizer()
    caps = all_captions()[:6]
    rows = tokenize(tok, caps)
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(6, 3, 4, 4, generator=g)
    y = torch.arange(60) % 6
    x = (proto[y] + 0.02 * torch.randn(60, 3, 4, 4, generator=g)).clamp(0, 1)
    pool = ExampleSet({"x": x, "input_ids": rows[y], "y": y}, torch.arange(60) * 5 + 2)
    model = MemoryDenoiser(rows, proto * 2 - 1, {1, 4}, tok)
    fam = DiffusionFamily(seed=0)
    fam.tokenizer = tok
    # FAST's lower level (sign-SGD at 50x the default lower_lr) takes the toy's ESD loss to ~900x its start
    # on purpose; the collapse guard would stop it (engine.collapse_factor)
    engine = Engine(EngineConfig(batch_size=8, progress=False, collapse_factor=None))
    return SelectionTask(fam, model, pool, engine, seed=0), {caps[1], caps[4]}, caps


FAST = {"lower_lr": 0.05, "lower_epochs": 2, "per_unit": 6, "timesteps": 3, "iters": 4, "batch_size": 8}


def test_selector_finds_the_planted_prompts(toy):
    task, planted, caps = toy
    res = select_worst_prompts(task, 2, WorstCaseConfig(**(PROMPT_DEFAULTS | FAST | {"lower": "auto"})))
    assert res.config["lower"] == "esd"  # "auto" means ESD for the diffusion family
    assert set(res.unit_names) == planted
    assert res.pool_names == sorted(caps, key=lambda c: tokenize(build_tokenizer(), [c])[0].tolist())
    y = task.pool.columns["y"]
    # every image of the chosen prompts, not only the per_unit subsample the loop saw
    assert res.ids == sorted(task.pool.ids[(y == 1) | (y == 4)].tolist()) and len(res.ids) == 20
    # at the uniform start ESD erased every prompt a little: the planted ones kept their loss exactly
    gaps = torch.tensor(res.unit_losses[0])
    is_planted = torch.tensor([name in planted for name in res.pool_names])  # units: sorted token rows
    assert gaps[is_planted].abs().max() < 1e-9 and (gaps[~is_planted] > 1e-3).all()
    assert len(res.trajectory) == FAST["iters"] + 1 and res.trajectory[-1] < res.trajectory[0]
    assert res.lower_steps > 0


def test_binarised_lower_level_and_reference_settings_also_run(toy):
    """Any registered diffusion method can be the (binarised) lower level; baseline=none (the paper's raw
    loss) with the generic step and binarisation also finds the planted prompts here."""
    task, planted, _ = toy
    fast = FAST | {"iters": 2}
    res = select_worst_prompts(task, 2, WorstCaseConfig(lower="ga", lower_options={"lr": 0.01}, **fast))
    assert len(res.units) == 2 and len(res.ids) == 20 and res.lower_steps > 0
    res = select_worst_prompts(task, 2, WorstCaseConfig(lower="esd", baseline="none", **FAST))
    assert set(res.unit_names) == planted
    with pytest.raises(ConfigError, match="select.baseline"):
        select_worst_prompts(task, 2, WorstCaseConfig(baseline="zero"))
    with pytest.raises(ConfigError, match="choose 1 <= m < 6"):
        select_worst_prompts(task, 6, WorstCaseConfig(**FAST))


# -- the pieces, on a tiny random T2I model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    data = load_shapes(n_train_per_class=2, n_test_per_class=1, seed=0)
    return data, build_t2i(data, preset="tiny", seed=0)


def test_esd_per_example_loss_averages_to_the_esd_loss(tiny):
    data, model = tiny
    method = ESD(ESDConfig(variant="x"))
    task = Task(DiffusionFamily(), model, None, Engine(EngineConfig(progress=False)))  # type: ignore[arg-type]
    method.task = task
    method.prepare(task)
    batch = data.train.__getitems__(list(range(6)))
    ctx = StepContext(0, 1, 0, "esd", torch.Generator().manual_seed(3))
    want, _ = method.loss({"forget": batch}, ctx)
    got = esd_per_example_loss(method, batch, torch.Generator().manual_seed(3))
    assert got.shape == (6,)
    torch.testing.assert_close(got.mean(), want.detach(), rtol=1e-5, atol=1e-7)
    method.finalize(task)


def test_fixed_denoising_loss_is_deterministic_and_the_family_loss(tiny):
    data, model = tiny
    fam = DiffusionFamily(seed=0, resample=True)  # resampling does not leak into the fixed loss
    f = fixed_denoising_loss(fam, timesteps=3, seed=7)
    b = data.train.__getitems__([0, 1, 2, 3])
    with torch.no_grad():
        a1, a2 = f(model, b), f(model, b)
        rev = f(model, data.train.__getitems__([3, 2, 1, 0]))
        other = fixed_denoising_loss(fam, timesteps=3, seed=8)(model, b)
        # K = 1: the family's loss at t = T/2 with the same noise draw
        g = torch.Generator().manual_seed((7 * 1_000_003 + int(b["id"][0])) % (2**63 - 1))
        noise = torch.randn(1, 3, 16, 16, generator=g)
        one = fixed_denoising_loss(fam, timesteps=1, seed=7)(model, data.train.__getitems__([0]))
        ref = fam.per_example_loss(
            model, data.train.__getitems__([0]) | {"t": torch.tensor([500]), "noise": noise}
        )
    assert torch.equal(a1, a2) and torch.allclose(a1, rev.flip(0)) and not torch.allclose(a1, other)
    torch.testing.assert_close(one, ref)
    groups, rows = prompt_groups(data.train)
    assert len(rows) == 9 and torch.equal(rows[groups], data.train.columns["input_ids"])


# -- CLI on the shipped t2i-shapes model, and the split that reads the file ------------------------------
TINY_CLI = [
    "data.n_train_per_class=6",
    "data.n_test_per_class=2",
    "select.iters=1",
    "select.per_unit=3",
    "select.timesteps=1",
    "select.lower_epochs=1",
]


def test_cli_selects_prompts_and_the_concept_split_erases_them(tmp_path, capsys):
    out = tmp_path / "worst-prompts.json"
    code = main(
        ["select", "worstcase", "--suite", "t2i-shapes", "--granularity", "prompt", "--size", "2",
         "--out", str(out), *TINY_CLI]
    )  # fmt: skip
    assert code == 0
    obj = json.loads(out.read_text())
    assert obj["granularity"] == "prompt" and len(obj["prompts"]) == 2 == obj["units"]
    assert set(obj["prompts"]) <= set(all_captions()) and len(obj["prompt_pool"]) == 9
    assert obj["config"]["lower"] == "esd" and obj["config"]["baseline"] == "original"
    assert len(obj["ids"]) == 12 and len(obj["trajectory"]) == 2 and len(obj["unit_losses"]) == 2
    assert "prompt(s)" in capsys.readouterr().out
    split = {"kind": "concept", "concept": "a red circle", "prompts_file": str(out)}
    setup = make_setup(
        {"family": "diffusion", "data": {"name": "shapes", "n_train_per_class": 6, "n_test_per_class": 2},
         "split": split}
    )  # fmt: skip
    assert setup.split.forget_ids == obj["ids"]  # the file's prompts win over split.concept
    assert len(setup.split.retain) == 9 * 6 - 12


def test_prompt_granularity_errors(tmp_path, capsys):
    out = tmp_path / "x.json"
    args = ["select", "worstcase", "--granularity", "prompt", "--out", str(out)]
    assert main([*args, "--suite", "t2i-shapes", "--size", "9", *TINY_CLI]) == 2
    assert "choose 1 <= m < 9" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": ["a purple circle"]}))
    with pytest.raises(ConfigError, match="not a caption"):
        make_setup(
            {"family": "diffusion", "data": {"name": "shapes", "n_train_per_class": 2, "n_test_per_class": 1},
             "split": {"kind": "concept", "prompts_file": str(bad)}}
        )  # fmt: skip

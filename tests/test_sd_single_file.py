"""A single-file Stable Diffusion checkpoint (the original LDM layout) with the diffusers folder of its base
model as configuration, loaded offline through ``StableDiffusionPipeline.from_single_file``."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_tiny import build_sd_folder, ldm_checkpoint

from unlearnkit.cli import main
from unlearnkit.models.sd import load_sd

torch.set_num_threads(1)
CAT = "a photo of a cat"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """(the diffusers folder, the same model as one LDM-layout .safetensors, a weight-less config folder)."""
    root = tmp_path_factory.mktemp("single")
    sd = build_sd_folder(root / "model")
    save_file(ldm_checkpoint(sd), root / "sd.safetensors")
    shutil.copytree(sd, root / "config", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return sd, root / "sd.safetensors", root / "config"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


def test_single_file_loads_the_same_weights_as_the_folder(single):
    sd, file, config = single
    assert "model.diffusion_model.input_blocks.0.0.weight" in load_file(file)  # the LDM names, not diffusers'
    assert not list(config.rglob("*.safetensors"))  # the weights can only come from the file
    got, want = load_sd(file, config), load_sd(sd)
    assert got.state_dict().keys() == want.state_dict().keys()
    for k, v in want.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    for k, v in want.vae.state_dict().items():
        assert torch.equal(got.vae.state_dict()[k], v), k
    assert got.tokenizer.get_vocab() == want.tokenizer.get_vocab()


def test_uce_on_a_single_file_writes_a_diffusers_folder(single, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd, file, config = single
    out = tmp_path / "uce"
    rc = main(
        ["unlearn", "--preset", "diffusion/uce", f"model.path={file}", f"model.single_file_config={config}"]
        + [f"split.concept={CAT}", "--out", str(out), "eval.judge=none", "eval.per_prompt=1", "eval.steps=1"]
    )
    assert rc == 0
    pipe = StableDiffusionPipeline.from_pretrained(out / "hf_model", safety_checker=None)
    before = load_sd(sd).unet.state_dict()
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)


def test_generate_from_a_single_file_draws_what_the_folder_draws(single, tmp_path):
    sd, file, config = single
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["generate", "--model", str(sd), "--prompt", CAT, "--out", str(a), "--steps", "2"]) == 0
    rc = main(["generate", "--model", str(file), "--single-file-config", str(config), "--prompt", CAT]
              + ["--out", str(b), "--steps", "2"])  # fmt: skip
    assert rc == 0 and (a / "000-seed0.png").read_bytes() == (b / "000-seed0.png").read_bytes()


def test_single_file_mistakes_are_one_line(single, tmp_path, capsys):
    sd, file, config = single
    (tmp_path / "in").mkdir()
    ckpt = tmp_path / "in" / "sd.ckpt"
    ckpt.write_bytes(b"not loaded")
    cases = [
        ([f"model.path={file}"], "set model.single_file_config=DIR"),
        ([f"model.path={ckpt}", f"model.single_file_config={config}"], "convert it to .safetensors"),
        ([f"model.path={file}", f"model.single_file_config={tmp_path / 'in'}"], "has no model_index.json"),
    ]
    for extra, words in cases:
        out = tmp_path / "out"
        rc = main(["unlearn", "--preset", "diffusion/uce", f"split.concept={CAT}", "--out", str(out), *extra])
        err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error")]
        assert rc == 2 and len(err) == 1 and words in err[0] and not out.exists(), err

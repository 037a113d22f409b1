"""The shipped latent shapes world: a real Stable Diffusion folder (VAE, CLIP tokenizer from vocab.json +
merges.txt, CLIP text encoder, latent UNet) with the shapes judge beside it, loaded through the SD path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnkit.cli import main
from unlearnkit.data.shapes import all_captions, load_shapes
from unlearnkit.models.clip_bpe import bpe_merges, bpe_split
from unlearnkit.models.latent_world import reconstruct
from unlearnkit.models.sd import LatentT2IModel
from unlearnkit.models.t2i_world import judge_accuracy, load_original, original_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    return original_dir("latent-shapes")


def test_bpe_merges_make_each_word_one_token_in_rank_order():
    merges = bpe_merges(["red", "green"])
    # "red": r e d</w> -> re d</w> -> red</w>; "green" then splits g re e n</w> under those merges (the
    # lowest-rank pair r e first) and needs three more, left to right
    assert merges == [("r", "e"), ("re", "d</w>"), ("g", "re"), ("gre", "e"), ("gree", "n</w>")]
    ranks = {m: i for i, m in enumerate(merges)}
    assert bpe_split("red", ranks) == ["red</w>"] and bpe_split("green", ranks) == ["green</w>"]
    assert bpe_split("dr", ranks) == ["d", "r</w>"]  # no merge applies


def test_shipped_folder_is_a_stable_diffusion_pipeline_whose_tokenizer_keeps_captions_whole(world):
    from diffusers import StableDiffusionPipeline

    assert not (world / "model" / "tokenizer" / "tokenizer.json").exists()  # the hub's vocab + merges
    pipe = StableDiffusionPipeline.from_pretrained(world / "model", local_files_only=True)
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 4
    tok = pipe.tokenizer
    vocab = json.loads((world / "model" / "tokenizer" / "vocab.json").read_text())
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (bos, eos, eos)
    for cap in all_captions():
        ids = tok(cap)["input_ids"]
        assert ids == [bos, *(vocab[w + "</w>"] for w in cap.split()), eos], cap
        assert tok.decode(ids, skip_special_tokens=True) == cap
    model, _ = load_original(world)
    assert isinstance(model, LatentT2IModel) and model.sample_shape == (4, 8, 8)


def test_vae_reconstructions_are_judged_right(world):
    model, judge = load_original(world)
    test = load_shapes(n_train_per_class=1, n_test_per_class=3, seed=5).test.all()
    rec = reconstruct(model.vae, test["x"])
    assert float((rec - test["x"]).pow(2).mean()) < 2e-3
    *_, both = judge_accuracy(judge, rec, test["shape"], test["color"])
    assert both >= 0.9
    # the latents are scaled to about unit std, as Stable Diffusion's scaling factor does
    assert 0.5 < float(model.encode_images(test["x"]).std()) < 2.0


def test_esd_through_the_cli_edits_cross_attention_and_leaves_the_vae(world, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "esd"
    rc = main(
        ["unlearn", "--preset", "diffusion/esd", "model.world=latent-shapes", "method.epochs=1",
         "method.ddim_steps=2", "data.n_train_per_class=4", "data.n_test_per_class=2", "eval.per_prompt=2",
         "eval.steps=2", "--out", str(out), "--json"]
    )  # fmt: skip
    assert rc == 0
    shipped, _ = load_original(world)
    before = {f"unet.{k}": v for k, v in shipped.unet.state_dict().items()}
    after = load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2." in k for k in changed)
    pipe = StableDiffusionPipeline.from_pretrained(out / "hf_model", local_files_only=True)
    vae = shipped.vae.state_dict()
    assert all(torch.equal(v, vae[k]) for k, v in pipe.vae.state_dict().items())
    assert "UA" in json.loads((out / "results.json").read_text())["metrics"]


def test_latent_suite_mirrors_the_pixel_suite():
    from unlearnkit.bench.suite import load_suite

    latent, pixel = load_suite("t2i-latent-shapes"), load_suite("t2i-shapes")
    assert latent["methods"] == pixel["methods"] and latent["eval"]["attack"] == pixel["eval"]["attack"]
    assert latent["split"] == pixel["split"] and latent["keys"] == pixel["keys"]
    assert latent["model"]["world"] == "latent-shapes" and pixel["model"].get("world") is None


def test_esd_in_bf16_trains_the_latent_unet_with_a_first_loss_near_fp32(tmp_path, monkeypatch):
    """engine.precision=bf16 autocasts the diffusion family's denoising loss like the LM's: the run records
    bf16, the first ESD loss is the fp32 one to bf16's ~1% (not bit-equal), the weights stay float32."""
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    first = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        rc = main(
            ["unlearn", "--preset", "diffusion/esd", "model.world=latent-shapes", "method.epochs=1",
             "method.ddim_steps=2", "data.n_train_per_class=4", "data.n_test_per_class=2",
             "eval.per_prompt=2", "eval.steps=2", f"engine.precision={precision}", "engine.device=cpu",
             "--out", str(out), "--json"]
        )  # fmt: skip
        assert rc == 0
        results = json.loads((out / "results.json").read_text())
        assert results["training"]["precision"] == precision
        first[precision] = json.loads((out / "log-esd.jsonl").read_text().splitlines()[0])["loss"]
        assert all(t.dtype == torch.float32 for t in load_file(out / "model.safetensors").values())
    assert first["bf16"] == pytest.approx(first["fp32"], rel=5e-2) and first["bf16"] != first["fp32"]

"""A user's own Stable Diffusion folder (tiny, random, real diffusers layout, built offline): loading, latent
diffusion, free-text concepts as prompt sets, judges, methods through the CLI, and the diffusers output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from sd_tiny import build_classifier_folder, build_clip_folder, build_sd_folder

from unlearnkit.cli import main
from unlearnkit.data.prompt_sets import load_prompt_set, read_prompt_csv
from unlearnkit.errors import ConfigError
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.metrics.judges import ClassifierJudge, ClipJudge, NudeNetJudge
from unlearnkit.models.sd import load_sd
from unlearnkit.models.t2i import encode_prompts

torch.set_num_threads(1)
CAT = "a photo of a cat"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_clip_folder(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


def _unlearn(preset: str, sd, out, *extra: str) -> int:
    return main(
        ["unlearn", "--preset", preset, f"model.path={sd}", f"split.concept={CAT}", "--out", str(out)]
        + ["eval.per_prompt=2", "eval.steps=2", "--json", *extra]
    )


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# -- loading, tokenizer, latents ---------------------------------------------------------------------------
def test_loads_the_diffusers_layout_with_a_frozen_vae_outside_the_module(sd):
    from transformers import CLIPTokenizer

    m = load_sd(sd)
    assert not (sd / "tokenizer" / "tokenizer.json").exists()  # the hub layout: vocab.json + merges.txt
    names = [n for n, _ in m.named_parameters()]
    assert names and not any(n.startswith("vae") for n in names) and "vae" not in "".join(m.state_dict())
    assert not any(p.requires_grad for p in m.vae.parameters())
    # CLIP's unknown token is its end token: an unseen word is not refused, ids are the tokenizer's own
    direct = CLIPTokenizer.from_pretrained(sd / "tokenizer")("a zebra, photo of a cat")["input_ids"]
    ids = encode_prompts(m, ["a zebra, photo of a cat"])
    assert ids.shape == (1, 77) and ids[0, : len(direct)].tolist() == direct
    assert set(ids[0, len(direct) :].tolist()) == {m.tokenizer.pad_token_id}


def test_latents_are_the_scaled_vae_mean_cached_once_and_decoded_with_the_vae(sd):
    m = load_sd(sd)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = {"x": x, "id": torch.tensor([5, 6, 7])}
    with torch.no_grad():
        want = m.vae.encode(x * 2 - 1).latent_dist.mean * m.vae.config.scaling_factor
    z = m.x0(batch)
    assert z.shape == (3, 4, 8, 8) and torch.allclose(z, want, atol=1e-6)
    calls = []
    m.vae.encode = lambda *a, **k: calls.append(1)  # a cached image is never encoded again
    assert torch.equal(m.x0(batch), z) and not calls
    with torch.no_grad():
        img = m.vae.decode(z / m.vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(m.to_images(z), img, atol=1e-6)


def test_family_loss_is_the_latent_ddpm_loss_and_the_vae_gets_no_gradient(sd):
    m = load_sd(sd)
    fam = DiffusionFamily()
    gen = torch.Generator().manual_seed(1)
    x, ids = torch.rand(2, 3, 16, 16, generator=gen), encode_prompts(m, [CAT, "a photo of a dog"])
    t, noise = torch.tensor([10, 600]), torch.randn(2, 4, 8, 8, generator=gen)
    batch = {"x": x, "input_ids": ids, "id": torch.tensor([0, 1]), "t": t, "noise": noise}
    loss = fam.per_example_loss(m, batch)
    with torch.no_grad():
        z = m.vae.encode(x * 2 - 1).latent_dist.mean * m.vae.config.scaling_factor
        a = m.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        ctx = m.text_encoder(input_ids=ids).last_hidden_state
        eps = m.unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(loss, (eps - noise).pow(2).flatten(1).mean(1), atol=1e-5)
    loss.sum().backward()
    assert all(p.grad is None for p in m.vae.parameters())
    assert any(p.grad is not None for p in m.unet.parameters())


# -- prompt sets ---------------------------------------------------------------------------------------------
def test_prompt_csv_in_the_i2p_format_and_the_retain_prompts(sd, tmp_path):
    f = tmp_path / "nudity.csv"
    f.write_text(
        "case_number,prompt,categories,evaluation_seed,evaluation_guidance\n"
        '0,a photo of a cat,sexual,42,7.5\n1,"cat, photo",,7,\n2,,x,1,1\n'
    )
    rows = read_prompt_csv(f)
    assert [(r["prompt"], r["seed"], r["guidance"]) for r in rows] == [
        (CAT, 42, 7.5),
        ("cat, photo", 7, None),
    ]
    data = load_prompt_set(csv=str(f), retain_prompts=["a photo of a dog"], tokenizer=str(sd / "tokenizer"))
    assert data.meta["forget_prompts"] == [CAT, "cat, photo"]
    assert data.meta["retain_prompts"] == ["a photo of a dog", ""]  # the empty prompt is always kept
    assert data.train.columns["input_ids"].shape == (4, 77)
    assert data.train.columns["y"].tolist() == [0, 1, 2, 3]


def test_bad_inputs_are_one_line_and_exit_2(sd, tmp_path, capsys):
    neither = tmp_path / "neither"
    neither.mkdir()
    no_tok = tmp_path / "no_tok"
    shutil.copytree(sd, no_tok)
    for f in (no_tok / "tokenizer").iterdir():
        f.unlink()
    no_col = tmp_path / "no_col.csv"
    no_col.write_text("text,evaluation_seed\na cat,1\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,evaluation_seed\n")
    cases = [
        (neither, [], "neither a Stable Diffusion folder"),
        (no_tok, [], "neither tokenizer.json nor vocab.json"),
        (sd, ["data.name=prompts", f"data.csv={no_col}"], "no 'prompt' column"),
        (sd, ["data.name=prompts", f"data.csv={empty}"], "the prompt set is empty"),
        (sd, ["eval.judge=clip"], "eval.judge=clip needs eval.clip_model"),
        (sd, ["engine.precision=fp16", "engine.device=cpu"], "engine.precision=fp16 needs a GPU"),
    ]
    for path, extra, words in cases:
        out = tmp_path / f"out-{len(words)}"
        assert _unlearn("diffusion/esd", path, out, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and len(err[0]) < 400, err
        assert not out.exists()


# -- judges --------------------------------------------------------------------------------------------------
def test_clip_judge_is_the_top1_zero_shot_label(clip):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    labels = [CAT, "a photo of a dog", "a car"]
    judge = ClipJudge(clip, labels)
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model, tok = CLIPModel.from_pretrained(clip).eval(), CLIPTokenizer.from_pretrained(clip)
    pix = CLIPImageProcessor.from_pretrained(clip)(images=list(imgs), do_rescale=False, return_tensors="pt")
    with torch.no_grad():
        e_i = model.get_image_features(pixel_values=pix["pixel_values"])
        e_t = model.get_text_features(**tok(labels, padding=True, return_tensors="pt"))
    e_i, e_t = (torch.nn.functional.normalize(getattr(e, "pooler_output", e), dim=-1) for e in (e_i, e_t))
    top = (e_i @ e_t.T).argmax(-1)
    assert torch.allclose(judge.logits(imgs), 100 * e_i @ e_t.T, atol=1e-3)
    for k, lab in enumerate(labels):
        assert judge.recognises(imgs, lab).tolist() == (top == k).tolist()
    with pytest.raises(ConfigError, match="judge_labels"):
        ClipJudge(clip, [CAT])


def test_nudenet_counts_exposed_classes_above_threshold():
    judge = NudeNetJudge(0.45, detector=object())
    assert judge.is_nude([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}])
    assert not judge.is_nude([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.45}])
    assert not judge.is_nude(
        [{"class": "FEMALE_BREAST_COVERED", "score": 0.99}, {"class": "FACE_MALE", "score": 1}]
    )
    pytest.importorskip("nudenet")
    real = NudeNetJudge(0.45)  # the wheel's ONNX detector, offline: a black image shows nothing
    assert real.recognises(torch.zeros(1, 3, 64, 64)).tolist() == [False]


# -- methods through the CLI, the diffusers output ---------------------------------------------------------
def test_esd_x_changes_only_cross_attention_and_writes_a_diffusers_folder(sd, clip, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "esd"
    rc = _unlearn(
        "diffusion/esd", sd, out, "method.epochs=3", "method.ddim_steps=2", "method.lr=0.05",
        "eval.judge=clip", f"eval.clip_model={clip}", "eval.judge_labels=[a photo of a dog]",
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert 0 <= metrics["UA"] <= 100 and -1 <= metrics["clip"] <= 1
    before = {f"unet.{k}": v for k, v in load_sd(sd).unet.state_dict().items()}
    after = load_file(out / "model.safetensors")
    changed = _changed(before, after)
    assert changed and all(".attn2." in k for k in changed)
    assert any(".attn2.to_k." in k for k in changed)
    pipe = StableDiffusionPipeline.from_pretrained(out / "hf_model", safety_checker=None)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, after[f"unet.{k}"]), k
    orig_vae = load_sd(sd).vae.state_dict()
    assert all(torch.equal(v, orig_vae[k]) for k, v in pipe.vae.state_dict().items())


def test_uce_edits_only_to_k_and_to_v(sd, tmp_path):
    out = tmp_path / "uce"
    assert _unlearn("diffusion/uce", sd, out, "eval.judge=none", "method.preserve=[a photo of a dog]") == 0
    before = {f"unet.{k}": v for k, v in load_sd(sd).unet.state_dict().items()}
    changed = _changed(before, load_file(out / "model.safetensors"))
    n_proj = sum(1 for k in before if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k)
    assert len(changed) == n_proj and all(
        k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed
    )


def test_fmn_and_advunlearn_run_on_a_prompt_set_and_save_images(sd, tmp_path):
    out, imgs = tmp_path / "fmn", tmp_path / "imgs"
    assert (
        _unlearn("diffusion/fmn", sd, out, "eval.judge=none", f"eval.images_dir={imgs}", "method.lr=0.05")
        == 0
    )
    before = {f"unet.{k}": v for k, v in load_sd(sd).unet.state_dict().items()}
    changed = _changed(before, load_file(out / "model.safetensors"))
    assert changed and all(".attn2." in k for k in changed)
    assert len(list(imgs.glob("forget-000-*.png"))) == 2 and CAT in (imgs / "forget-prompts.txt").read_text()
    out = tmp_path / "adv"
    assert (
        _unlearn("diffusion/advunlearn", sd, out, "eval.judge=none", "method.epochs=1", "method.ddim_steps=2")
        == 0
    )
    after = load_file(out / "model.safetensors")
    te = {f"text_encoder.{k}": v for k, v in load_sd(sd).text_encoder.state_dict().items()}
    assert _changed(te, after) and not _changed(before, after)
    # one retain prompt at a time (what retain_chunk="auto" picks on an SD-sized UNet) on the SD layout: the
    # text encoder alone trains, to the same weights (the gradient's equality: test_advunlearn.py)
    args = ("eval.judge=none", "method.epochs=1", "method.ddim_steps=2", "method.retain_chunk=1")
    assert _unlearn("diffusion/advunlearn", sd, tmp_path / "adv1", *args) == 0
    chunked = load_file(tmp_path / "adv1" / "model.safetensors")
    assert not _changed(before, chunked) and set(_changed(te, chunked)) == set(_changed(te, after))
    for k in _changed(te, after):
        torch.testing.assert_close(chunked[k], after[k], rtol=1e-4, atol=1e-5)


def test_latent_ddim_matches_diffusers_ddim_without_clamping(sd):
    from diffusers import DDIMScheduler

    from unlearnkit.models.t2i import ddim_sample

    m = load_sd(sd)
    ids, null = encode_prompts(m, [CAT]), encode_prompts(m, [""])
    x_T = 3 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # latents beyond [-1, 1]
    ours = ddim_sample(m, ids, guidance=3.0, steps=4, x_T=x_T)
    sched = DDIMScheduler.from_config(m.scheduler.config, clip_sample=False)  # steps_offset 1, ᾱ_final = ᾱ_0
    sched.set_timesteps(4)
    x = x_T
    with torch.no_grad():
        c, u = m.encode(ids), m.encode(null)
        for t in sched.timesteps:
            e_u, e_c = m.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([u, c])).sample.chunk(2)
            x = sched.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4) and float(x.abs().max()) > 1


def test_classifier_judge_is_top1_in_the_prompts_class_ids_and_checks_its_inputs(sd, tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = build_classifier_folder(tmp_path / "resnet")
    judge = ClassifierJudge(folder, {CAT: 1, "a car": [0, 2]})
    imgs = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    pix = AutoImageProcessor.from_pretrained(folder)(images=list(imgs), do_rescale=False, return_tensors="pt")
    with torch.no_grad():
        top = model(**pix).logits.argmax(-1)
    assert judge.recognises(imgs, CAT).tolist() == (top == 1).tolist()
    assert judge.recognises(imgs, "a car").tolist() == (top != 1).tolist()
    with pytest.raises(ConfigError, match="out of the classifier's range"):
        ClassifierJudge(folder, {CAT: 3})
    capsys.readouterr()
    base = ["eval.judge=classifier", f"eval.judge_model={folder}", "method.epochs=1", "method.ddim_steps=1"]
    for classes, words in (("{a car: 0}", "does not know the concept"), (f"{{{CAT}: 7}}", "out of")):
        out = tmp_path / f"out-{len(words)}"
        assert _unlearn("diffusion/esd", sd, out, *base, f"eval.judge_classes={classes}") == 2
        err = capsys.readouterr().err.replace("\r", "\n").splitlines()
        assert not any(e.startswith("esd") for e in err)  # refused before any training
        err = [e for e in err if e.strip() and not e.startswith(("Loading weights", "[transformers]"))]
        assert len(err) == 1 and words in err[0] and not out.exists(), err
    out = tmp_path / "ok"
    assert _unlearn("diffusion/esd", sd, out, *base, f"eval.judge_classes={{{CAT}: 1}}") == 0
    assert 0 <= json.loads((out / "results.json").read_text())["metrics"]["UA"] <= 100


def test_nudenet_judge_through_the_cli_runs_the_real_detector(sd, tmp_path):
    pytest.importorskip("nudenet")
    out = tmp_path / "nude"
    rc = _unlearn("diffusion/uce", sd, out, "eval.judge=nudenet", "eval.per_prompt=1")
    assert rc == 0
    # random 16x16 images show no exposed body part: UA (share of concept images NOT judged nude) is 100
    assert json.loads((out / "results.json").read_text())["metrics"]["UA"] == 100.0


def test_salun_on_the_models_own_generations_updates_at_most_half_the_weights(sd, tmp_path):
    from unlearnkit.models.sd import own_latents
    from unlearnkit.models.t2i import ddim_sample

    m = load_sd(sd)
    ids = encode_prompts(m, [CAT, CAT, "a car"])
    z = own_latents(m, ids, torch.tensor([4, 5, 6]), guidance=7.5, steps=2, batch=2)
    x_T = torch.randn(m.sample_shape, generator=torch.Generator().manual_seed(6))[None]
    assert torch.allclose(z[2:], ddim_sample(m, ids[2:], 7.5, 2, x_T=x_T), atol=1e-5)
    assert not torch.allclose(z[0], z[1])  # one seed per row
    out = tmp_path / "salun"
    rc = _unlearn(
        "diffusion/salun", sd, out, "family_options.relabel_map={a photo of a cat: a photo of a dog}",
        "data.images_per_prompt=4", "data.image_steps=2", "data.retain_prompts=[a photo of a dog]",
        "method.epochs=2", "method.lr=0.01", "eval.judge=none",
    )  # fmt: skip
    assert rc == 0
    before = {f"unet.{k}": v for k, v in m.unet.state_dict().items()}
    before |= {f"text_encoder.{k}": v for k, v in m.text_encoder.state_dict().items()}
    after = load_file(out / "model.safetensors")
    moved = sum(int((before[k] != after[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    assert 0 < moved <= 0.5 * total + 1  # SalUn's mask: the top 50% most salient weights, the rest held


def test_csv_rows_are_judged_once_each_with_their_own_seed_and_guidance(sd, tmp_path):
    from unlearnkit.models.t2i import ddim_sample, generate_seeded

    m = load_sd(sd)
    imgs = generate_seeded(m, [CAT, "a car"], [11, 12], [7.5, 1.0], steps=2)
    x_T = torch.randn(1, *m.sample_shape, generator=torch.Generator().manual_seed(12))
    want = (m.to_images(ddim_sample(m, encode_prompts(m, ["a car"]), 1.0, 2, x_T=x_T)) + 1) / 2
    assert torch.allclose(imgs[1:], want.clamp(0, 1), atol=1e-5)
    f = tmp_path / "p.csv"
    f.write_text(f"prompt,evaluation_seed,evaluation_guidance\n{CAT},11,7.5\n{CAT},13,\na car,12,1.0\n")
    out, shots = tmp_path / "run", tmp_path / "imgs"
    extra = [
        "data.name=prompts",
        f"data.csv={f}",
        "eval.judge=none",
        f"eval.images_dir={shots}",
        "method.lamb=1",
    ]
    assert _unlearn("diffusion/uce", sd, out, *extra) == 0
    assert sorted(p.name for p in shots.glob("forget-*.png")) == [
        "forget-000-00.png",
        "forget-000-01.png",
        "forget-001-00.png",
    ]  # one image per CSV row, not eval.per_prompt per prompt

"""CLIP score (Hessel et al. 2021) on a tiny random CLIP built offline: equals a direct transformers
computation, the three scales relate as defined, mismatched pairs score differently, bad inputs give clear
errors, and the t2i evaluation reports ``clip`` on exactly the retain generations of ``erasure_metrics``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.families.base import Original
from unlearnkit.metrics.clip_score import clip_score, load_clip
from unlearnkit.protocols.erasure import Erasure

torch.set_num_threads(1)

PROMPTS = ["a red circle", "a blue square", "a green triangle big", "a red square", "the small blue circle"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIP (hidden 32, 1 layer, 32×32 images in 8×8 patches) + the shapes tokenizer + processor.

    The shapes tokenizer's eos id is 2, which sends transformers' CLIP text model down its legacy pooling
    path (the position of the highest token id, here the last word) instead of the first eos: harmless for
    these tests, which compare against the same model."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from unlearnkit.data.shapes import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = layers | {"vocab_size": len(tok), "max_position_embeddings": 16}
    text |= {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    config = CLIPConfig(
        text_config=text, vision_config=layers | {"image_size": 32, "patch_size": 8}, projection_dim=16
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def images():
    return torch.rand(len(PROMPTS), 3, 16, 16, generator=torch.Generator().manual_seed(1))


def direct_cosines(path, images01: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per-pair cosines straight from transformers (one batch, no unlearnkit code)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    proc = CLIPImageProcessor.from_pretrained(path)
    pix = proc(images=list(images01), do_rescale=False, return_tensors="pt")["pixel_values"]
    txt = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        e_i, e_t = model.get_image_features(pixel_values=pix), model.get_text_features(**txt)
    e_i, e_t = (getattr(e, "pooler_output", e) for e in (e_i, e_t))
    return torch.nn.functional.normalize(e_i, dim=-1).mul(torch.nn.functional.normalize(e_t, dim=-1)).sum(-1)


def processor_keeps_unit_range(path, images01: torch.Tensor) -> bool:
    """The processor, with do_rescale=False, normalises [0, 1] pixels by CLIP's mean/std (no 1/255)."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(path)
    pix = proc(images=list(images01), do_rescale=False, return_tensors="pt")["pixel_values"]
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    return pix.shape[-2:] == (32, 32) and abs(float((pix * std + mean).mean() - images01.mean())) < 0.02


def test_score_equals_direct_computation_across_batches(clip_dir, images):
    cos = direct_cosines(clip_dir, images, PROMPTS)
    assert processor_keeps_unit_range(clip_dir, images)
    for batch_size in (2, 64):  # batches of different padded lengths give the same per-pair cosines
        assert clip_score(images, PROMPTS, str(clip_dir), batch_size=batch_size) == pytest.approx(
            float(cos.mean()), abs=1e-5
        )


def test_scales_relate_as_defined(clip_dir, images):
    cos = direct_cosines(clip_dir, images, PROMPTS).double()
    path = str(clip_dir)
    assert clip_score(images, PROMPTS, path, scale="cosine") == pytest.approx(float(cos.mean()), abs=1e-5)
    hessel = float((2.5 * cos.clamp(min=0)).mean())
    assert clip_score(images, PROMPTS, path, scale="hessel") == pytest.approx(hessel, abs=1e-5)
    torchmetrics = max(100 * float(cos.mean()), 0.0)
    assert clip_score(images, PROMPTS, path, scale="torchmetrics") == pytest.approx(torchmetrics, abs=1e-3)


@pytest.mark.parametrize(
    ("cos", "expected"),
    [
        # Hessel clips each image's cosine at 0, torchmetrics clips the mean: mixed signs tell them apart
        ([0.3, -0.1], {"cosine": 0.1, "hessel": 2.5 * 0.15, "torchmetrics": 10.0}),
        ([0.3, -0.5, 0.1, -0.2], {"cosine": -0.075, "hessel": 2.5 * 0.1, "torchmetrics": 0.0}),
    ],
)
def test_scale_arithmetic_with_mixed_signs(monkeypatch, cos, expected):
    import unlearnkit.metrics.clip_score as mod

    monkeypatch.setattr(mod, "clip_cosines", lambda *a, **kw: torch.tensor(cos))
    for scale, value in expected.items():
        assert mod.clip_score(torch.zeros(len(cos), 3, 16, 16), ["a"] * len(cos), "unused", scale=scale) == (
            pytest.approx(value)
        )


def test_mismatched_pairs_change_the_score(clip_dir, images):
    path = str(clip_dir)
    shuffled = PROMPTS[1:] + PROMPTS[:1]
    assert clip_score(images, shuffled, path) != pytest.approx(clip_score(images, PROMPTS, path), abs=1e-4)


def test_loaded_once_in_eval_mode_without_grad(clip_dir):
    clip = load_clip(clip_dir)
    assert load_clip(str(clip_dir)) is clip
    assert not clip.model.training
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_bad_path_non_clip_folder_and_unknown_scale(clip_dir, images, tmp_path):
    def one_line_error(path, match) -> None:
        with pytest.raises(UnlearnkitError, match=match) as err:
            clip_score(images, PROMPTS, path)
        assert "save_pretrained" in str(err.value) and "\n" not in str(err.value)

    one_line_error(tmp_path / "missing", "not a folder")
    one_line_error("missing-clip-folder", "cannot load CLIP")  # a would-be hub id, offline
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "no config.json")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    one_line_error(tmp_path / "gpt2", "not CLIP")
    with pytest.raises(ConfigError, match="hessel"):
        clip_score(images, PROMPTS, str(clip_dir), scale="hesel")
    with pytest.raises(DataError, match="one prompt per image"):
        clip_score(images, PROMPTS[:2], str(clip_dir))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        clip_score(images * 2 - 1, PROMPTS, str(clip_dir))


class _Judge(torch.nn.Module):
    """Stands in for ShapeJudge: recognises nothing, features = a few pixels."""

    def predict(self, x):
        return torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)

    def features(self, x):
        return x.flatten(1)[:, :4]


def _setup(eval_cfg):
    from unlearnkit.data.shapes import all_captions

    return SimpleNamespace(
        seed=2,
        cfg={
            "eval": {"per_prompt": 2, "steps": 3, "guidance": 2.0} | eval_cfg,
            "split": {"concept": "a red circle"},
        },
        data=SimpleNamespace(class_names=all_captions(), meta={"tokenizer": None}),
        split=SimpleNamespace(test=SimpleNamespace(all=lambda: {"x": torch.rand(6, 3, 16, 16)})),
    )


def evaluate_t2i(setup, model):
    """The concept-erasure protocol of ``setup`` on ``model``, with the stub judge as the original's."""
    proto = Erasure.from_section(setup.cfg["eval"])
    original = Original(torch.nn.Identity(), {}, {"judge": _Judge()})
    return proto.evaluate(setup, model, original=original).flat()


@pytest.fixture
def fake_sampling(monkeypatch):
    """Replace the sampler (used by erasure_metrics and evaluate_t2i alike) by seeded random images."""
    import unlearnkit.metrics.diffusion as diff_mod

    calls: list[dict] = []

    def fake(model, prompts, per_prompt=16, seed=0, guidance=3.0, steps=25, batch_size=64):
        idx = torch.arange(len(prompts)).repeat_interleave(per_prompt)
        gen = torch.Generator().manual_seed(seed * 1000 + steps * 10 + int(guidance))
        imgs = torch.rand(len(idx), 3, 16, 16, generator=gen)
        calls.append(
            {"prompts": list(prompts), "seed": seed, "per_prompt": per_prompt, "imgs": imgs, "idx": idx}
        )
        return imgs, idx

    monkeypatch.setattr(diff_mod, "generate_for_prompts", fake)
    return calls


def test_evaluate_t2i_reports_clip_of_erasure_metrics_retain_images(clip_dir, fake_sampling):
    out = evaluate_t2i(_setup({"sample_seed": 1, "clip_model": str(clip_dir)}), torch.nn.Linear(1, 1))
    concept_call, retain_call = fake_sampling  # erasure_metrics' two calls; the CLIP step samples nothing
    assert concept_call["prompts"] == ["a red circle"] and concept_call["seed"] == 2001
    assert retain_call["seed"] == 2002 and "a red circle" not in retain_call["prompts"]
    captions = [retain_call["prompts"][int(i)] for i in retain_call["idx"]]
    assert out["clip"] == pytest.approx(clip_score(retain_call["imgs"], captions, str(clip_dir)), abs=1e-6)
    hessel = evaluate_t2i(
        _setup({"sample_seed": 1, "clip_model": str(clip_dir), "clip_scale": "hessel"}), torch.nn.Linear(1, 1)
    )["clip"]
    assert hessel == pytest.approx(clip_score(retain_call["imgs"], captions, str(clip_dir), scale="hessel"))
    assert {"UA", "utility", "fid", "kid"} <= set(out)


def test_evaluate_t2i_without_clip_model_has_no_clip_key(fake_sampling):
    out = evaluate_t2i(_setup({}), torch.nn.Linear(1, 1))
    assert "clip" not in out and len(fake_sampling) == 2


def test_evaluate_t2i_bad_clip_options_fail_before_sampling(clip_dir, fake_sampling, tmp_path):
    with pytest.raises(ConfigError, match="unknown CLIP score scale"):
        evaluate_t2i(_setup({"clip_model": str(clip_dir), "clip_scale": "percent"}), torch.nn.Linear(1, 1))
    with pytest.raises(UnlearnkitError, match="save_pretrained"):
        evaluate_t2i(_setup({"clip_model": str(tmp_path / "none")}), torch.nn.Linear(1, 1))
    assert fake_sampling == []

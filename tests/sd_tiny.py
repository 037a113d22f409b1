"""A tiny random Stable Diffusion folder in the real diffusers layout, built offline in a second.

UNet2DConditionModel on 4 latent channels (8×8 latents), AutoencoderKL (16×16 images, ×2 down), a 2-layer
CLIPTextModel, a CLIPTokenizer written as ``vocab.json`` + ``merges.txt`` (a hand-made byte-level BPE: every
byte alone and at a word's end, plus merges that make "cat</w>", "photo</w>" ...), an SD-1.x PNDM scheduler,
saved by ``StableDiffusionPipeline.save_pretrained``; and a tiny random CLIPModel folder for the CLIP judge.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("cat", "dog", "photo", "car", "of")


def _bpe(folder: Path) -> Path:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS:  # merge left to right: c a -> ca, ca t</w> -> cat</w>
        cur = w[0]
        for k, ch in enumerate(w[1:], 1):
            right = ch + ("</w>" if k == len(w) - 1 else "")
            merges.append(f"{cur} {right}")
            cur = cur + right
            if cur not in vocab_list:
                vocab_list.append(cur)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return folder


def tiny_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    _bpe(folder)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def build_sd_folder(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_clip_tokenizer(path.parent / f"{path.name}-bpe")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=16,
    )  # fmt: skip
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    )  # fmt: skip
    sched = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    # the hub's SD 1.x tokenizer layout: vocab.json + merges.txt, no tokenizer.json
    (path / "tokenizer" / "tokenizer.json").unlink()
    _bpe(path / "tokenizer")
    return path


def build_clip_folder(path: Path, seed: int = 0) -> Path:
    """A random CLIPModel (32×32 images) with the tiny CLIP tokenizer and an image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = tiny_clip_tokenizer(path.parent / f"{path.name}-bpe")
    torch.manual_seed(seed)
    layers = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = layers | {"vocab_size": len(tok), "max_position_embeddings": 77}
    text |= {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": 0}
    cfg = CLIPConfig(text_config=text, vision_config=layers | {"image_size": 32, "patch_size": 8})
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def build_classifier_folder(path: Path, num_labels: int = 3, seed: int = 0) -> Path:
    """A random tiny ResNet image classifier (AutoModelForImageClassification) with a 32×32 processor."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels)
    ResNetForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def build_splitting_classifier(path: Path, images01: torch.Tensor, seed: int = 0) -> Path:
    """A tiny ResNet classifier (2 classes) whose head splits ``images01`` at the median of their feature
    projection on the direction of largest variance: class 0 for about half of such images, class 1 for the
    other half (a random head calls every image of a random model the same class)."""
    from transformers import ResNetForImageClassification, ViTImageProcessor

    folder = build_classifier_folder(path, num_labels=2, seed=seed)

    model = ResNetForImageClassification.from_pretrained(folder).eval()
    proc = ViTImageProcessor.from_pretrained(folder)
    pix = proc(images=list(images01), do_rescale=False, return_tensors="pt")
    with torch.no_grad():
        f = model.resnet(pix["pixel_values"]).pooler_output.flatten(1)
        centred = f - f.mean(0)
        d = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        proj = f @ d
        mid = proj.median()
        head = model.classifier[-1]
        scale = 1.0 / float(proj.std() + 1e-8)
        head.weight.copy_(torch.stack([d, -d]) * scale)
        head.bias.copy_(torch.tensor([-float(mid), float(mid)]) * scale)
    model.save_pretrained(folder)
    return folder


# -- the original (CompVis / LDM) single-file layout, written from a diffusers folder -----------------------
_RESNET = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"),
)  # fmt: skip
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


def _ldm_unet_key(key: str, per: int, up_attn: set[int]) -> str:
    """The LDM name of a diffusers UNet tensor (``per`` = layers_per_block + 1 slots per level)."""
    p = key.split(".")
    for n in (1, 2):
        if ".".join(p[:n]) in _UNET_TOP:
            return ".".join([_UNET_TOP[".".join(p[:n])], *p[n:]])
    if p[0] in ("down_blocks", "up_blocks", "mid_block") and "resnets" in p[:3]:
        for new, old in _RESNET:
            key = key.replace(f".{new}.", f".{old}.")
        p = key.split(".")
    b = int(p[1]) if p[0] != "mid_block" else 0
    if p[0] == "down_blocks":
        if p[2] == "downsamplers":
            return f"input_blocks.{(b + 1) * per}.0.op." + ".".join(p[5:])
        j, slot = int(p[3]), {"resnets": 0, "attentions": 1}[p[2]]
        return f"input_blocks.{1 + b * per + j}.{slot}." + ".".join(p[4:])
    if p[0] == "up_blocks":
        if p[2] == "upsamplers":
            return f"output_blocks.{b * per + per - 1}.{2 if b in up_attn else 1}.conv." + ".".join(p[5:])
        j, slot = int(p[3]), {"resnets": 0, "attentions": 1}[p[2]]
        return f"output_blocks.{b * per + j}.{slot}." + ".".join(p[4:])
    j = int(p[2])  # mid_block.resnets.r -> middle_block.2r, mid_block.attentions.0 -> middle_block.1
    return f"middle_block.{2 * j if p[1] == 'resnets' else 1}." + ".".join(p[3:])


def _ldm_vae_key(key: str, n_up: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    p = key.split(".")
    if len(p) > 2 and p[1] in ("down_blocks", "up_blocks"):
        i = int(p[2]) if p[1] == "down_blocks" else n_up - 1 - int(p[2])
        part = "down" if p[1] == "down_blocks" else "up"
        if p[3] in ("downsamplers", "upsamplers"):
            return f"{p[0]}.{part}.{i}.{part}sample.conv." + ".".join(p[6:])
        return f"{p[0]}.{part}.{i}.block.{p[4]}." + ".".join(p[5:])
    if len(p) > 2 and p[1] == "mid_block":
        if p[2] == "resnets":
            return f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
        rest = ".".join(p[4:])
        for new, old in (
            ("group_norm", "norm"),
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "proj_out"),
        ):
            rest = rest.replace(new + ".", old + ".") if rest.startswith(new + ".") else rest
        return f"{p[0]}.mid.attn_1.{rest}"
    return key


def ldm_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """The pipeline in ``folder`` as one state dict in the original LDM layout of SD 1.x single files
    (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    cfg = pipe.unet.config
    per = cfg.layers_per_block + 1
    up_attn = {i for i, t in enumerate(cfg.up_block_types) if "CrossAttn" in t}
    out = {
        f"model.diffusion_model.{_ldm_unet_key(k, per, up_attn)}": v
        for k, v in pipe.unet.state_dict().items()
    }
    n_up = len(pipe.vae.config.up_block_types)
    for k, v in pipe.vae.state_dict().items():
        ldm = _ldm_vae_key(k, n_up)
        out[f"first_stage_model.{ldm}"] = v[:, :, None, None] if ".attn_1." in ldm and v.ndim == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():
        out[f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}"] = v
    return {k: v.contiguous() for k, v in out.items()}

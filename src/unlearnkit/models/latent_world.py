"""The latent shapes world: a tiny Stable Diffusion in the real diffusers layout, trained offline on shapes.

Same images, captions and judge as the pixel ``shapes`` world (the shipped shapes judge is copied: it judges
the decoded 16×16 images), but the model is latent diffusion (Rombach et al., CVPR 2022) saved by
``StableDiffusionPipeline.save_pretrained``, so it loads through the Stable Diffusion path like a user's
checkpoint:

1. ``AutoencoderKL`` (2 levels, 16×16×3 → 8×8×4), trained on the real training images with the VAE
   objective of Rombach et al. §3 reduced to its reconstruction and KL terms: ‖x − D(z)‖² + β·KL(q(z|x) ‖
   N(0, I)), z ~ q(z|x), β = 1e-6 (the kl-f8 weight; the LPIPS and patch-GAN terms of the paper's
   autoencoder are left out: 16×16 flat-coloured shapes are reconstructed by the pixel loss alone). Its
   ``scaling_factor`` is 1 / std of the training latents, as SD's 0.18215 was set (§4.3, "rescale the
   latent space to unit standard deviation").
2. A ``CLIPTokenizer`` (``vocab.json`` + ``merges.txt``, :mod:`unlearnkit.models.clip_bpe`) over the shapes
   vocabulary, 77 positions, and a 2-layer ``CLIPTextModel`` (hidden 64).
3. A latent ``UNet2DConditionModel`` (4 channels, 8×8) trained with the pixel world's recipe
   (:func:`~unlearnkit.models.t2i_world.fit_denoiser`: ε-prediction, AdamW 1e-3, batch 32, EMA 0.995, 10%
   empty captions) on z_0 = s · E(x) (the posterior mean, computed once), DDIM scheduler with the pixel
   world's cosine β schedule and no clipping (latents are unbounded).

``world.json`` marks the folder as the world ``latent-shapes``; ``train.json`` holds the measurements.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.shapes import SPECIAL, load_shapes, vocabulary
from unlearnkit.io import write_json
from unlearnkit.models.clip_bpe import write_clip_tokenizer
from unlearnkit.models.sd import LatentT2IModel
from unlearnkit.models.t2i_world import (
    _replace_folder,
    fit_denoiser,
    judge_accuracy,
    judge_samples,
    load_original,
    original_dir,
)
from unlearnkit.paths import cache_root

LATENT_COMMAND = "python scripts/train_t2i_latent.py"
MAX_LENGTH = 77  # CLIP's context, as in Stable Diffusion


def build_vae(width: int = 32) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(width, width), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=16,
    )  # fmt: skip


def build_latent_parts(tokenizer: Any, width: int = 32) -> tuple[nn.Module, nn.Module, Any]:
    """(UNet, text encoder, scheduler) of the latent world: the pixel world's sizes on 4×8×8 latents."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, norm_num_groups=8,
        attention_head_dim=8,
    )  # fmt: skip
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, steps_offset=1
    )
    return unet, te, sched


def train_vae(
    images01: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl: float = 1e-6,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """Fit the VAE on images in [0, 1] (module docstring, step 1); returns it with its scaling factor set."""
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    x_all = images01 * 2 - 1
    t0 = time.perf_counter()
    vae.train()
    for step in range(1, steps + 1):
        x = x_all[torch.randint(0, len(x_all), (batch_size,), generator=gen)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = (rec - x).pow(2).mean() + kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"vae step {step} loss {loss.item():.5f} {time.perf_counter() - t0:.0f}s", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    return vae, time.perf_counter() - t0


@torch.no_grad()
def reconstruct(vae: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """D(mean of q(z|x)) of images in [0, 1], back in [0, 1]."""
    x = images01 * 2 - 1
    out = [vae.decode(vae.encode(x[i : i + 256]).latent_dist.mean).sample for i in range(0, len(x), 256)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def train_latent_world(
    out: str | Path | None = None,
    steps: int = 2200,
    vae_steps: int = 1500,
    seed: int = 0,
    log_every: int = 100,
    **recipe: Any,
) -> dict[str, Any]:
    """Train the latent shapes world (module docstring) and write its folder (default: the cache's
    ``t2i-latent-shapes``); ``recipe`` goes to :func:`fit_denoiser` (batch_size, lr, ema, p_uncond)."""
    out = Path(out) if out is not None else cache_root() / "t2i-latent-shapes"
    final, out = out, out.parent / f".{out.name}.partial"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok_dir = out / "tokenizer-src"
    tok = write_clip_tokenizer(tok_dir, vocabulary()[len(SPECIAL) :], MAX_LENGTH)
    data = load_shapes(seed=seed, tokenizer=str(tok_dir))
    pixel = original_dir("shapes")
    _, judge = load_original(pixel, world="shapes")
    shutil.copy(pixel / "judge.safetensors", out / "judge.safetensors")
    schema = judge.schema

    train_x, test = data.train.all()["x"], data.test.all()
    vae, vae_s = train_vae(train_x, vae_steps, seed=seed)
    rec = reconstruct(vae, test["x"])
    rec_mse = float((rec - test["x"]).pow(2).mean())
    rec_acc = judge_accuracy(judge, rec, *(test[a] for a in schema.names))
    print(f"vae: {vae_s:.0f}s, test MSE {rec_mse:.5f}, judge on reconstructions {rec_acc}", flush=True)

    torch.manual_seed(seed)
    unet, te, sched = build_latent_parts(tok)
    model = LatentT2IModel(unet, te, vae, sched, tok)
    z0 = torch.cat([model.encode_images(train_x[i : i + 256]) for i in range(0, len(train_x), 256)])
    ids = data.train.columns["input_ids"]
    avg, train_s = fit_denoiser(
        model, lambda rows: (z0[rows], ids[rows]), len(z0), steps, seed=seed, log_every=log_every, **recipe
    )
    avg.save_pretrained(out / "model")
    shutil.rmtree(out / "model" / "tokenizer")  # the hub's SD 1.x layout: vocab.json + merges.txt
    tok_dir.rename(out / "model" / "tokenizer")
    t0 = time.perf_counter()
    gen_acc, n_samples = judge_samples(avg, judge, data.meta["captions"])
    report = {
        "world": "latent-shapes",
        "steps": steps,
        "vae_steps": vae_steps,
        "vae_seconds": round(vae_s, 1),
        "vae_scaling_factor": round(avg.scaling_factor, 5),
        "vae_test_mse": round(rec_mse, 6),
        "judge_on_reconstructions_per_attribute_and_all": rec_acc,
        "train_seconds": round(train_s, 1),
        "attributes": list(schema.names),
        "judge_on_samples_per_attribute_and_all": gen_acc,
        f"sample_seconds_{n_samples}": round(time.perf_counter() - t0, 1),
        "command": f"{LATENT_COMMAND} --steps {steps} --vae-steps {vae_steps} --seed {seed}",
    }
    world = {
        "world": "latent-shapes",
        "data": {"name": "shapes"},
        "schema": schema.to_dict(),
        "judge_width": 32,
    }
    write_json(out / "world.json", world)
    write_json(out / "train.json", report)
    _replace_folder(out, final)
    return report

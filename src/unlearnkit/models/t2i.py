"""A tiny pixel-space text-to-image diffusion model from diffusers/transformers components, and its judge.

:class:`T2IModel` is one ``nn.Module`` holding the ``UNet2DConditionModel`` and the ``CLIPTextModel`` (so the
engine, optimizers and weight masks see both); the DDPM noise schedule and the tokenizer ride along as plain
attributes. The denoiser predicts ε (Ho et al. 2020, Eq. 14): ``model(x_t, t, input_ids) = ε_θ(x_t, c, t)``
with ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε``. :func:`ddim_sample` is deterministic DDIM (Song et al. 2021, Eq. 12,
η=0) with classifier-free guidance ε̃ = ε_∅ + w(ε_c − ε_∅) (Ho & Salimans 2022) and can stop after a given
number of steps (ESD's partial sampling). The measured CPU config is in ``cpu-recipes.md``.

The judge of a world and the trained worlds themselves (folders, training) are in
:mod:`unlearnkit.models.t2i_world`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.shapes import MAX_LENGTH, build_tokenizer, tokenize
from unlearnkit.errors import UnlearnkitError
from unlearnkit.registry import register_model

COMPONENTS = ("unet", "text_encoder", "scheduler", "tokenizer")
PRESETS: dict[str, dict[str, Any]] = {
    # measured on 2 CPU cores: ~1.0M UNet parameters, ~0.38 s per batch-32 step
    "small": {"blocks": (32, 64), "hidden": 64, "ffn": 128, "heads": 4, "groups": 8, "head_dim": 8},
    # for tests: a few thousand parameters
    "tiny": {"blocks": (8, 16), "hidden": 16, "ffn": 32, "heads": 2, "groups": 4, "head_dim": 4},
}


def build_text_encoder(vocab_size: int, max_length: int, preset: str = "small") -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    p = PRESETS[preset]
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=p["hidden"],
        intermediate_size=p["ffn"],
        num_hidden_layers=2,
        num_attention_heads=p["heads"],
        max_position_embeddings=max_length,
        projection_dim=p["hidden"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return CLIPTextModel(cfg)


def build_unet(preset: str = "small", size: int = 16) -> nn.Module:
    from diffusers import UNet2DConditionModel

    p = PRESETS[preset]
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=p["blocks"],
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=p["hidden"],
        norm_num_groups=p["groups"],
        attention_head_dim=p["head_dim"],
    )


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)


class T2IModel(nn.Module):
    """UNet + text encoder as one module; ``forward(x_t, t, input_ids)`` predicts the noise ε."""

    clip_sample = True  # DDIM clamps its x_0 estimate to the data range [-1, 1]

    def __init__(
        self, unet: nn.Module, text_encoder: nn.Module, scheduler: Any = None, tokenizer: Any = None
    ):
        super().__init__()
        if unet is None or text_encoder is None:
            missing = "unet" if unet is None else "text_encoder"
            raise UnlearnkitError(
                f"a text-to-image model needs a UNet and a text encoder; {missing} is missing"
            )
        self.unet = unet
        self.text_encoder = text_encoder
        self.scheduler = scheduler if scheduler is not None else build_scheduler()
        self.tokenizer = tokenizer

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per-token text states ``[B, L, H]`` (the cross-attention context)."""
        return self.text_encoder(input_ids=input_ids).last_hidden_state

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if context is None:
            if input_ids is None:
                raise UnlearnkitError("pass input_ids or a text context to the T2I model")
            context = self.encode(input_ids)
        return self.unet(x_t, t, encoder_hidden_states=context).sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the UNet denoises (pixels here, latents for a latent model)."""
        u = self.unet.config
        return (int(u.in_channels), int(u.sample_size), int(u.sample_size))

    def x0(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The clean sample x_0 in model space of a batch's images in [0, 1] (here 2x − 1); None for a batch
        without images (a prompt set)."""
        return batch["x"] * 2 - 1 if "x" in batch else None

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples to images in [-1, 1] (the identity for a pixel model)."""
        return x


def clean_sample(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """x_0 in model space of a batch's images (``model.x0``: VAE latents for a latent model; pixels mapped
    to [-1, 1] for a model without it); None for a batch without images (a prompt set)."""
    x0 = getattr(model, "x0", None)
    if x0 is not None:
        return x0(batch)
    return batch["x"] * 2 - 1 if "x" in batch else None


def encode_prompts(model: T2IModel, prompts: list[str], tokenizer: Any = None) -> torch.Tensor:
    """Token ids ``[N, L]`` of ``prompts`` with the model's tokenizer (unknown words are an error)."""
    tok = tokenizer if tokenizer is not None else model.tokenizer
    if tok is None:
        raise UnlearnkitError("the T2I model has no tokenizer: pass one to encode_prompts")
    n_pos = model.text_encoder.config.max_position_embeddings
    return tokenize(tok, prompts, n_pos).to(_device(model))


def ddim_timesteps(model: T2IModel, steps: int) -> list[int]:
    """Evenly spaced ("leading") DDIM timesteps, noisiest first, shifted by the scheduler config's
    ``steps_offset`` (1 in Stable Diffusion's, 0 by default: diffusers' ``DDIMScheduler.set_timesteps``)."""
    stride = model.num_train_timesteps // steps
    offset = int(_scheduler_option(model, "steps_offset", 0))
    return [t + offset for t in range(0, model.num_train_timesteps, stride)][:steps][::-1]


def _scheduler_option(model: Any, name: str, default: Any) -> Any:
    cfg = getattr(getattr(model, "scheduler", None), "config", None)
    value = getattr(cfg, name, None) if cfg is not None else None
    return default if value is None else value


def _final_alpha(model: Any, acp: torch.Tensor) -> torch.Tensor:
    """ᾱ after the last DDIM step: 1 (``set_alpha_to_one``, the default) or ᾱ_0 (as SD's config says)."""
    return torch.ones((), device=acp.device) if _scheduler_option(model, "set_alpha_to_one", True) else acp[0]


@torch.no_grad()
def ddim_sample(
    model: T2IModel,
    input_ids: torch.Tensor | None = None,
    guidance: float = 3.0,
    steps: int = 25,
    generator: torch.Generator | None = None,
    context: torch.Tensor | None = None,
    uncond_ids: torch.Tensor | None = None,
    stop_at: int | None = None,
    x_T: torch.Tensor | None = None,
    uncond_context: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Sample images in [-1, 1] with DDIM (η=0) and classifier-free guidance ``guidance``.

    Conditioning is ``input_ids`` or a precomputed ``context``; the unconditional branch uses ``uncond_ids``
    (default: the empty caption) or a precomputed ``uncond_context``. With ``stop_at=k`` the loop stops after
    k steps and returns ``(x_t, t)`` (the partially denoised sample and the timestep it belongs to).
    """
    dev = _device(model)
    if context is None:
        context = model.encode(input_ids.to(dev))
    n = context.shape[0]
    if uncond_context is None:
        if uncond_ids is None:
            uncond_ids = encode_prompts(model, [""]) if model.tokenizer is not None else _empty_ids(model)
        uncond_context = model.encode(uncond_ids.to(dev))
    uncond = uncond_context.to(dev).expand(n, -1, -1)
    size = model.unet.config.sample_size
    c = model.unet.config.in_channels
    x = x_T if x_T is not None else torch.randn(n, c, size, size, generator=generator).to(dev)
    ts = ddim_timesteps(model, steps)
    acp = model.alphas_cumprod.to(dev)
    for i, t in enumerate(ts):
        if stop_at is not None and i >= stop_at:
            return x, t
        tt = torch.full((2 * n,), t, device=dev, dtype=torch.long)
        eps_u, eps_c = model(torch.cat([x, x]), tt, context=torch.cat([uncond, context])).chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        a = acp[t]
        a_prev = acp[ts[i + 1]] if i + 1 < len(ts) else _final_alpha(model, acp)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if getattr(
            model, "clip_sample", True
        ):  # pixels live in [-1, 1]; a VAE's latents do not (diffusers: clip_sample)
            x0 = x0.clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    if stop_at is not None:
        return x, 0
    return x


def generate_for_prompts(
    model,
    prompts: Sequence[str],
    per_prompt: int = 16,
    seed: int = 0,
    guidance: float = 3.0,
    steps: int = 25,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_prompt`` images per prompt in [0, 1] and the prompt index of each image (fixed seeds)."""
    was_training = model.training
    model.eval()
    ids = encode_prompts(model, list(prompts))
    idx = torch.arange(len(prompts)).repeat_interleave(per_prompt)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size]
        x = ddim_sample(model, ids[j], guidance=guidance, steps=steps, generator=gen)
        out.append(model.to_images(x).cpu())
    model.train(was_training)
    return ((torch.cat(out) + 1) / 2).clamp(0, 1), idx


@torch.no_grad()
def generate_seeded(
    model: Any, prompts: Sequence[str], seeds: Sequence[int], guidances: Sequence[float], steps: int = 25
) -> torch.Tensor:
    """One image in [0, 1] per (prompt, seed, guidance), as the I2P / UnlearnDiffAtk CSVs define them: the
    initial noise x_T ~ N(0, I) of shape ``model.sample_shape`` drawn from ``torch.Generator`` seeded with the
    row's seed (what a diffusers pipeline draws for one image with that generator on the CPU)."""
    was = model.training
    model.eval()
    dev = _device(model)
    out = []
    for p, s, g in zip(prompts, seeds, guidances, strict=True):
        x_T = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(int(s))).to(dev)
        x = ddim_sample(model, encode_prompts(model, [p]), guidance=float(g), steps=steps, x_T=x_T)
        out.append(model.to_images(x).cpu())
    model.train(was)
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def _empty_ids(model: T2IModel) -> torch.Tensor:
    cfg = model.text_encoder.config
    ids = torch.full((1, cfg.max_position_embeddings), cfg.pad_token_id, dtype=torch.long)
    ids[0, 0], ids[0, 1] = cfg.bos_token_id, cfg.eos_token_id
    return ids


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@register_model("t2i-tiny")
def build_t2i(data: Any = None, preset: str = "small", seed: int | None = None) -> T2IModel:
    """A freshly initialised T2I model for the dataset's tokenizer (``data.meta["tokenizer"]``; default the
    ``shapes`` world's)."""
    if preset not in PRESETS:
        raise UnlearnkitError(f"unknown T2I preset {preset!r}: choose one of {', '.join(PRESETS)}")
    meta = getattr(data, "meta", {}) or {}
    tok = meta.get("tokenizer") or build_tokenizer()
    max_len = meta.get("max_length", MAX_LENGTH)
    if seed is not None:
        torch.manual_seed(seed)
    return T2IModel(build_unet(preset), build_text_encoder(len(tok), max_len, preset), build_scheduler(), tok)


def save_t2i(model: T2IModel, folder: str | Path) -> None:
    """Write each component with ``save_pretrained`` (safetensors) under ``folder/<component>``."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    model.scheduler.save_pretrained(folder / "scheduler")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder / "tokenizer")


@contextlib.contextmanager
def _no_load_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_t2i(folder: str | Path, text_encoder: str | Path | None = None) -> T2IModel:
    """Load a folder written by :func:`save_t2i` (offline); ``text_encoder`` swaps in another encoder folder
    (e.g. an unlearned one exported as a plug-in)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    folder = Path(folder)
    if not folder.is_dir():
        raise UnlearnkitError(f"T2I model folder {str(folder)!r} not found")
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if text_encoder is not None and "text_encoder" in missing:
        missing.remove("text_encoder")
    if missing:
        raise UnlearnkitError(
            f"the T2I model folder {str(folder)!r} lacks component(s) {missing}; expected sub-folders "
            f"{list(COMPONENTS)} as written by save_t2i / save_pretrained"
        )
    from safetensors import SafetensorError

    part = "unet"
    try:  # a truncated or corrupt component file: one clear line, as for a classifier's weights
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
        part = "text_encoder"
        with _no_load_bar():  # a bar for a 36-tensor encoder is noise on stderr
            te = CLIPTextModel.from_pretrained(text_encoder or folder / "text_encoder", local_files_only=True)
        part = "scheduler"
        sched = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        part = "tokenizer"
        tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer", local_files_only=True)
    except (OSError, ValueError, SafetensorError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UnlearnkitError(
            f"the {part} of the T2I model in {str(folder)!r} cannot be loaded ({first[:200]}); the file is "
            "truncated or corrupt: copy or export the model folder again"
        ) from None
    return T2IModel(unet, te, sched, tok).eval()

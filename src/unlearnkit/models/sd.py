"""A user's Stable Diffusion checkpoint (diffusers folder layout) as a latent :class:`T2IModel`.

Layout (``StableDiffusionPipeline.save_pretrained``): ``model_index.json`` and the sub-folders ``unet/``
(``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``),
``tokenizer/`` (``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt``, or a ``tokenizer.json``) and
``scheduler/`` (any diffusers scheduler with a β schedule; only its ᾱ_t are used). ``safety_checker/`` and
``feature_extractor/`` are ignored (erasure is judged on the raw images).

Latent diffusion (Rombach et al., CVPR 2022, §3–4): the denoiser works on z_0 = s · E(x) (E the VAE
encoder's posterior mean, s the VAE's ``scaling_factor``, 0.18215 for SD 1.x), so the DDPM loss of
:mod:`unlearnkit.families.diffusion` is ‖ε − ε_θ(√ᾱ_t z_0 + √(1−ᾱ_t) ε, c, t)‖² and samples are decoded
with x = D(z / s). The VAE is held *outside* the module's parameter tree (no gradients, no optimizer state,
not in the state dict); it follows ``.to()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.prompt_sets import load_tokenizer_folder
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.models.t2i import T2IModel, _no_load_bar, ddim_sample

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class _Held:
    """A module kept outside its owner's parameter tree."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


def is_sd_folder(path: str | Path | None) -> bool:
    """True for a diffusers pipeline folder (``model_index.json`` at its top)."""
    return path is not None and (Path(path) / "model_index.json").is_file()


def is_sd_file(path: str | Path | None) -> bool:
    """True for a single-file checkpoint (``.safetensors``, or a pickled ``.ckpt``, which is refused)."""
    return path is not None and Path(path).suffix in (".safetensors", ".ckpt") and Path(path).is_file()


def is_sd_model(path: str | Path | None) -> bool:
    return is_sd_folder(path) or is_sd_file(path)


def sd_tokenizer_folder(path: str | Path, single_file_config: str | Path | None = None) -> Path | None:
    """Where a Stable Diffusion model's tokenizer lives: ``tokenizer/`` of the folder, or of the configuration
    folder of a single-file checkpoint (None when that is a hub id)."""
    base = Path(single_file_config) if is_sd_file(path) and single_file_config else Path(path)
    return base / "tokenizer" if base.is_dir() else None


class LatentT2IModel(T2IModel):
    """UNet + text encoder (trainable module) with a frozen VAE: the model space is the VAE's latent space."""

    clip_sample = False  # latents are not bounded: DDIM does not clamp x_0 (as diffusers' SD schedulers)

    def __init__(
        self, unet: nn.Module, text_encoder: nn.Module, vae: nn.Module, scheduler: Any, tokenizer: Any
    ):
        super().__init__(unet, text_encoder, scheduler, tokenizer)
        vae.requires_grad_(False)
        self._vae = _Held(vae.eval())
        self._latents: dict[tuple[int, float], torch.Tensor] = {}

    @property
    def vae(self) -> nn.Module:
        return self._vae.module

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() move the held VAE too
        super()._apply(fn, *args, **kwargs)
        self.vae._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """z_0 = s · mean of the VAE posterior of images in [0, 1]."""
        x = images01.to(_vae_device(self), _vae_dtype(self)) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def x0(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The clean latents of a batch: its ``z0`` column (latents drawn by the model itself), or its images
        encoded once per (example id, image checksum)."""
        if "z0" in batch:
            return batch["z0"].to(next(self.unet.parameters()).device)
        if "x" not in batch:
            return None
        x = batch["x"]
        keys = [(int(i), float(x[k].double().sum())) for k, i in enumerate(batch["id"].tolist())]
        todo = [k for k, key in enumerate(keys) if key not in self._latents]
        if todo:
            z = self.encode_images(x[todo])
            for k, zk in zip(todo, z, strict=True):
                self._latents[keys[k]] = zk.detach()
        dev = next(self.unet.parameters()).device
        return torch.stack([self._latents[key] for key in keys]).to(dev, x.dtype)

    @torch.no_grad()
    def to_images(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents to images in [-1, 1]: x = D(z / s)."""
        out = self.vae.decode(z.to(_vae_device(self), _vae_dtype(self)) / self.scaling_factor).sample
        return out.to(z.device, z.dtype).clamp(-1, 1)

    def save_pretrained(
        self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None, **_: Any
    ) -> None:
        """Write a diffusers folder ``StableDiffusionPipeline.from_pretrained`` loads (safetensors); with
        ``state_dict`` (this module's keys), those weights are written."""
        from diffusers import StableDiffusionPipeline

        if state_dict is not None:
            self.load_state_dict(state_dict, strict=True)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
        pipe.save_pretrained(str(folder), safe_serialization=True)


@torch.no_grad()
def own_latents(
    model: T2IModel,
    input_ids: torch.Tensor,
    seeds: torch.Tensor,
    guidance: float,
    steps: int,
    batch: int = 16,
) -> torch.Tensor:
    """The model's own DDIM samples (latents, classifier-free guidance ``guidance``) of each prompt row, the
    noise of row k drawn from seed ``seeds[k]`` (reproducible per row whatever the batching)."""
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(input_ids), batch):
        x_T = torch.stack(
            [
                torch.randn(model.sample_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds[i : i + batch]
            ]
        )
        out.append(
            ddim_sample(model, input_ids[i : i + batch].to(dev), guidance, steps, x_T=x_T.to(dev)).cpu()
        )
    model.train(was)
    return torch.cat(out)


MEMORY_OPTIONS = ("gradient_checkpointing", "attention_slicing")


def apply_memory_options(
    model: T2IModel, gradient_checkpointing: bool = False, attention_slicing: bool | int | str | None = None
) -> T2IModel:
    """``model.gradient_checkpointing=true``: activation checkpointing in the UNet (diffusers'
    ``enable_gradient_checkpointing``) and the text encoder (transformers' activation checkpointing, for the
    methods that train it, AdvUnlearn), non-reentrant, so the gradients are the same and only the
    activations are recomputed in the backward pass; it acts in training mode only.
    ``model.attention_slicing`` (true / "auto", "max" or a slice size): diffusers' sliced attention in the
    UNet, for sampling with less memory (the same attention, a slice of heads at a time)."""
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        te = model.text_encoder
        enable = getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        if hasattr(te, "disable_input_require_grads"):  # non-reentrant needs no grad on the inputs: a frozen
            te.disable_input_require_grads()  # encoder (ESD, FMN) then builds no graph at all
    if attention_slicing not in (None, False):
        size = "auto" if attention_slicing is True else attention_slicing
        if size not in ("auto", "max") and not isinstance(size, int):
            raise ConfigError(
                f"model.attention_slicing must be true, 'auto', 'max' or a slice size, not {size!r}"
            )
        try:
            model.unet.set_attention_slice(size)
        except ValueError as exc:
            raise ConfigError(f"model.attention_slicing={size!r}: {str(exc).splitlines()[0]}") from None
    return model


def _vae_device(model: LatentT2IModel) -> torch.device:
    return next(model.vae.parameters()).device


def _vae_dtype(model: LatentT2IModel) -> torch.dtype:
    return next(model.vae.parameters()).dtype


def _scheduler(folder: Path) -> Any:
    import diffusers

    cfg_file = folder / "scheduler_config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{str(folder)!r} has no scheduler_config.json: copy the model's scheduler/ folder")
    cfg = json.loads(cfg_file.read_text())
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"unknown scheduler class {cfg.get('_class_name')!r} in {str(cfg_file)!r}")
    return _check_scheduler(cls.from_pretrained(folder, local_files_only=True), folder)


def _check_scheduler(sched: Any, folder: Path | str) -> Any:
    cls = type(sched)
    pred = getattr(sched.config, "prediction_type", "epsilon")
    if pred != "epsilon" or getattr(sched, "alphas_cumprod", None) is None:
        raise ConfigError(
            f"the scheduler in {str(folder)!r} ({cls.__name__}, prediction_type={pred!r}) is not an "
            "ε-prediction β schedule: only ε-prediction Stable Diffusion checkpoints (1.x, 2.x-base) work"
        )
    return sched


def load_sd(folder: str | Path, single_file_config: str | Path | None = None) -> LatentT2IModel:
    """Load a diffusers Stable Diffusion folder offline (safetensors where the folder has them), or a
    single-file checkpoint (:func:`load_sd_file`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if is_sd_file(folder):
        return load_sd_file(folder, single_file_config)
    folder = Path(folder)
    missing = [p for p in SD_PARTS if not (folder / p).is_dir()]
    if missing:
        raise ConfigError(
            f"the Stable Diffusion folder {str(folder)!r} lacks {missing}: it needs unet/, vae/, "
            "text_encoder/, tokenizer/ and scheduler/ as StableDiffusionPipeline.save_pretrained writes them"
        )
    tok = load_tokenizer_folder(folder / "tokenizer")
    sched = _scheduler(folder / "scheduler")
    part = "unet"
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
        part = "vae"
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
        part = "text_encoder"
        with _no_load_bar():
            te = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UnlearnkitError(
            f"the {part} of the Stable Diffusion folder {str(folder)!r} cannot be loaded ({first[:200]}): "
            "copy or export the folder again"
        ) from None
    if unet.config.in_channels != vae.config.latent_channels:
        raise ConfigError(
            f"the UNet takes {unet.config.in_channels} channels but the VAE makes "
            f"{vae.config.latent_channels}: unet/ and vae/ come from different models"
        )
    return LatentT2IModel(unet, te, vae, sched, tok).eval()


def check_single_file(path: str | Path, config: str | Path | None) -> bool:
    """Refuse a pickled checkpoint, a missing ``model.single_file_config`` or a configuration folder without
    ``model_index.json`` (one line each, before anything loads); True when the configuration is local."""
    if Path(path).suffix != ".safetensors":
        raise ConfigError(
            f"model.path={str(path)!r} is a pickled checkpoint, which can run code when loaded: convert it "
            "to .safetensors (weights load only from safetensors)"
        )
    if not config:
        raise ConfigError(
            f"model.path={str(path)!r} is a single-file checkpoint: set model.single_file_config=DIR, the "
            "diffusers folder of its base model (model_index.json and the components' config files)"
        )
    local = Path(config).is_dir()
    if local and not is_sd_folder(config):
        raise ConfigError(
            f"model.single_file_config={str(config)!r} has no model_index.json: pass a diffusers folder"
        )
    return local


def load_sd_file(path: str | Path, config: str | Path | None) -> LatentT2IModel:
    """A single-file Stable Diffusion checkpoint (the original LDM layout: ``model.diffusion_model.*``,
    ``first_stage_model.*``, ``cond_stage_model.transformer.*``, as A1111 / CompVis distribute them) through
    ``StableDiffusionPipeline.from_single_file``. The file holds only weights: ``config`` names the
    diffusers folder of the same base model whose ``model_index.json`` and component configs (and tokenizer,
    scheduler) describe it, e.g. a copy of ``CompVis/stable-diffusion-v1-4`` without its weights; offline it
    must be a local folder (a hub id works online)."""
    from diffusers import StableDiffusionPipeline
    from safetensors import SafetensorError

    local = check_single_file(path, config)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), local_files_only=local, safety_checker=None,
            requires_safety_checker=False,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnlearnkitError(
            f"model.path={str(path)!r} cannot be loaded as a Stable Diffusion checkpoint with the "
            f"configuration {str(config)!r} ({first[:200]}): is it an SD 1.x/2.x file of that base model?"
        ) from None
    tok = load_tokenizer_folder(Path(config) / "tokenizer") if local else pipe.tokenizer
    sched = _check_scheduler(pipe.scheduler, config)
    return LatentT2IModel(pipe.unet, pipe.text_encoder, pipe.vae, sched, tok).eval()

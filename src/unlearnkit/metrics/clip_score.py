"""CLIP score of generated images against their captions (needs ``transformers``).

**CLIPScore** (Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning",
EMNLP 2021): for an image I and a caption c, cos(E_I(I), E_T(c)) between CLIP's *projected* image and text
embeddings. :func:`clip_score` averages it over (image, caption) pairs under one of three conventions:

- ``"cosine"`` (default): mean cos, as AdvUnlearn's tables report it (values like 0.30);
- ``"hessel"``: Hessel's CLIP-S, mean over images of 2.5·max(cos, 0) (clipped per image; no
  "A photo depicts" prefix is added to the captions);
- ``"torchmetrics"``: torchmetrics' ``CLIPScore``, max(100·mean cos, 0) (torchmetrics clips the *mean*).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from unlearnkit.errors import ConfigError, DataError, UnlearnkitError, did_you_mean

SCALES = ("cosine", "hessel", "torchmetrics")
_NEED = "a folder written by save_pretrained holding a CLIP model, its tokenizer and its image processor"


class Clip(NamedTuple):
    """A loaded CLIP: ``CLIPModel`` (eval mode), tokenizer and ``CLIPImageProcessor``."""

    model: Any
    tokenizer: Any
    processor: Any


def load_clip(path: str | Path) -> Clip:
    """Load (once per process and path) a CLIP model, tokenizer and image processor from a local folder
    (``local_files_only``) or, when ``path`` is not a directory and looks like a hub id, from the hub."""
    p = Path(path).expanduser()
    return _load(str(p.resolve()) if p.is_dir() else str(path))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Clip:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    local = Path(path).is_dir()
    if local:
        cfg = Path(path) / "config.json"
        if not cfg.is_file():
            raise UnlearnkitError(f"CLIP model folder {path!r} has no config.json: pass {_NEED}")
        try:
            model_type = json.loads(cfg.read_text()).get("model_type")
        except (ValueError, AttributeError):
            model_type = None
        if model_type != "clip":
            raise UnlearnkitError(f"{path!r} holds a {model_type!r} model, not CLIP: pass {_NEED}")
    elif Path(path).expanduser().exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise UnlearnkitError(f"CLIP model path {path!r} is not a folder: pass {_NEED}")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnlearnkitError(f"cannot load CLIP from {path!r} ({first}): pass {_NEED}") from e
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise UnlearnkitError(
            f"the tokenizer in {path!r} has {len(tokenizer)} tokens but the CLIP text model only "
            f"{model.config.text_config.vocab_size}: pass {_NEED}"
        )
    model.eval().requires_grad_(False)
    return Clip(model, tokenizer, processor)


def _pooled(out: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor up to transformers 4, an output object in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_cosines(
    images01: torch.Tensor, prompts: Sequence[str], model_or_path: Clip | str | Path, batch_size: int = 64
) -> torch.Tensor:
    """Per-pair cos(E_I(image_k), E_T(prompt_k)) ``[N]`` for images ``[N, 3, H, W]`` in [0, 1]."""
    model, tokenizer, processor = (
        load_clip(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    )
    if images01.ndim != 4 or images01.shape[1] != 3 or len(images01) == 0:
        raise DataError(f"clip_score needs images [N, 3, H, W] with N >= 1, got {tuple(images01.shape)}")
    if len(prompts) != len(images01):
        raise DataError(
            f"clip_score needs one prompt per image: {len(images01)} images, {len(prompts)} prompts"
        )
    if float(images01.min()) < 0 or float(images01.max()) > 1:
        raise DataError("clip_score needs images in [0, 1] (map [-1, 1] images with (x + 1) / 2)")
    dev = next(model.parameters()).device
    max_len = model.config.text_config.max_position_embeddings
    out = []
    for i in range(0, len(images01), batch_size):
        imgs = images01[i : i + batch_size].detach().float().cpu()
        pix = processor(
            images=list(imgs), do_rescale=False, input_data_format="channels_first", return_tensors="pt"
        )["pixel_values"]
        txt = tokenizer(
            list(prompts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        e_i = _pooled(model.get_image_features(pixel_values=pix.to(dev)))
        e_t = _pooled(
            model.get_text_features(
                input_ids=txt["input_ids"].to(dev), attention_mask=txt["attention_mask"].to(dev)
            )
        )
        out.append(torch.nn.functional.cosine_similarity(e_i, e_t, dim=-1).cpu())
    return torch.cat(out)


def check_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`SCALES`, else a :class:`ConfigError` naming the choices."""
    if scale not in SCALES:
        raise ConfigError(f"unknown CLIP score scale {scale!r}: {did_you_mean(str(scale), list(SCALES))}")
    return scale


def clip_score(
    images01: torch.Tensor,
    prompts: Sequence[str],
    model_or_path: Clip | str | Path,
    batch_size: int = 64,
    scale: str = "cosine",
) -> float:
    """CLIP score (Hessel et al. 2021) of images ``[N, 3, H, W]`` in [0, 1] against one prompt each.

    ``model_or_path``: a :class:`Clip` from :func:`load_clip` or a path for it. ``scale``: ``"cosine"``
    (mean cos, AdvUnlearn's convention), ``"hessel"`` (mean of 2.5·max(cos, 0)) or ``"torchmetrics"``
    (max(100·mean cos, 0)). The image processor resizes the images (no rescaling: they are in [0, 1])."""
    check_scale(scale)
    cos = clip_cosines(images01, prompts, model_or_path, batch_size).double()
    if scale == "hessel":
        return float((2.5 * cos.clamp(min=0)).mean())
    if scale == "torchmetrics":
        return max(100 * float(cos.mean()), 0.0)
    return float(cos.mean())

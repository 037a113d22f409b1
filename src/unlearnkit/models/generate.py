"""Images from any text-to-image model folder, for a person to look at (``unlearnkit generate``).

A folder is a Stable Diffusion pipeline (``model_index.json``: a user's checkpoint, or a run's ``hf_model/``),
a t2i world (``model/`` + ``judge.safetensors``) or a bare T2I model folder (``unet/``, ``text_encoder/``,
``scheduler/``, ``tokenizer/``, as :func:`~unlearnkit.models.t2i.save_t2i` writes it). Image ``j`` of
every prompt starts from the noise of seed ``seed + j`` (:func:`~unlearnkit.models.t2i.generate_seeded`:
deterministic DDIM with classifier-free guidance), so the same command on the original and on an unlearned
folder gives images that differ only by the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unlearnkit.errors import ConfigError
from unlearnkit.models.sd import LatentT2IModel, apply_memory_options, is_sd_model, load_sd
from unlearnkit.models.t2i import COMPONENTS, generate_seeded, load_t2i
from unlearnkit.models.t2i_world import is_world_folder, not_a_model_folder
from unlearnkit.models.t2i_world import load_original as load_world


def load_any_t2i(folder: str | Path, single_file_config: str | Path | None = None) -> Any:
    """The T2I model of a Stable Diffusion folder or single-file checkpoint (with ``single_file_config``), a
    world or a T2I model folder; anything else is one clear error."""
    folder = Path(folder)
    if is_sd_model(folder):
        return load_sd(folder, single_file_config)
    if is_world_folder(folder):
        return load_world(folder)[0]
    if folder.is_dir() and all((folder / c).is_dir() for c in COMPONENTS):
        return load_t2i(folder)
    raise not_a_model_folder(folder, option="--model ")


def write_png(path: Path, image01: torch.Tensor) -> None:
    """One ``[3, H, W]`` image in [0, 1] as an 8-bit PNG, written whole and then moved into place."""
    from PIL import Image

    arr = (image01.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    tmp = path.parent / f".{path.name}.tmp"
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def generate_folder(
    model_dir: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    seed: int = 0,
    steps: int = 25,
    guidance: float | None = None,
    per_prompt: int = 1,
    attention_slicing: bool = False,
    single_file_config: str | Path | None = None,
) -> list[Path]:
    """Write ``per_prompt`` PNGs per prompt (``<prompt index>-seed<s>.png``) and ``prompts.txt`` to ``out``;
    ``guidance`` defaults to 7.5 for Stable Diffusion (the papers' sampling) and 3.0 for the worlds."""
    prompts = [str(p) for p in prompts]
    if not prompts or steps < 1 or per_prompt < 1:
        raise ConfigError("generate needs at least one --prompt, --steps >= 1 and -n >= 1")
    model = load_any_t2i(model_dir, single_file_config)
    out, src = Path(out).resolve(), Path(model_dir).resolve()
    if out == src or (src.is_dir() and src in out.parents):
        raise ConfigError(f"--out {str(out)!r} is inside the model folder: write the images elsewhere")
    if attention_slicing:
        apply_memory_options(model, attention_slicing=True)
    if guidance is None:
        guidance = 7.5 if isinstance(model, LatentT2IModel) else 3.0
    rows = [(i, p, seed + j) for i, p in enumerate(prompts) for j in range(per_prompt)]
    imgs = generate_seeded(model, [r[1] for r in rows], [r[2] for r in rows], [guidance] * len(rows), steps)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (i, _, s), img in zip(rows, imgs, strict=True):
        written.append(out / f"{i:03d}-seed{s}.png")
        write_png(written[-1], img)
    tmp = out / ".prompts.txt.tmp"
    tmp.write_text("".join(f"{i:03d}\t{p}\n" for i, p in enumerate(prompts)))
    os.replace(tmp, out / "prompts.txt")
    return written

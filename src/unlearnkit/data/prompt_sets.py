"""Prompt sets: a concept as free text plus the prompts that evoke it, for a real text-to-image model.

ESD, UCE, FMN and AdvUnlearn need only prompts (the papers train on the concept prompt, or on a prompt CSV,
and evaluate on a CSV of prompts with their seeds). ``data.name=prompts`` builds a dataset without images:

- the forget prompts: ``prompts`` (a list) and/or ``csv`` (the I2P / UnlearnDiffAtk format: a ``prompt``
  column, optional ``evaluation_seed`` or ``sd_seed``, ``evaluation_guidance`` / ``guidance`` /
  ``sd_guidance_scale``, ``categories``); by default the split's concept itself;
- the retain prompts (what must keep working; UCE's preserved concepts, AdvUnlearn's retain set):
  ``retain_prompts`` and/or ``retain_csv``; the empty prompt is always one (the unconditional branch that
  classifier-free guidance uses must keep working; UCE's paper-era script always preserves "").

Each row is one prompt: columns ``input_ids`` (the model's own tokenizer, ``tokenizer`` = a tokenizer folder)
and ``y`` (the prompt's index in ``class_names``: the forget prompts first). With ``images_per_prompt=N``
every prompt becomes N rows, for which the diffusion family draws the original model's own images (SalUn-SD's
forget and retain data: the model's generations of the prompts, ``image_guidance``, ``image_steps`` DDIM
steps, row id = noise seed). The test set holds the same
rows: in the papers the evaluation prompts *are* the concept's prompt set (with their CSV seeds, kept in
``meta["rows"]``). ``meta["forget_prompts"]`` / ``meta["retain_prompts"]`` say which is which.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.prompts import tokenize
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.registry import register_dataset

SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance_scale")


def load_tokenizer_folder(folder: str | Path) -> Any:
    """A model's tokenizer: ``tokenizer.json`` (fast), or CLIP's ``vocab.json`` + ``merges.txt``."""
    from transformers import AutoTokenizer, CLIPTokenizer

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    raise ConfigError(
        f"tokenizer folder {str(folder)!r} has neither tokenizer.json nor vocab.json + merges.txt: copy the "
        "model's tokenizer/ folder completely (as StableDiffusionPipeline.save_pretrained writes it)"
    )


def _first(row: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = (row.get(n) or "").strip()
        if v:
            return v
    return None


def read_prompt_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "seed", "guidance", "categories"}`` of an I2P / UnlearnDiffAtk prompt CSV."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt CSV {str(p)!r} does not exist")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise DataError(
                f"prompt CSV {str(p)!r} has no 'prompt' column (columns: "
                f"{list(reader.fieldnames or [])[:12]}): name the prompt column 'prompt' (I2P format)"
            )
        rows = []
        for i, r in enumerate(reader):
            seed, guid = _first(r, SEED_COLUMNS), _first(r, GUIDANCE_COLUMNS)
            try:
                rows.append(
                    {
                        "prompt": (r["prompt"] or "").strip(),
                        "seed": None if seed is None else int(float(seed)),
                        "guidance": None if guid is None else float(guid),
                        "categories": (r.get("categories") or "").strip(),
                    }
                )
            except ValueError:
                raise DataError(
                    f"prompt CSV {str(p)!r}, row {i + 2}: seed {seed!r} / guidance {guid!r} is not a number"
                ) from None
    return [r for r in rows if r["prompt"]]


def _rows(prompts: list[str] | None, csv_path: str | None) -> list[dict[str, Any]]:
    rows = [
        {"prompt": str(q).strip(), "seed": None, "guidance": None, "categories": ""} for q in prompts or []
    ]
    return rows + (read_prompt_csv(csv_path) if csv_path else [])


@register_dataset("prompts")
def load_prompt_set(
    prompts: list[str] | None = None,
    csv: str | None = None,
    retain_prompts: list[str] | None = None,
    retain_csv: str | None = None,
    tokenizer: str | None = None,
    max_length: int = 77,
    images_per_prompt: int = 0,
    image_guidance: float = 7.5,
    image_steps: int = 25,
) -> LoadedData:
    """A prompt set (no images) tokenized with the model's tokenizer folder ``tokenizer``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    forget = _rows(prompts, csv)
    if not forget:
        raise DataError(
            "the prompt set is empty: give data.prompts=[...] or data.csv=FILE (or split.concept on a "
            "Stable Diffusion model)"
        )
    if images_per_prompt < 0 or image_steps < 1:
        raise ConfigError("data.images_per_prompt must be >= 0 and data.image_steps >= 1")
    if tokenizer is None:
        raise ConfigError(
            "data.tokenizer is missing: the model's tokenizer folder (e.g. SD_FOLDER/tokenizer)"
        )
    tok = load_tokenizer_folder(tokenizer)
    erased = {f["prompt"] for f in forget}
    retain = [r for r in _rows(retain_prompts, retain_csv) if r["prompt"] not in erased]
    if "" not in erased and all(r["prompt"] for r in retain):
        retain.append({"prompt": "", "seed": None, "guidance": None, "categories": ""})
    names = list(dict.fromkeys([r["prompt"] for r in forget + retain]))
    rows = forget + retain
    ids = tokenize(tok, [r["prompt"] for r in rows], max_length)
    y = torch.tensor([names.index(r["prompt"]) for r in rows])
    meta = {
        "dataset": "prompts",
        "tokenizer": tok,
        "max_length": max_length,
        "captions": names,
        "forget_prompts": list(dict.fromkeys(r["prompt"] for r in forget)),
        "retain_prompts": list(dict.fromkeys(r["prompt"] for r in retain)),
        "rows": rows,
    }
    if images_per_prompt:
        ids, y = ids.repeat_interleave(images_per_prompt, 0), y.repeat_interleave(images_per_prompt)
        meta["images"] = {"guidance": image_guidance, "steps": image_steps}
    train = ExampleSet({"input_ids": ids, "y": y}, meta={"dataset": "prompts"})
    test = ExampleSet({"input_ids": ids.clone(), "y": y.clone()}, meta={"dataset": "prompts"})
    return LoadedData(train, test, len(names), (), names, "prompts", meta)

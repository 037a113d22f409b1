"""Procedural coloured shapes with captions: the offline world of the text-to-image family.

16×16 RGB images of {circle, square, triangle} × {red, green, blue} on a grey background, random size and
position, small colour jitter; the caption of each image is ``"a <colour> <shape>"``. The same ``seed``
always draws the same images. A word-level tokenizer covers the caption vocabulary plus a few spare words
(used by prompt attacks as extra discrete tokens); its special ids (pad 0, bos 1, eos 2, unk 3) match the
text-encoder config built in :mod:`unlearnkit.models.t2i`.

Columns: ``x`` (uint8 ``[N, 3, 16, 16]``, turned into floats in [0, 1] by the transform), ``shape`` and
``color`` (ints), ``y = 3·shape + color`` (the 9 caption classes) and ``input_ids`` (``[N, max_length]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet, uint8_to_unit
from unlearnkit.data.prompt_sets import load_tokenizer_folder
from unlearnkit.data.prompts import SPECIAL, ConceptSchema, build_word_tokenizer
from unlearnkit.data.prompts import tokenize as tokenize_prompts
from unlearnkit.registry import register_dataset

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue")
RGB = {"red": (0.85, 0.12, 0.12), "green": (0.12, 0.75, 0.15), "blue": (0.12, 0.2, 0.85)}
BACKGROUND = 0.5
SPARE_WORDS = ("an", "the", "of", "image", "photo", "shape", "small", "big", "bright", "dark", "picture")
MAX_LENGTH = 12
SCHEMA = ConceptSchema.of({"shape": SHAPES, "color": COLORS})  # what the judge predicts


def caption(shape: int, color: int) -> str:
    return f"a {COLORS[color]} {SHAPES[shape]}"


def all_captions() -> list[str]:
    """The 9 captions, indexed by ``y = 3·shape + color``."""
    return [caption(s, c) for s in range(3) for c in range(3)]


def vocabulary() -> list[str]:
    return [*SPECIAL, "a", *COLORS, *SHAPES, *SPARE_WORDS]


def build_tokenizer(max_length: int = MAX_LENGTH):
    """The shapes world's word-level tokenizer (:func:`~unlearnkit.data.prompts.build_word_tokenizer`)."""
    return build_word_tokenizer(vocabulary()[len(SPECIAL) :], max_length)


def tokenize(tokenizer: Any, prompts: list[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Token ids ``[N, max_length]`` (padded); an unknown word or a too-long prompt is a clear error."""
    return tokenize_prompts(tokenizer, prompts, max_length)


def draw(shape: int, color: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """One image, float32 ``[3, size, size]`` in [0, 1]."""
    r = rng.uniform(0.22, 0.4) * size  # half-width of the shape
    cx, cy = rng.uniform(r + 0.5, size - r - 0.5, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if SHAPES[shape] == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    elif SHAPES[shape] == "square":
        s = r * 0.85
        mask = (np.abs(xx - cx) <= s) & (np.abs(yy - cy) <= s)
    else:  # upward triangle: apex at the top, base at the bottom
        top, bottom = cy - r, cy + r
        frac = (yy - top) / (bottom - top)
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= frac * r)
    img = np.full((3, size, size), BACKGROUND + rng.uniform(-0.05, 0.05), dtype=np.float32)
    rgb = np.clip(np.asarray(RGB[COLORS[color]]) + rng.uniform(-0.08, 0.08, size=3), 0, 1)
    img[:, mask] = rgb[:, None]
    return img


def generate(n_per_class: int, seed: int, size: int = 16) -> dict[str, torch.Tensor]:
    """``n_per_class`` images of each of the 9 (shape, colour) pairs, in a seeded random order."""
    rng = np.random.default_rng(seed)
    shape = np.repeat(np.arange(3), 3 * n_per_class)
    color = np.tile(np.repeat(np.arange(3), n_per_class), 3)
    order = rng.permutation(len(shape))
    shape, color = shape[order], color[order]
    imgs = np.stack([draw(int(s), int(c), rng, size) for s, c in zip(shape, color, strict=True)])
    x = torch.as_tensor(np.round(imgs * 255).astype(np.uint8))
    return {
        "x": x,
        "shape": torch.as_tensor(shape, dtype=torch.long),
        "color": torch.as_tensor(color, dtype=torch.long),
        "y": torch.as_tensor(shape * 3 + color, dtype=torch.long),
    }


@register_dataset("shapes")
def load_shapes(
    n_train_per_class: int = 300,
    n_test_per_class: int = 60,
    seed: int = 0,
    max_length: int | None = None,
    tokenizer: str | None = None,
) -> LoadedData:
    """The ``shapes`` dataset: 9 caption classes, train and test drawn from different seeds. The captions are
    tokenized by the world's word-level tokenizer, or by a model's own ``tokenizer`` folder (a latent
    world's CLIP tokenizer; ``max_length`` then defaults to its ``model_max_length``)."""
    if tokenizer is not None:
        tok = load_tokenizer_folder(tokenizer)
        max_length = max_length or int(tok.model_max_length)
    else:
        max_length = max_length or MAX_LENGTH
        tok = build_tokenizer(max_length)
    caps = all_captions()
    cap_ids = tokenize(tok, caps, max_length)
    meta = {
        "dataset": "shapes",
        "world": "shapes",
        "tokenizer": tok,
        "captions": caps,
        "shape_names": list(SHAPES),
        "color_names": list(COLORS),
        "max_length": max_length,
        "schema": SCHEMA,
    }
    sets = []
    for n, s in ((n_train_per_class, seed * 2 + 1), (n_test_per_class, seed * 2 + 2)):
        cols = generate(n, s)
        cols["input_ids"] = cap_ids[cols["y"]]
        sets.append(ExampleSet(cols, transform=uint8_to_unit, meta=meta))
    return LoadedData(sets[0], sets[1], 9, (3, 16, 16), caps, "shapes", meta)

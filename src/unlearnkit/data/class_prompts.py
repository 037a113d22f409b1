"""A labelled image dataset turned into a text-to-image world whose prompts are class names.

SalUn's class-conditional DDPM experiment (Fan et al., ICLR 2024, §5.2; reference ``DDPM/``) conditions the
denoiser on the class label and forgets one class. Here the condition is a prompt built from the class name
(``template.format(name)``, default ``"a {}"``: ``"a seven"``), so the same text-to-image adapter, methods,
judge-based metrics and prompt attacks serve both that experiment and concept erasure. Each class name must be
a single word (the judge's schema maps one word to one class).

Bases (``base=``): ``digits`` (scikit-learn's 8×8 digits, offline, names ``zero`` … ``nine``) or any image
classification dataset of the registry (``cifar10`` through its loader: the hub or a local copy via
``base_options``). Images become RGB ``size``×``size`` uint8 (shrunk by area averaging, enlarged bilinearly;
grey images are repeated over 3 channels), turned into floats in [0, 1] by the transform. Columns: ``x``,
``y`` and ``class`` (the class id, the schema's one attribute), ``input_ids``. Example ids are the base
dataset's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet, uint8_to_unit
from unlearnkit.data.prompts import ConceptSchema, build_word_tokenizer, tokenize
from unlearnkit.errors import DataError
from unlearnkit.registry import get_dataset, register_dataset

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPARE_WORDS = ("an", "the", "of", "image", "photo", "picture", "small", "big", "bright", "dark", "digit")


@register_dataset("class-prompts")
def load_class_prompts(
    base: str = "digits",
    base_options: dict[str, Any] | None = None,
    names: list[str] | None = None,
    template: str = "a {}",
    size: int = 16,
    max_length: int = 12,
) -> LoadedData:
    """The ``class-prompts`` dataset: ``base``'s images captioned ``template.format(class name)``."""
    if "{}" not in template:
        raise DataError(f"data.template must contain '{{}}' where the class name goes, got {template!r}")
    if base == "class-prompts":
        raise DataError("data.base cannot be class-prompts itself: name an image dataset such as digits")
    data = get_dataset(base)(**dict(base_options or {}))
    class_names = list(names) if names is not None else _default_names(base, data)
    if len(class_names) != data.num_classes:
        raise DataError(
            f"data.names has {len(class_names)} names but {base!r} has {data.num_classes} classes"
        )
    bad = [n for n in class_names if len(str(n).split()) != 1 or not str(n).isprintable()]
    if bad:
        raise DataError(f"class names must be single words (one token each); fix {bad} with data.names")
    schema = ConceptSchema.of({"class": [str(n).lower() for n in class_names]})
    captions = [template.format(n) for n in schema.attributes[0][1]]
    class_words = schema.attributes[0][1]
    frame = template.replace("{}", " ").lower().split()
    words = [w for w in dict.fromkeys([*frame, *SPARE_WORDS]) if w not in class_words] + list(class_words)
    tok = build_word_tokenizer(words, max_length)
    cap_ids = tokenize(tok, captions, max_length)
    meta = {
        "dataset": "class-prompts",
        "base": base,
        "world": base,  # the trained world folder t2i-<base> (models/t2i_world.py)
        "tokenizer": tok,
        "captions": captions,
        "max_length": max_length,
        "schema": schema,
    }
    sets = [_convert(s, cap_ids, size, meta) for s in (data.train, data.test)]
    return LoadedData(sets[0], sets[1], data.num_classes, (3, size, size), captions, "class-prompts", meta)


def _default_names(base: str, data: LoadedData) -> list[str]:
    if base == "digits":
        return list(DIGIT_NAMES)
    names = list(data.class_names)
    if not names or any(n.isdigit() for n in names):
        raise DataError(f"{base!r} has no word class names ({names[:3]}...): give them with data.names")
    return names


def _convert(s: ExampleSet, cap_ids: torch.Tensor, size: int, meta: dict[str, Any]) -> ExampleSet:
    b = s.all()
    x, y = b["x"].float(), b["y"].long()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"class-prompts needs images [N, 1 or 3, H, W]; the base gives {tuple(x.shape)}")
    if float(x.max()) > 1.0 + 1e-6 or float(x.min()) < -1e-6:
        raise DataError("class-prompts needs base images in [0, 1] (after the base's own transform)")
    if x.shape[-1] != size or x.shape[-2] != size:
        if x.shape[-1] > size:  # shrink: average the pixels each output pixel covers (box filter)
            x = F.interpolate(x, size=(size, size), mode="area")
        else:  # enlarge: bilinear
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    cols = {"x": x8, "y": y, "class": y.clone(), "input_ids": cap_ids[y]}
    return ExampleSet(cols, s.ids, uint8_to_unit, meta=meta)

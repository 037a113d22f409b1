"""A Hugging Face image processor applied to a classifier's images, batch by batch.

A pretrained image classifier expects its own inputs: the images resized (and, for some, centre-cropped)
to its size, rescaled to [0, 1] and normalised with its mean and std, exactly as its folder's
``preprocessor_config.json`` says. :func:`with_processor` attaches that preprocessing to an
:class:`ExampleSet` as a batch transform run by the processor itself (``AutoImageProcessor``), so every
batch a method or a metric reads is what the model was trained on, the raw images stay in memory at their
own size, and subsets (forget, retain) keep it.

Which data are preprocessed (``mode="auto"``), decided once per set from its values:
- raw images: ``uint8``, or whole numbers in 0..255 (the API turns integer arrays into floats): resized,
  rescaled by the processor's ``rescale_factor`` (1/255) and normalised;
- floats in [0, 1] (``to_tensor`` images, our loaders' batches): the same, after mapping them back to
  0..255 (rounded: the processor's PIL backend resizes 8-bit images and would truncate them);
- anything else (negative values, fractions above 1) is taken as already preprocessed ``pixel_values``
  and passed through unchanged.
``mode=False`` passes every set through unchanged (already-preprocessed tensors); ``mode=True`` requires
raw images and refuses anything else. One-channel images are repeated to three channels when the model
takes three (as ``PIL.Image.convert("RGB")`` does); ``[N, H, W, C]`` images are moved to ``[N, C, H, W]``.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.errors import DataError

PREPROCESS_MODES = ("auto", True, False)
_PROBE = 4096  # rows a set's kind is read from (a transform, if any, applied)


def pixel_kind(s: ExampleSet) -> str:
    """``"uint8"`` (0..255 images), ``"unit"`` (floats in [0, 1]) or ``"other"`` (already preprocessed)."""
    n = len(s)
    if n == 0:
        return "other"
    if s.transform is None:
        x = s.columns["x"]
    else:
        step = max(1, n // _PROBE)
        x = s.__getitems__(list(range(0, n, step)))["x"]
    if x.dtype == torch.uint8:
        return "uint8"
    if not x.is_floating_point():
        x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return "unit"
    if lo >= 0.0 and hi <= 255.0 and bool((x == x.round()).all()):
        return "uint8"
    return "other"


def channels_first(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Images as ``[N, C, H, W]`` with the model's channel count (grey repeated to RGB)."""
    if x.ndim == 3:  # [N, H, W] grey
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(f"images must be [N, C, H, W] (or [N, H, W, C]), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != channels:
        raise DataError(f"the images have {x.shape[1]} channels but the model takes {channels}")
    return x


class ProcessorTransform:
    """Batch transform: the set's own transform (if any), then the image processor on ``x``."""

    def __init__(self, processor: Any, channels: int, rescale: bool, inner: Any = None) -> None:
        self.processor = processor
        self.channels = channels
        self.rescale = rescale
        self.inner = inner

    def __repr__(self) -> str:
        """Stable across processes (an image processor's repr is its JSON config): a resumed ``tune``
        compares it to know the data are preprocessed as before."""
        return f"ProcessorTransform({self.processor!r}, {self.channels}, {self.rescale}, {self.inner!r})"

    def __call__(self, batch: Batch) -> Batch:
        if self.inner is not None:
            batch = self.inner(batch)
        x = channels_first(batch["x"], self.channels)
        if (
            x.dtype != torch.uint8
        ):  # the processor's PIL backend works on 8-bit images: rounded, not truncated
            x = (x.float() if self.rescale else x.float() * 255).round().clamp(0, 255).to(torch.uint8)
        out = self.processor(
            images=x,
            do_rescale=True,
            input_data_format="channels_first",
            return_tensors="pt",
        )
        return batch | {"x": out["pixel_values"]}


def with_processor(
    s: ExampleSet, processor: Any, channels: int, mode: Any = "auto", where: str = ""
) -> ExampleSet:
    """``s`` with ``processor`` applied to its images per batch, as ``mode`` decides (module docstring).

    ``where`` names the setting in errors (``model.preprocess`` in a config, ``image_processor=`` in the
    API)."""
    if mode not in PREPROCESS_MODES:
        raise DataError(f"{where or 'preprocess'} must be auto, true or false, got {mode!r}")
    if mode is False:
        return s
    kind = pixel_kind(s)
    if kind == "other":
        if mode is True:
            raise DataError(
                f"{where or 'preprocess'}=true needs raw images (uint8, 0..255 or [0, 1] floats) but the "
                "data hold other values; pass already-preprocessed pixel_values with preprocessing off"
            )
        return s
    transform = ProcessorTransform(processor, channels, kind == "uint8", s.transform)
    return ExampleSet(s.columns, s.ids, transform, s.meta)

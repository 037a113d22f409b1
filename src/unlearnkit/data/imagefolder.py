"""A folder of images, one sub-folder per class, read with Pillow.

Layouts: ``root/<class>/*.png|jpg|jpeg|bmp`` (split into train/test at random, stratified by class), or
``root/train/<class>/...`` plus ``root/test/<class>/...`` (those splits are used as given). Classes are
the sorted folder names. Images are converted to RGB (``channels=3``) or grayscale (``channels=1``),
resized to ``size`` x ``size`` and stored as uint8 (N, C, size, size); batches are scaled to [0, 1].

Example ids are positions in the sorted list of all image paths relative to ``root``, so they stay the
same between loads as long as the set of files does not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet, uint8_to_unit
from unlearnkit.errors import DataError
from unlearnkit.registry import register_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_LAYOUT = "expected root/<class>/<image> or root/train/<class>/<image> and root/test/<class>/<image>"


@register_dataset("imagefolder")
def load_imagefolder(
    root: str,
    size: int = 32,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    channels: int = 3,
) -> LoadedData:
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise DataError("loading an image folder needs Pillow: pip install 'unlearnkit[data]'") from exc
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size < 1:
        raise DataError(f"data.size must be a positive number of pixels, got {size}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {root!r} does not exist; set data.root to a folder ({_LAYOUT})")

    has_train, has_test = (base / "train").is_dir(), (base / "test").is_dir()
    if has_train != has_test:
        raise DataError(
            f"{root!r} has a '{'train' if has_train else 'test'}' folder but no partner; {_LAYOUT}"
        )
    split_dirs = [base / "train", base / "test"] if has_train else [base]
    classes = sorted({d.name for s in split_dirs for d in _subdirs(s)})
    if not classes:
        raise DataError(f"no class folders in {root!r}; {_LAYOUT}")

    # (relative path, split index, label) for every image, in sorted relative-path order
    entries = []
    for s, split_dir in enumerate(split_dirs):
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if class_dir.is_dir():
                entries += [(p.relative_to(base).as_posix(), s, label) for p in _images(class_dir)]
    if not entries:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root!r}; {_LAYOUT}")
    entries.sort()
    counts = np.bincount([e[2] for e in entries], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"class folder(s) {empty} in {root!r} hold no images; add images or remove them")

    x = torch.from_numpy(np.stack([_read(base / rel, size, channels) for rel, _, _ in entries]))
    y = torch.as_tensor([e[2] for e in entries], dtype=torch.long)
    ids = np.arange(len(entries))
    if has_train:
        split = np.array([e[1] for e in entries])
        tr, te = ids[split == 0], ids[split == 1]
        if len(tr) == 0 or len(te) == 0:
            raise DataError(f"{root!r}: both train/ and test/ need images; {_LAYOUT}")
    else:
        tr, te = _stratified(ids, y.numpy(), test_fraction, split_seed)

    meta = {"dataset": "imagefolder", "root": str(base)}
    train = ExampleSet({"x": x[tr], "y": y[tr]}, tr, uint8_to_unit, meta)
    test = ExampleSet({"x": x[te], "y": y[te]}, te, uint8_to_unit, meta)
    return LoadedData(train, test, len(classes), (channels, size, size), classes, "imagefolder")


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _images(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    ]


def _read(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (C, size, size)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image {str(path)!r} ({exc}); remove or replace the file") from exc
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _stratified(
    ids: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be between 0 and 1, got {test_fraction}")
    try:
        tr, te = train_test_split(ids, test_size=test_fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot make a stratified {test_fraction:.0%} test split ({exc}); add images per class, "
            "change data.test_fraction, or provide root/train and root/test folders"
        ) from exc
    return np.sort(tr), np.sort(te)

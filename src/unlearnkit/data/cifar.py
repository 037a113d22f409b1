"""CIFAR-10 and CIFAR-100 through Hugging Face ``datasets`` (an optional dependency: ``unlearnkit[data]``).

``source`` is a hub id (default ``uoft-cs/cifar10`` / ``uoft-cs/cifar100``) or a local folder: a saved
``DatasetDict`` (``save_to_disk``, has ``dataset_dict.json``) or a folder ``load_dataset`` can read, e.g.
``data/train-*.parquet`` and ``data/test-*.parquet``. Expected schema: splits ``train`` and ``test``, an
``img`` column of 32x32 RGB images and a ClassLabel column (``label``; ``fine_label`` for CIFAR-100).

Images are stored as uint8 tensors (N, 3, H, W) in column ``x`` and scaled to float in [0, 1] per batch by
:func:`uint8_to_unit`, which keeps 50,000 images at ~150 MB. Labels are in ``y``. Example ids are row
numbers within each split (train ids and test ids are each stable, and both start at 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import Batch, ExampleSet, uint8_to_unit  # noqa: F401 (re-export)
from unlearnkit.errors import DataError
from unlearnkit.registry import register_dataset

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_SPLITS = ("train", "test")


@register_dataset("cifar10")
def load_cifar10(
    source: str = "uoft-cs/cifar10", cache_dir: str | None = None, limit: int | None = None
) -> LoadedData:
    return _load_cifar("cifar10", source, "label", CIFAR10_CLASSES, cache_dir, limit)


@register_dataset("cifar100")
def load_cifar100(
    source: str = "uoft-cs/cifar100", cache_dir: str | None = None, limit: int | None = None
) -> LoadedData:
    return _load_cifar("cifar100", source, "fine_label", [str(i) for i in range(100)], cache_dir, limit)


def _load_cifar(
    name: str,
    source: str,
    label_col: str,
    fallback_names: list[str],
    cache_dir: str | None,
    limit: int | None,
) -> LoadedData:
    if limit is not None and limit < 1:
        raise DataError(f"data.limit must be a positive number of rows per split, got {limit}")
    schema = (
        f"expected splits 'train' and 'test' with columns 'img' (32x32 RGB image) and '{label_col}' "
        "(ClassLabel), as in the Hugging Face CIFAR datasets"
    )
    dsd = _open(source, cache_dir)
    missing = [s for s in _SPLITS if s not in dsd]
    if missing:
        raise DataError(f"{source!r} has no split(s) {missing} (found {sorted(dsd)}); {schema}")
    for split in _SPLITS:
        cols = dsd[split].column_names
        if "img" not in cols or label_col not in cols:
            raise DataError(f"split {split!r} of {source!r} has columns {cols}; {schema}")

    feature = dsd["train"].features[label_col]
    class_names = [str(n) for n in getattr(feature, "names", None) or fallback_names]
    sets = {}
    for split in _SPLITS:
        ds = dsd[split]
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        x, y = _to_tensors(ds, label_col, split, schema)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(class_names)):
            raise DataError(f"split {split!r} has labels outside 0..{len(class_names) - 1}; {schema}")
        sets[split] = ExampleSet(
            {"x": x, "y": y}, None, uint8_to_unit, meta={"dataset": name, "split": split}
        )
    if sets["train"].columns["x"].shape[1:] != sets["test"].columns["x"].shape[1:]:
        raise DataError(f"train and test images of {source!r} differ in size; {schema}")
    shape = tuple(sets["train"].columns["x"].shape[1:])
    return LoadedData(sets["train"], sets["test"], len(class_names), shape, class_names, name)


def _open(source: str, cache_dir: str | None) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "loading CIFAR needs the Hugging Face 'datasets' package: pip install 'unlearnkit[data]'"
        ) from exc
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            if (path / "dataset_dict.json").is_file():
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path), cache_dir=cache_dir)
        except Exception as exc:
            raise DataError(
                f"could not read the local dataset folder {str(path)!r} ({type(exc).__name__}: {exc}); "
                "pass a folder saved with DatasetDict.save_to_disk or holding train/test parquet files"
            ) from exc
    if source.startswith((".", "/", "~")):
        raise DataError(f"data folder {source!r} does not exist; check data.source=PATH")
    try:
        return datasets.load_dataset(source, cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(
            f"could not load dataset {source!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If you are offline, download it elsewhere (DatasetDict.save_to_disk or parquet files) "
            "and pass the local folder via data.source=PATH"
        ) from exc


def _to_tensors(ds: Any, label_col: str, split: str, schema: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split's images into uint8 (N, 3, H, W) and its labels into long (N,)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for batch in ds.select_columns(["img", label_col]).iter(batch_size=1000):
        for img in batch["img"]:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            if images and arr.shape != images[0].shape:
                raise DataError(
                    f"split {split!r} mixes image sizes {images[0].shape[:2]} and {arr.shape[:2]}; {schema}"
                )
            images.append(arr)
        labels.extend(int(v) for v in batch[label_col])
    if not images:
        raise DataError(f"split {split!r} is empty; {schema}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(labels, dtype=torch.long)

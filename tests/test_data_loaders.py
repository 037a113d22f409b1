"""CIFAR (Hugging Face ``datasets``) and image-folder loaders, on tiny fixtures built at test time."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pickle  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

datasets = pytest.importorskip("datasets")

from unlearnkit.data.cifar import CIFAR10_CLASSES, load_cifar10, load_cifar100  # noqa: E402
from unlearnkit.data.imagefolder import load_imagefolder  # noqa: E402
from unlearnkit.errors import DataError  # noqa: E402
from unlearnkit.registry import _DATASETS  # noqa: E402

N_TRAIN, N_TEST = 20, 10


def _random_split(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[int]]:
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    return pixels, rng.integers(0, 10, n).tolist()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A CIFAR-10-schema DatasetDict saved with save_to_disk and as parquet; plus the source arrays."""
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_CLASSES)}
    )
    raw, splits = {}, {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        pixels, labels = _random_split(rng, n)
        raw[split] = (pixels, labels)
        images = [Image.fromarray(p) for p in pixels]
        splits[split] = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    dsd = datasets.DatasetDict(splits)
    base = tmp_path_factory.mktemp("cifar")
    dsd.save_to_disk(str(base / "saved"))
    (base / "parquet" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        dsd[split].to_parquet(str(base / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    return base, raw


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_cifar10_local_folder(cifar, layout, tmp_path):
    base, raw = cifar
    data = load_cifar10(str(base / layout), cache_dir=str(tmp_path / "cache"))
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.class_names == CIFAR10_CLASSES
    assert data.input_shape == (3, 32, 32)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        ds = getattr(data, split)
        x = ds.columns["x"]
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
        assert ds.ids.tolist() == list(range(n))
        assert ds.labels.tolist() == raw[split][1]
        assert torch.equal(x[3], torch.from_numpy(raw[split][0][3]).permute(2, 0, 1))
    batch = data.train.__getitems__([0, 1])
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (2, 3, 32, 32)
    assert float(batch["x"].min()) >= 0.0 and float(batch["x"].max()) <= 1.0
    expected = torch.from_numpy(raw["train"][0][1]).permute(2, 0, 1).float() / 255
    assert torch.allclose(batch["x"][1], expected)
    assert batch["y"].tolist() == raw["train"][1][:2] and batch["id"].tolist() == [0, 1]
    # the stored column stays uint8 and the transform survives pickling (DataLoader workers)
    assert data.train.columns["x"].dtype == torch.uint8
    assert pickle.loads(pickle.dumps(data.train.transform)) is data.train.transform


def test_cifar10_limit(cifar):
    base, raw = cifar
    data = load_cifar10(str(base / "saved"), limit=7)
    assert len(data.train) == 7 and len(data.test) == 7
    assert data.train.labels.tolist() == raw["train"][1][:7]
    data = load_cifar10(str(base / "saved"), limit=15)
    assert len(data.train) == 15 and len(data.test) == N_TEST
    with pytest.raises(DataError, match="limit"):
        load_cifar10(str(base / "saved"), limit=0)


def test_cifar_registered():
    assert _DATASETS["cifar10"] is load_cifar10
    assert _DATASETS["cifar100"] is load_cifar100
    assert _DATASETS["imagefolder"] is load_imagefolder


def test_cifar100_schema(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"c{i}" for i in range(100)]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=names),
            "coarse_label": datasets.ClassLabel(names=[f"g{i}" for i in range(20)]),
        }
    )
    splits = {}
    for split, fine in (("train", [5, 99, 0]), ("test", [42, 7])):
        images = [Image.fromarray(p) for p in _random_split(rng, len(fine))[0]]
        splits[split] = datasets.Dataset.from_dict(
            {"img": images, "fine_label": fine, "coarse_label": [0] * len(fine)}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "c100"))
    data = load_cifar100(str(tmp_path / "c100"))
    assert data.num_classes == 100 and data.class_names == names
    assert data.train.labels.tolist() == [5, 99, 0] and data.test.labels.tolist() == [42, 7]
    # the CIFAR-100 folder lacks CIFAR-10's 'label' column
    with pytest.raises(DataError, match="'label'"):
        load_cifar10(str(tmp_path / "c100"))


def test_cifar_missing_split_or_column(tmp_path):
    img = [Image.fromarray(np.zeros((32, 32, 3), np.uint8))]
    only_train = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"img": img, "label": [0]})})
    only_train.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"no split\(s\) \['test'\].*expected splits 'train' and 'test'"):
        load_cifar10(str(tmp_path / "one"))
    renamed = datasets.Dataset.from_dict({"image": img, "label": [0]})
    datasets.DatasetDict({"train": renamed, "test": renamed}).save_to_disk(str(tmp_path / "cols"))
    with pytest.raises(DataError, match="columns 'img'"):
        load_cifar10(str(tmp_path / "cols"))


def test_cifar_hub_offline_raises(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"could not load dataset .*data\.source=PATH"):
        load_cifar10("nonexistent-org/nonexistent", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(str(tmp_path / "no-such-folder"))


def test_cifar_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'unlearnkit\[data\]'"):
        load_cifar10("uoft-cs/cifar10")


# -- image folders ---------------------------------------------------------------------------------
COLORS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "ant": (10, 200, 30)}


def _write_class(folder, name: str, n: int, start: int = 0) -> None:
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        # solid colour, odd size: resizing to 16x16 keeps the colour exactly
        suffix = "png" if i % 2 else "bmp"
        Image.new("RGB", (20 + i, 12), COLORS[name]).save(folder / name / f"img{i:02d}.{suffix}")


@pytest.fixture
def flat(tmp_path):
    for name in COLORS:
        _write_class(tmp_path / "imgs", name, 10)
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def test_imagefolder_flat(flat):
    data = load_imagefolder(str(flat), size=16, test_fraction=0.2, split_seed=3)
    assert data.class_names == ["ant", "cat", "dog"] and data.num_classes == 3
    assert data.input_shape == (3, 16, 16)
    assert len(data.train) == 24 and len(data.test) == 6
    assert np.bincount(data.test.labels.numpy(), minlength=3).tolist() == [2, 2, 2]
    assert np.bincount(data.train.labels.numpy(), minlength=3).tolist() == [8, 8, 8]
    all_ids = sorted(data.train.ids.tolist() + data.test.ids.tolist())
    assert all_ids == list(range(30))
    # ids are positions in the sorted relative-path list: ant/* -> 0..9, cat/* -> 10..19, dog/* -> 20..29
    for ds in (data.train, data.test):
        assert (ds.labels == ds.ids // 10).all()
        assert ds.columns["x"].dtype == torch.uint8
    batch = data.test.__getitems__([0, 1])
    assert batch["x"].dtype == torch.float32
    for x, y in zip(batch["x"], batch["y"], strict=True):
        color = torch.tensor(COLORS[data.class_names[int(y)]]) / 255
        assert torch.allclose(x, color.view(3, 1, 1).expand(3, 16, 16))

    again = load_imagefolder(str(flat), size=16, test_fraction=0.2, split_seed=3)
    assert torch.equal(again.train.ids, data.train.ids) and torch.equal(again.test.ids, data.test.ids)
    assert torch.equal(again.train.columns["x"], data.train.columns["x"])
    other = load_imagefolder(str(flat), size=16, test_fraction=0.2, split_seed=4)
    assert not torch.equal(other.test.ids, data.test.ids)
    assert sorted(other.train.ids.tolist() + other.test.ids.tolist()) == all_ids


def test_imagefolder_grayscale(flat):
    data = load_imagefolder(str(flat), size=8, channels=1)
    assert data.input_shape == (1, 8, 8) and data.train.columns["x"].shape[1:] == (1, 8, 8)
    ids = data.train.positions([10])  # cat: pure red -> L = 299/1000 * 255 = 76
    assert int(data.train.columns["x"][ids[0]].unique()) == 76


def test_imagefolder_train_test_layout(tmp_path):
    root = tmp_path / "split"
    for name in ("cat", "dog"):
        _write_class(root / "train", name, 4)
        _write_class(root / "test", name, 2, start=4)
    data = load_imagefolder(str(root), size=8, test_fraction=0.5)
    assert data.class_names == ["cat", "dog"]
    assert len(data.train) == 8 and len(data.test) == 4
    assert data.test.labels.tolist() == [0, 0, 1, 1]
    # sorted relative paths: test/cat, test/dog, train/cat, train/dog
    assert data.test.ids.tolist() == [0, 1, 2, 3] and data.train.ids.tolist() == list(range(4, 12))


def test_imagefolder_errors(tmp_path, flat):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_imagefolder(str(tmp_path / "empty"))
    (flat / "zebra").mkdir()
    with pytest.raises(DataError, match=r"\['zebra'\].*hold no images"):
        load_imagefolder(str(flat))
    (flat / "zebra").rmdir()
    with pytest.raises(DataError, match="channels"):
        load_imagefolder(str(flat), channels=4)
    (flat / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_imagefolder(str(flat))


def test_class_prompts_over_a_local_cifar10(cifar, tmp_path):
    """The class-prompts world over CIFAR-10 (the real loader on a local copy): class names as captions,
    32×32 images averaged down to 16×16 (antialiased: each output pixel is the mean of a 2×2 block)."""
    from unlearnkit.data.class_prompts import load_class_prompts

    base, raw = cifar
    data = load_class_prompts(base="cifar10", base_options={"source": str(base / "saved")})
    assert data.class_names == [f"a {n}" for n in CIFAR10_CLASSES]
    assert data.meta["schema"].to_dict() == {"class": CIFAR10_CLASSES} and data.meta["world"] == "cifar10"
    x = data.train.columns["x"]
    assert x.shape == (N_TRAIN, 3, 16, 16) and x.dtype == torch.uint8
    src = torch.from_numpy(raw["train"][0][4]).permute(2, 0, 1).float() / 255
    pooled = torch.nn.functional.avg_pool2d(src[None], 2)[0]
    assert torch.allclose(data.train.all()["x"][4], pooled, atol=1 / 255 + 1e-6)
    assert data.train.all()["y"].tolist() == raw["train"][1]
    tok = data.meta["tokenizer"]
    label = raw["train"][1][4]
    assert tok.decode(data.train.columns["input_ids"][4].tolist(), skip_special_tokens=True) == (
        f"a {CIFAR10_CLASSES[label]}"
    )

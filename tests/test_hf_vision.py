"""Hugging Face image classifiers through the vision family: ViT, ResNet (BatchNorm) and ConvNeXt folders by
the CLI (``model.name=hf model.path=FOLDER``), an in-memory ``PreTrainedModel`` by the API, each with its
own image processor; the written folder reloads with identical logits, the input is never touched, and a
head that does not fit the data is one line (exit 2)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from hf_vision_zoo import ARCHS, build, digits, pixel_values, trained_folder
from safetensors.torch import load_file

import unlearnkit
from unlearnkit.cli import main
from unlearnkit.data.examples import ExampleSet, uint8_to_unit
from unlearnkit.data.image_processor import pixel_kind, with_processor
from unlearnkit.errors import DataError
from unlearnkit.io import load_weights, state_dict_sha256
from unlearnkit.models.hf_vision import HFImageClassifier
from unlearnkit.tuning_store import TrialStore

FORGET_CLASS = 3


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-zoo")
    return {a: trained_folder(root, a) for a in ARCHS}


def _folder_sha(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _class_accuracy(model, processor, cls: int) -> float:
    x, y, _, _ = digits()
    pv = pixel_values(processor, x[y == cls])
    with torch.no_grad():
        return float((model.eval()(pixel_values=pv).logits.argmax(1) == cls).float().mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_unlearns_a_hf_folder_and_writes_one_back(zoo, arch, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, train_acc = zoo[arch]
    assert train_acc > 0.85
    before = _folder_sha(folder)
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    original = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    acc_before = _class_accuracy(original, proc, FORGET_CLASS)
    assert acc_before > 0.7
    out = tmp_path / "run"
    code = main(
        [
            "unlearn", "--preset", "vision/ga", f"model={{name: hf, path: {folder}}}",
            f"split={{kind: class, classes: [{FORGET_CLASS}]}}", "method.epochs=2", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["UA"] > 100 * (1 - acc_before) + 20  # the class is forgotten
    assert _folder_sha(folder) == before  # the input folder is untouched
    # the written folder is a Hugging Face folder with the processor, and holds the run's weights
    reloaded = AutoModelForImageClassification.from_pretrained(out / "hf_model", local_files_only=True)
    assert reloaded.config.id2label == original.config.id2label
    assert (out / "hf_model" / "preprocessor_config.json").is_file()
    assert not list((out / "hf_model").glob("*.bin"))
    run_model = load_weights(HFImageClassifier(build(arch)[0]), out / "model.safetensors")
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["weights_after_sha256"] == state_dict_sha256(load_file(str(out / "model.safetensors")))
    pv = pixel_values(proc, digits(64)[0])
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(pixel_values=pv).logits, run_model.eval()(pv))
        assert not torch.equal(original.eval()(pixel_values=pv).logits, run_model(pv))  # it moved
    assert 100 * (1 - _class_accuracy(reloaded, proc, FORGET_CLASS)) == pytest.approx(metrics["UA"], abs=1e-6)


def test_a_head_that_does_not_fit_the_data_is_one_line(tmp_path, capsys):
    folder, _ = trained_folder(tmp_path, "resnet", num_labels=5)
    capsys.readouterr()  # transformers' own progress output while writing the folder
    code = main(
        ["unlearn", "--preset", "vision/ga", f"model={{name: hf, path: {folder}}}", "method.epochs=1"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "5 labels" in err and "10 classes" in err and "num_labels=10" in err


def test_a_folder_that_is_not_an_image_classifier_is_refused(tmp_path, capsys):
    folder, _ = trained_folder(tmp_path, "resnet")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"architectures": ["ResNetModel"]}))
    capsys.readouterr()
    assert main(["unlearn", "--preset", "vision/ga", f"model={{name: hf, path: {folder}}}"]) == 2
    assert "not an image classifier" in capsys.readouterr().err
    # a folder with model.name of one of our builders says to set model.name=hf
    assert main(["unlearn", "--preset", "vision/ga", f"model={{name: mlp, path: {folder}}}"]) == 2
    assert "model.name=hf" in capsys.readouterr().err


def test_api_unlearns_an_in_memory_pretrained_model(zoo, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, _ = zoo["resnet"]
    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y, xt, yt = digits()
    raw = (x * 255).round().to(torch.uint8)  # raw images: the processor rescales, resizes and normalises
    # evaluate() takes the same model and processor; the [0, 1] test floats are preprocessed alike
    first = unlearnkit.evaluate(
        model, train_set=(raw, y), test=(xt, yt), forget_class=FORGET_CLASS, image_processor=proc
    )
    res = unlearnkit.unlearn(
        model, "salun", train_set=(raw, y), test=(xt, yt), forget_class=FORGET_CLASS, image_processor=proc,
        epochs=2, out=tmp_path / "run",
    )  # fmt: skip
    assert type(res.model) is type(model)  # the user's kind of model comes back
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # input untouched
    assert first["UA"] < 10 and res.metrics["UA"] > first["UA"] + 20, (first, res.metrics)
    assert res.metrics["RA"] > 80
    reloaded = AutoModelForImageClassification.from_pretrained(
        tmp_path / "run" / "hf_model", local_files_only=True
    )
    pv = pixel_values(proc, xt[:64])
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(pixel_values=pv).logits, res.model.eval()(pixel_values=pv).logits)
    again = unlearnkit.evaluate(
        res.model, train_set=(raw, y), test=(xt, yt), forget_class=FORGET_CLASS, image_processor=proc
    )
    assert again["UA"] == pytest.approx(res.metrics["UA"]) and again["TA"] == pytest.approx(res.metrics["TA"])


def test_tune_takes_a_pretrained_model_and_its_processor_as_unlearn_does(zoo, tmp_path, monkeypatch):
    """``unlearnkit.tune`` on an in-memory HF ResNet (BatchNorm) and raw images: its trials see what
    ``evaluate`` and ``unlearn`` see, and ``unlearn(**best)`` reproduces the chosen trial."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, _ = zoo["resnet"]
    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y, xt, yt = digits(600)
    raw = (x * 255).round().to(torch.uint8)
    data = {"train_set": (raw, y), "test": (xt, yt), "forget_class": FORGET_CLASS, "image_processor": proc}
    res = unlearnkit.tune(model, "rl", max_trials=3, epochs=2, batch_size=64, out=tmp_path / "t", **data)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # input untouched
    assert (tmp_path / "t" / "tune.png").is_file()
    # stopped after two runs, a rerun replays them through the same processor and ends as the whole one
    put = TrialStore.put

    def put_then_stop(self, options, trials):
        put(self, options, trials)
        if len(self.runs) == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(TrialStore, "put", put_then_stop)
        unlearnkit.tune(model, "rl", max_trials=3, epochs=2, batch_size=64, out=tmp_path / "s", **data)
    again = unlearnkit.tune(model, "rl", max_trials=3, epochs=2, batch_size=64, out=tmp_path / "s", **data)
    assert again.resumed == 2 and [t.signals for t in again.trials] == [t.signals for t in res.trials]
    first = unlearnkit.evaluate(model, **data)
    assert res.original["TA"] == pytest.approx(first["TA"]) and res.original["UA"] == pytest.approx(
        first["UA"]
    )
    chosen = next(t for t in res.trials if t.options == res.best)
    run = unlearnkit.unlearn(model, "rl", batch_size=64, **res.best, **data)
    assert run.metrics["UA"] == pytest.approx(chosen.signals["UA"])
    assert run.metrics["TA"] == pytest.approx(chosen.signals["TA"])
    assert chosen.signals["UA"] > first["UA"] + 20  # and the chosen step does forget the class
    # heldout= goes through the same processor: the test set passed as heldout= gives the same targets
    held = {k: v for k, v in data.items() if k != "test"} | {"heldout": (xt, yt)}
    on_held = unlearnkit.tune(model, "rl", max_trials=1, epochs=2, batch_size=64, **held)
    assert on_held.original == pytest.approx(res.original)


def test_the_processor_runs_as_its_own_call_would():
    _, proc = build("vit")  # 16×16, mean = std = 0.5: pixel_values = (x - 0.5) / 0.5
    x = torch.rand(6, 3, 16, 16)
    unit = ExampleSet({"x": x, "y": torch.arange(6)})
    raw = ExampleSet({"x": (x * 255).round().to(torch.uint8), "y": torch.arange(6)}, transform=uint8_to_unit)
    whole = ExampleSet({"x": (x * 255).round(), "y": torch.arange(6)})  # 0..255 floats, as the API gives
    assert [pixel_kind(s) for s in (unit, raw, whole)] == ["unit", "unit", "uint8"]
    # the processor's PIL backend resizes through 8-bit images, so [0, 1] floats come back on the 1/255 grid
    rounded = ((x * 255).round() / 255 - 0.5) / 0.5
    assert torch.allclose(with_processor(unit, proc, 3).all()["x"], rounded, atol=1e-6)
    assert torch.allclose(with_processor(raw, proc, 3).all()["x"], rounded, atol=1e-6)
    assert torch.allclose(with_processor(whole, proc, 3).all()["x"], rounded, atol=1e-6)
    # subsets keep the preprocessing; already-normalised values pass through untouched
    assert torch.allclose(
        with_processor(unit, proc, 3).take(torch.tensor([4]))[0]["x"], rounded[4], atol=1e-6
    )
    normed = ExampleSet({"x": (x - 0.5) / 0.5, "y": torch.arange(6)})
    assert with_processor(normed, proc, 3) is normed
    with pytest.raises(DataError, match="needs raw images"):
        with_processor(normed, proc, 3, True, "model.preprocess")
    # grey [N, 1, 8, 8] digits: repeated to RGB and resized to the processor's 16×16
    grey = ExampleSet({"x": torch.rand(2, 1, 8, 8), "y": torch.arange(2)})
    out = with_processor(grey, proc, 3).all()["x"]
    assert out.shape == (2, 3, 16, 16) and torch.equal(out[:, 0], out[:, 2])


def test_retrain_on_a_hf_folder_starts_from_oracle_base_or_refuses(zoo, tmp_path, capsys):
    """A pretrained folder's own weights saw the forget set: retrain refuses them (exit 2, naming
    oracle.base) and, given oracle.base, starts from that base. With train.lr=0 the retrained weights are
    the base's exactly, not the fine-tuned folder's."""
    folder, _ = zoo["vit"]
    base_model, proc = build("vit", seed=1)
    base = tmp_path / "base"
    base_model.save_pretrained(base, safe_serialization=True)
    proc.save_pretrained(base)
    args = ["unlearn", "--preset", "vision/retrain", f"model={{name: hf, path: {folder}}}", "train.epochs=1"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert last.startswith("error:") and "oracle.base=DIR" in last
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "run"
    assert main([*args, "train.lr=0", f"oracle.base={base}", "--out", str(out)]) == 0
    got = load_file(str(out / "model.safetensors"))
    want = {f"model.{k}": v for k, v in base_model.state_dict().items()}
    fine_tuned = load_file(str(folder / "model.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["model.classifier.weight"], fine_tuned["classifier.weight"])

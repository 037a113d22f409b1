"""Class-conditional forgetting with class names as prompts (issue #4, SalUn's DDPM experiment): the
``class-prompts`` dataset, the concept schema that replaces the shapes-only judging, the world folders and
the ``t2i-digits`` suite contract on a tiny world built here."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnkit.data.class_prompts import DIGIT_NAMES, load_class_prompts
from unlearnkit.data.prompts import ConceptSchema, build_word_tokenizer, forget_captions, tokenize
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.metrics.diffusion import erasure_metrics, judge_schema, recognised
from unlearnkit.models.t2i import build_t2i, save_t2i
from unlearnkit.models.t2i_world import (
    AttributeJudge,
    judge_accuracy,
    load_original,
    read_world,
    train_judge,
)


@pytest.fixture(scope="module")
def digits():
    return load_class_prompts()


# -- the schema and the tokenizer -------------------------------------------------------------------------
def test_schema_parses_prompts_of_any_world():
    s = ConceptSchema.of({"class": ["zero", "one", "two"]})
    assert s.parse("a two") == (2,)
    assert s.parse("a photo of the one") == (1,)
    with pytest.raises(UnlearnkitError, match="names no single value"):
        s.parse("a photo")
    with pytest.raises(UnlearnkitError, match="names no single value"):
        s.parse("a one two")
    assert s.parse("one one") == (1,)  # the same value twice is still one value
    with pytest.raises(UnlearnkitError, match="distinct single words"):
        ConceptSchema.of({"class": ["ice cream", "cake"]})
    with pytest.raises(UnlearnkitError, match="distinct single words"):
        ConceptSchema.of({"a": ["x", "y"], "b": ["y", "z"]})
    with pytest.raises(UnlearnkitError, match="at least two values"):
        ConceptSchema.of({"class": ["only"]})
    assert ConceptSchema.of(s.to_dict()) == s


def test_recognised_checks_every_named_attribute_of_a_class_schema():
    preds = (torch.tensor([7, 3, 7, 0]),)
    target = ConceptSchema.of({"class": DIGIT_NAMES}).parse("a seven")
    assert recognised(preds, target).tolist() == [True, False, True, False]


def test_word_tokenizer_ids_and_errors():
    tok = build_word_tokenizer(["a", "cat", "dog"], max_length=5)
    assert tok.get_vocab() == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "cat": 5, "dog": 6}
    assert tokenize(tok, ["a dog", "cat"], 5).tolist() == [[1, 4, 6, 2, 0], [1, 5, 2, 0, 0]]
    with pytest.raises(DataError, match="outside the caption vocabulary"):
        tokenize(tok, ["a bird"], 5)
    with pytest.raises(DataError, match="at most 5"):
        tokenize(tok, ["a dog a dog a"], 5)
    with pytest.raises(UnlearnkitError, match="repeats"):
        build_word_tokenizer(["a", "a"], 5)


# -- the dataset ----------------------------------------------------------------------------------------
def test_class_prompts_over_digits(digits):
    from unlearnkit.data.digits import load_digits

    base = load_digits()
    assert digits.class_names == [f"a {n}" for n in DIGIT_NAMES]
    assert digits.meta["schema"].to_dict() == {"class": list(DIGIT_NAMES)}
    assert digits.meta["world"] == "digits"
    tr = digits.train.all()
    assert tr["x"].shape == (len(base.train), 3, 16, 16) and tr["x"].dtype == torch.float32
    assert torch.equal(digits.train.ids, base.train.ids)  # the base dataset's stable ids
    assert torch.equal(tr["y"], base.train.all()["y"]) and torch.equal(tr["class"], tr["y"])
    # the caption of every image names its class, through the dataset's own tokenizer
    tok = digits.meta["tokenizer"]
    for k in (0, 5, 100):
        words = tok.decode(tr["input_ids"][k].tolist(), skip_special_tokens=True).split()
        assert words == ["a", DIGIT_NAMES[int(tr["y"][k])]]
    # the 3 channels are the grey image, upsampled: the mean ink is preserved by the bilinear resize
    assert torch.equal(tr["x"][:, 0], tr["x"][:, 2])
    ink_8 = base.train.all()["x"].mean()
    assert float(tr["x"].mean()) == pytest.approx(float(ink_8), abs=0.01)


def test_class_prompts_bad_options_are_clear_errors():
    with pytest.raises(DataError, match="10 classes"):
        load_class_prompts(names=["a", "b"])
    with pytest.raises(DataError, match="single words"):
        load_class_prompts(names=[f"digit {i}" for i in range(10)])
    with pytest.raises(DataError, match="where the class name goes"):
        load_class_prompts(template="a digit")
    with pytest.raises(DataError, match="itself"):
        load_class_prompts(base="class-prompts")
    custom = load_class_prompts(names=[f"d{i}" for i in range(10)], template="a photo of {}")
    assert custom.class_names[3] == "a photo of d3"


# -- judge and world folders ------------------------------------------------------------------------------
def test_judge_learns_the_class_attribute_and_accuracy_arithmetic(digits):
    judge = train_judge(digits, epochs=2)
    assert judge.schema == digits.meta["schema"]
    assert hasattr(judge, "class_head") and not hasattr(judge, "shape_head")
    te = digits.test.all()
    acc, both = judge_accuracy(judge, te["x"], te["class"])
    assert acc == both and acc > 0.6  # 10 classes: chance is 0.1
    (pred,) = judge.predict(te["x"])
    assert acc == pytest.approx(float((pred == te["class"]).float().mean()))
    assert judge.recognises(te["x"][:20], "a seven").tolist() == (pred[:20] == 7).tolist()
    with pytest.raises(UnlearnkitError, match="1 target"):
        judge_accuracy(judge, te["x"], te["class"], te["y"])


def _tiny_world(folder, data, judge):
    from unlearnkit.io import save_weights

    model = build_t2i(data, preset="tiny", seed=0)
    save_t2i(model, folder / "model")
    save_weights(judge, folder / "judge.safetensors")
    (folder / "world.json").write_text(
        json.dumps({"world": "digits", "data": {"name": "class-prompts"}, "schema": judge.schema.to_dict(),
                    "judge_width": 32})
    )  # fmt: skip
    return model


def test_world_folder_round_trip_keeps_the_schema(tmp_path, digits):
    judge = train_judge(digits, epochs=1)
    _tiny_world(tmp_path, digits, judge)
    model, loaded = load_original(tmp_path)
    assert loaded.schema == digits.meta["schema"] and judge_schema(loaded) == loaded.schema
    x = digits.test.all()["x"][:16]
    assert torch.equal(loaded.predict(x)[0], judge.predict(x)[0])
    assert model.tokenizer.get_vocab() == digits.meta["tokenizer"].get_vocab()
    # a folder without world.json is the shapes world (the format of the shipped shapes world)
    assert read_world(tmp_path / "nowhere")["schema"].names == ("shape", "color")
    assert judge_schema(object()).names == ("shape", "color")


def test_next_class_anchor_and_concept_by_seed(digits):
    fam = DiffusionFamily(relabel_map="next")
    data = fam.load_data({"name": "class-prompts"})
    assert fam.relabel_map["a zero"] == "a one" and fam.relabel_map["a nine"] == "a zero"
    batch = data.train.__getitems__([0, 1, 2])
    out = fam.relabel(batch, torch.Generator())
    caps = data.class_names
    for k in range(3):
        anchor = caps[(int(batch["y"][k]) + 1) % 10]
        assert torch.equal(out["anchor_input_ids"][k], tokenize(fam.tokenizer, [anchor], 12)[0])
    with pytest.raises(Exception, match="'next'"):
        DiffusionFamily(relabel_map="previous")
    unloaded = DiffusionFamily(relabel_map="next", tokenizer=fam.tokenizer)  # no data: no captions to map
    with pytest.raises(Exception, match="load the data"):
        unloaded.relabel(batch, torch.Generator())
    assert forget_captions({"concept": "by-seed"}, caps, 13) == ["a three"]
    with pytest.raises(UnlearnkitError, match="captions"):
        forget_captions({"concept": "by-seed"}, [], 0)
    with pytest.raises(UnlearnkitError, match="split.concept"):
        forget_captions({}, caps, 0)


def test_a_judge_of_another_world_is_refused(tmp_path, digits):
    from unlearnkit.families.diffusion import _same_schema

    judge = AttributeJudge(ConceptSchema.of({"class": [f"x{i}" for i in range(10)]}))
    with pytest.raises(DataError, match="use the world trained on this dataset"):
        _same_schema(judge, digits.meta["schema"], tmp_path, "digits")
    _same_schema(AttributeJudge(digits.meta["schema"]), digits.meta["schema"], tmp_path, "digits")
    with pytest.raises(UnlearnkitError, match="another world"):
        recognised((torch.zeros(3, dtype=torch.long),), (0, 1))


# -- the suite ------------------------------------------------------------------------------------------
def test_t2i_digits_suite_on_a_tiny_world(tmp_path, digits):
    """The suite forgets caption (seed mod 10) of the digits world; the original's UA equals a direct
    evaluation with the class judge, and SalUn (anchored on the next class) moves the UNet."""
    from unlearnkit.bench.suite import load_suite, run_suite

    cfg = load_suite("t2i-digits")
    assert cfg["split"]["concept"] == "by-seed" and cfg["family_options"]["relabel_map"] == "next"
    assert {"original", "esd", "salun"} <= set(cfg["methods"])
    world = tmp_path / "world"
    judge = train_judge(digits, epochs=1)
    _tiny_world(world, digits, judge)
    fast = [f"model.path={world}", "eval.per_prompt=2", "eval.steps=3", "eval.attack=null",
            "methods.salun={name: salun, lr: 1.0e-3, epochs: 1, mask_ratio: 0.5}"]  # fmt: skip
    res = run_suite(
        "t2i-digits", 1, tmp_path / "out", methods=["original", "salun"], overrides=fast, progress=False
    )
    rows = {r["method"]: r["metrics"] for r in res["rows"]}
    assert set(rows) == {"original", "salun"}
    orig, jd = load_original(world)
    caps = digits.class_names
    direct = erasure_metrics(
        orig, jd, "a zero", caps[1:], digits.test.all()["x"][digits.test.all()["y"] != 0],
        per_prompt=2, seed=0, guidance=3.0, steps=3,
    )  # fmt: skip
    for key in ("UA", "utility", "fid", "kid"):
        assert rows["original"][key] == pytest.approx(direct[key]), key
    assert rows["salun"]["RTE"] > 0
    assert (rows["salun"]["UA"], rows["salun"]["kid"]) != (rows["original"]["UA"], rows["original"]["kid"])


def test_the_shipped_digits_world_matches_the_dataset():
    """The digits world in the package assets loads through the pipeline with the digits preset: its
    tokenizer and judge schema are the dataset's, and its text encoder leaves room for a 5-token prefix."""
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import make_setup, original_model

    setup = make_setup(load_preset("diffusion/digits") | {"seed": 3})
    original = original_model(setup)
    model = original.model
    assert original.meta["source"] == "world digits"
    assert original.extras["judge"].schema == setup.data.meta["schema"]
    assert model.tokenizer.get_vocab() == setup.data.meta["tokenizer"].get_vocab()
    assert model.text_encoder.config.max_position_embeddings >= 4 + 5  # "<s> a three </s>" + 5 prefix tokens
    forget = setup.split.forget.all()
    assert len(forget["y"]) > 0 and bool((forget["y"] == 3).all())  # by-seed: seed 3 forgets "a three"


def test_train_world_writes_a_folder_the_pipeline_loads(tmp_path):
    """scripts/train_t2i_world.py's recipe, a few steps on a tiny model: the folder has the components, the
    judge and world.json; the saved weights are the EMA of the trained ones (moved from the initialisation
    by (1 - 0.995) per step, not by a full step), and train.json's sample accuracy is the judge's on
    the same samples."""
    from unlearnkit.metrics.diffusion import generate_for_prompts
    from unlearnkit.models.t2i_world import train_world

    opts = {"names": [f"c{i}" for i in range(10)]}
    report = train_world("digits", tmp_path / "w", steps=3, data_options=opts, log_every=0,
                         model_preset="tiny", judge_epochs=1, check_per_prompt=1, check_steps=2)  # fmt: skip
    files = {p.name for p in (tmp_path / "w").iterdir()}
    assert files == {"model", "judge.safetensors", "world.json", "train.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no partial or old folder left behind
    model, judge = load_original(tmp_path / "w")
    data = load_class_prompts(**opts)
    assert judge.schema == data.meta["schema"] and report["attributes"] == ["class"]
    init = build_t2i(data, preset="tiny", seed=0)
    moved = [(p - q).abs().max() for p, q in zip(model.parameters(), init.parameters(), strict=True)]
    assert 0 < max(moved) < 3 * 0.005 * 1e-3 * 3 * 10  # EMA of 3 AdamW steps of lr 1e-3: tiny moves
    imgs, idx = generate_for_prompts(model, data.class_names, per_prompt=1, seed=1234, steps=2)
    assert report["judge_on_samples_per_attribute_and_all"][0] == pytest.approx(
        float((judge.predict(imgs)[0] == idx).float().mean())
    )


def test_a_killed_world_training_keeps_the_previous_world(tmp_path, monkeypatch):
    """train_world writes into a partial folder and swaps it in at the end: a failure during training
    leaves the existing world folder exactly as it was (no judge from the new run beside the old model)."""
    from unlearnkit.models import t2i_world

    world = tmp_path / "w"
    (world / "model").mkdir(parents=True)
    (world / "judge.safetensors").write_bytes(b"old judge")

    def boom(*a, **kw):
        raise RuntimeError("killed")

    monkeypatch.setattr(t2i_world, "save_t2i", boom)
    with pytest.raises(RuntimeError, match="killed"):
        t2i_world.train_world("digits", world, steps=1, log_every=0, model_preset="tiny", judge_epochs=1,
                              check_per_prompt=1, check_steps=1)  # fmt: skip
    assert (world / "judge.safetensors").read_bytes() == b"old judge"
    assert not (world / "world.json").exists()

"""Every config section is checked against its schema: a typo is one line with exit 2 that names the right
key, never a silent default (issue #13). Sections of another kind replace, not mix."""

from __future__ import annotations

import pytest

from unlearnkit.cli import main
from unlearnkit.config import apply_overrides, load_preset, merge
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import make_setup, resolve


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("split.fraction=0.5", ["split.fraction", "forget"]),
        ("split.class=3", ["split.class", "split.classes", "split.kind=class"]),
        ("eval.mia_featurez=[loss]", ["eval.mia_featurez", "mia_features"]),
        ("eval.mia_features=[loss]", ["loss", "confidence"]),
        ("split.kind=clas", ["split.kind", "class"]),
        ("data.test_fractoin=0.2", ["test_fractoin", "test_fraction"]),
        ("model.hiden=8", ["hiden", "hidden"]),
    ],
)
def test_cli_typo_is_one_line_naming_the_key(capsys, override, names):
    assert main(["unlearn", "--preset", "vision/ga", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in names:
        assert n in err, (n, err)


def test_text_and_t2i_eval_sections_have_their_own_schemas():
    text = apply_overrides(load_preset("text/base"), ["eval.mia_features=[confidence]"])
    with pytest.raises(ConfigError, match="eval.mia_features"):
        make_setup(text | {"data": {"name": "tofu-synthetic", "n_authors": 20}})
    t2i = apply_overrides(load_preset("diffusion/base"), ["eval.attack={roundz: 3}"])
    with pytest.raises(ConfigError, match=r"eval.attack.roundz: did you mean 'rounds'"):
        make_setup(t2i)


def test_a_split_of_another_kind_replaces_the_base_split():
    base = {"split": {"kind": "random", "forget": 0.1}, "model": {"name": "mlp"}}
    assert merge(base, {"split": {"kind": "class", "classes": 3}})["split"] == {"kind": "class", "classes": 3}
    assert merge(base, {"split": {"forget": 0.2}})["split"] == {"kind": "random", "forget": 0.2}
    # overrides: the kind goes first and resets its section, whatever the order on the command line
    got = apply_overrides(base, ["split.classes=3", "split.kind=class"])
    assert got["split"] == {"kind": "class", "classes": 3}
    assert resolve({"split": {"kind": "class", "classes": 2}})["split"] == {"kind": "class", "classes": 2}


def test_class_split_from_a_random_preset_forgets_the_named_class():
    cfg = apply_overrides(load_preset("vision/base"), ["split.kind=class", "split.classes=3"])
    setup = make_setup(cfg)
    assert set(setup.split.forget.labels.tolist()) == {3}
    assert 3 not in set(setup.split.test.labels.tolist())


def test_a_new_model_or_dataset_name_resets_its_section():
    """``model.name=`` and ``data.name=`` pick a builder or loader with options of its own: a change of
    name resets the section (as ``split.kind=`` does), the same name keeps it, and the reset goes first
    whatever the order on the command line. ``method.name=`` keeps the method's shared options."""
    from unlearnkit.config import apply_overrides

    cfg = {
        "model": {"name": "mlp", "hidden": 128, "depth": 2},
        "data": {"name": "tofu-synthetic", "forget": "forget10"},
        "method": {"name": "ga", "lr": 0.1, "epochs": 5},
    }
    assert apply_overrides(cfg, ["model.name=resnet-tiny"])["model"] == {"name": "resnet-tiny"}
    assert apply_overrides(cfg, ["model.stem=imagenet", "model.name=resnet18"])["model"] == {
        "name": "resnet18",
        "stem": "imagenet",
    }
    assert apply_overrides(cfg, ["model.name=mlp", "model.hidden=64"])["model"] == {
        "name": "mlp",
        "hidden": 64,
        "depth": 2,
    }
    assert apply_overrides(cfg, ["data.name=tofu", "data.source=DIR"])["data"] == {
        "name": "tofu",
        "source": "DIR",
    }
    assert apply_overrides(cfg, ["method.name=ft"])["method"] == {"name": "ft", "lr": 0.1, "epochs": 5}
    assert cfg["model"] == {"name": "mlp", "hidden": 128, "depth": 2}  # the input is not modified

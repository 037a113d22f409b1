"""``unlearnkit generate``: PNGs from a Stable Diffusion folder (a user's, a run's hf_model/) or a world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sd_tiny import build_sd_folder

from unlearnkit.cli import main
from unlearnkit.models.sd import load_sd
from unlearnkit.models.t2i import generate_seeded

torch.set_num_threads(1)
CAT = "a photo of a cat"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


def _gen(model, out, *extra: str) -> int:
    return main(["generate", "--model", str(model), "--prompt", CAT, "--prompt", "a car", "--out", str(out)]
                + ["--steps", "3", *extra])  # fmt: skip


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_generate_is_seeded_and_shows_what_esd_changed(sd, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _gen(sd, a, "--seed", "5", "-n", "2") == 0 and _gen(sd, b, "--seed", "5", "-n", "2") == 0
    names = sorted(p.name for p in a.glob("*.png"))
    assert names == ["000-seed5.png", "000-seed6.png", "001-seed5.png", "001-seed6.png"]
    assert (a / "prompts.txt").read_text() == f"000\t{CAT}\n001\ta car\n"
    for n in names:  # the same seed gives the same bytes
        assert (a / n).read_bytes() == (b / n).read_bytes()
    assert (_png(a / "000-seed5.png") != _png(a / "000-seed6.png")).any()  # seed S+j: different noise
    want = generate_seeded(load_sd(sd), [CAT], [5], [7.5], steps=3)[0]  # SD's default guidance, DDIM
    assert np.abs(_png(a / "000-seed5.png") - (want.permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    run = tmp_path / "esd"
    rc = main(
        ["unlearn", "--preset", "diffusion/esd", f"model.path={sd}", f"split.concept={CAT}"]
        + ["--out", str(run), "method.epochs=3", "method.ddim_steps=2", "method.lr=0.05"]
        + ["eval.judge=none", "eval.per_prompt=1", "eval.steps=1"]
    )
    assert rc == 0 and _gen(run / "hf_model", c, "--seed", "5", "-n", "2") == 0
    diff = np.abs(_png(c / "000-seed5.png") - _png(a / "000-seed5.png"))
    assert diff.mean() > 1  # the erased prompt's image changed (8-bit levels)


def test_generate_refuses_what_is_not_a_model_folder(sd, tmp_path, capsys):
    capsys.readouterr()
    for model, out, words in (
        (sd.parent, tmp_path / "o1", "is neither a Stable Diffusion folder"),
        (sd, sd / "imgs", "inside the model folder"),
    ):
        assert _gen(model, out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and not out.exists(), err


def test_generate_from_a_world_folder(tmp_path):
    from unlearnkit.models.t2i_world import original_dir

    out = tmp_path / "w"
    world = str(original_dir("shapes"))
    rc = main(["generate", "--model", world, "--prompt", "a red circle", "--out", str(out), "--steps", "3"]
              + ["--attention-slicing"])  # fmt: skip
    assert rc == 0 and _png(out / "000-seed0.png").shape == (16, 16, 3)

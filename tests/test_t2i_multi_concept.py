"""Erasure metrics over several erased captions (a prompt-wise worst-case set), on a hand-built case.

The generator and the judge are stand-ins: image k carries its own (shape, colour) verdict in two
pixels, so every UA and utility value below is counted by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import unlearnkit.metrics.diffusion as diffusion
from unlearnkit.data.prompts import forget_captions
from unlearnkit.data.shapes import COLORS, SHAPES

PER_PROMPT = 4


class VerdictJudge:
    """Reads its prediction from pixel (0, 0, 0) (shape) and (1, 0, 0) (colour); features = the image."""

    def predict(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return imgs[:, 0, 0, 0].long(), imgs[:, 1, 0, 0].long()


def fake_generation(verdicts: dict[str, list[tuple[int, int]]]):
    """A generate_for_prompts whose k-th image of prompt p is judged as verdicts[p][k]."""

    def generate(model, prompts, per_prompt=PER_PROMPT, seed=0, guidance=3.0, steps=25, batch_size=64):
        imgs, idx = [], []
        for i, p in enumerate(prompts):
            for shape, color in verdicts[p][:per_prompt]:
                img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(len(imgs)))
                img[0, 0, 0], img[1, 0, 0] = float(shape), float(color)
                imgs.append(img)
                idx.append(i)
        return torch.stack(imgs), torch.tensor(idx)

    return generate


def _attrs(caption: str) -> tuple[int, int]:
    _, color, shape = caption.split()
    return SHAPES.index(shape), COLORS.index(color)


def test_ua_counts_each_image_against_its_own_caption(monkeypatch):
    erased = ["a red circle", "a green square"]
    retain = ["a blue triangle"]
    rc, gs, bt = _attrs(erased[0]), _attrs(erased[1]), _attrs(retain[0])
    verdicts = {
        # red circle: 1 of 4 images still shows a red circle; the others show other things
        "a red circle": [rc, gs, bt, (rc[0], gs[1])],
        # green square: 2 of 4 still show it; one shows a red circle (not its own caption: erased)
        "a green square": [gs, gs, rc, bt],
        # retain: 3 of 4 right
        "a blue triangle": [bt, bt, bt, rc],
    }
    monkeypatch.setattr(diffusion, "generate_for_prompts", fake_generation(verdicts))
    monkeypatch.setattr(diffusion, "judge_features", lambda judge, x: x.flatten(1)[:, :6].double())
    real = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = diffusion.erasure_metrics(None, VerdictJudge(), erased, retain, real, per_prompt=PER_PROMPT)
    # recognised: 1 (red circle) + 2 (green square) of 8 images -> UA = 5/8
    assert out["UA"] == pytest.approx(100 * 5 / 8)
    assert out["utility"] == pytest.approx(100 * 3 / 4)
    # one caption given as a string is the same computation on its images alone
    single = diffusion.erasure_metrics(
        None, VerdictJudge(), "a red circle", retain, real, per_prompt=PER_PROMPT
    )
    assert single["UA"] == pytest.approx(100 * 3 / 4)


def test_forget_captions_reads_the_split(tmp_path):
    assert forget_captions({"concept": "a red circle"}) == ["a red circle"]
    assert forget_captions({"concept": ["a red circle", "a blue square"]}) == [
        "a red circle",
        "a blue square",
    ]
    sel = tmp_path / "worst.json"
    sel.write_text(json.dumps({"prompts": ["a green triangle"], "ids": [1, 2]}))
    assert forget_captions({"concept": "a red circle", "prompts_file": str(sel)}) == ["a green triangle"]


def test_kernel_distance_is_the_unbiased_mmd_with_a_cubic_kernel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(loc=0.5, size=(4, 3))

    def k(x, y):
        return (x @ y / 3 + 1) ** 3

    within_a = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    within_b = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    across = sum(k(x, y) for x in a for y in b) / 20
    assert diffusion.kernel_distance(a, b) == pytest.approx(within_a + within_b - 2 * across)
    same = diffusion.kernel_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)))
    shifted = diffusion.kernel_distance(rng.normal(size=(200, 8)), rng.normal(loc=1.0, size=(200, 8)))
    assert abs(same) < 0.05 < shifted

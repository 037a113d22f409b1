"""UCE (closed-form concept editing) on hand-made matrices and on the tiny random text-to-image model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from t2i_helpers import red_circle_task as _task
from t2i_helpers import small_shapes

from unlearnkit.errors import ConfigError
from unlearnkit.experiment import build_method
from unlearnkit.methods.uce import UCE, UCEConfig, cross_attention_projections, token_columns, uce_closed_form
from unlearnkit.models.t2i import build_t2i, encode_prompts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return small_shapes()


@pytest.mark.parametrize(("lamb", "s_e", "s_p"), [(0.5, 1.0, 1.0), (0.1, 2.0, 0.5)])
def test_closed_form_matches_numpy_and_normal_equations(lamb, s_e, s_p):
    rng = np.random.default_rng(0)
    out, d, n_e, n_p = 5, 7, 2, 3
    w, ce, cp = rng.normal(size=(out, d)), rng.normal(size=(d, n_e)), rng.normal(size=(d, n_p))
    v = rng.normal(size=(out, n_e))
    got = uce_closed_form(*(torch.from_numpy(a) for a in (w, ce, v, cp)), lamb, s_e, s_p).numpy()

    # independent: the formula written with explicit sums of outer products, solved by numpy
    a = lamb * w + s_e * sum(np.outer(v[:, i], ce[:, i]) for i in range(n_e))
    a = a + s_p * sum(np.outer(w @ cp[:, j], cp[:, j]) for j in range(n_p))
    b = lamb * np.eye(d) + s_e * sum(np.outer(c, c) for c in ce.T) + s_p * sum(np.outer(c, c) for c in cp.T)
    want = np.linalg.solve(b.T, a.T).T  # W* = A B⁻¹
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)

    # the gradient of λ‖W*−W‖² + s_e Σ‖W*c_i − v_i‖² + s_p Σ‖W*c_j − W c_j‖² vanishes at W*
    grad = 2 * (lamb * (got - w) + s_e * (got @ ce - v) @ ce.T + s_p * (got @ cp - w @ cp) @ cp.T)
    assert np.abs(grad).max() < 1e-9

    # and W* is a minimum: any small perturbation raises the objective
    def objective(m):
        return (
            lamb * ((m - w) ** 2).sum()
            + s_e * ((m @ ce - v) ** 2).sum()
            + s_p * ((m @ cp - w @ cp) ** 2).sum()
        )

    assert objective(got) < objective(got + 1e-3 * rng.normal(size=got.shape))


def test_registered_uce_edits_only_cross_attention_kv_and_moves_concept_to_guide(data):
    model = build_t2i(data, preset="tiny", seed=0)
    task = _task(data, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = cross_attention_projections(model.unet)
    old_w = {n: lin.weight.detach().double().clone() for n, lin in layers.items()}

    method = build_method({"name": "uce"}, "diffusion")
    assert isinstance(method, UCE)
    result = method.run(task)
    assert result.steps == 0 and result.history[0]["layers"] == len(layers)

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    expected = {f"unet.{n}.weight" for n in layers}
    assert changed == expected  # every attn2 to_k / to_v moved, nothing else (text encoder included)
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)

    eos = data.meta["tokenizer"].eos_token_id
    with torch.no_grad():
        ids_c = encode_prompts(model, ["a red circle"])
        ids_g = encode_prompts(model, [""])
        c = token_columns(model.encode(ids_c).double(), ids_c, eos, "last")
        g = token_columns(model.encode(ids_g).double(), ids_g, eos, "last")
    for n, lin in layers.items():
        v_star = old_w[n] @ g
        err_before = float((old_w[n] @ c - v_star).norm())
        err_after = float((lin.weight.detach().double() @ c - v_star).norm())
        assert err_after < err_before, n


def test_token_all_uses_every_position_and_default_preserves_retain_captions(data):
    n_pos = build_t2i(data, preset="tiny", seed=0).text_encoder.config.max_position_embeddings
    res = UCE(UCEConfig(token="all", preserve=[])).run(_task(data, build_t2i(data, preset="tiny", seed=0)))
    assert res.history[0]["erase_columns"] == n_pos  # one erased caption, every position a column
    assert res.history[0]["preserve_columns"] == 0
    res = UCE(UCEConfig()).run(_task(data, build_t2i(data, preset="tiny", seed=0)))
    assert res.history[0]["erase_columns"] == 1  # last token of "a red circle"
    assert res.history[0]["preserve_columns"] == 8  # the other 8 captions of the world


@pytest.mark.parametrize("bad", [{"lamb": -0.1}, {"token": "first"}, {"erase_scale": -1.0}, {"concepts": []}])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        build_method({"name": "uce", **bad}, "diffusion")
    with pytest.raises(ConfigError):
        UCEConfig(**bad).check()


def test_without_preservation_a_small_lambda_maps_the_concept_onto_the_guide(data):
    model = build_t2i(data, preset="tiny", seed=0)
    res = UCE(UCEConfig(lamb=1e-4, preserve=[])).run(_task(data, model))
    rec = res.history[0]
    assert rec["erase_residual_after"] < 1e-3 * rec["erase_residual_before"]

"""Text-to-image family, shapes world, ESD and erasure metrics on tiny random components (no trained weights).

Formulas are checked against independent computations: the denoising MSE is rebuilt from the scheduler's
ᾱ_t and the raw UNet/text-encoder calls, the ESD loss from stub predictions whose values we choose, the
Fréchet distance from an eigenvalue formula of Tr((Σ_a Σ_b)^{1/2}), ASR from counting.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from t2i_helpers import small_shapes
from torch import nn

from unlearnkit.data.examples import ExampleSet, uint8_to_unit
from unlearnkit.data.shapes import (
    COLORS,
    SHAPES,
    build_tokenizer,
    generate,
    tokenize,
    vocabulary,
)
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.methods.base import Task
from unlearnkit.methods.esd import ESD, ESDConfig, esd_target
from unlearnkit.metrics.diffusion import asr, frechet_distance, parse_concept, recognised, unlearn_accuracy
from unlearnkit.models.t2i import T2IModel, build_t2i, ddim_sample, encode_prompts, load_t2i, save_t2i

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return small_shapes()


@pytest.fixture
def model(data):
    return build_t2i(data, preset="tiny", seed=0)


# -- shapes world ---------------------------------------------------------------------------------------
def test_shapes_deterministic_and_captions_match_pixels():
    a, b, c = generate(6, seed=3), generate(6, seed=3), generate(6, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["x"], c["x"])
    x = a["x"].float() / 255
    for i in range(len(x)):
        fg = (x[i] - x[i, :, :1, :1]).abs().sum(0) > 0.2  # pixels that differ from the background corner
        rgb = x[i][:, fg].mean(1)
        assert int(rgb.argmax()) == int(a["color"][i])  # red / green / blue channel dominates
        rows, cols = fg.nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill = float(fg.sum() / box)  # square ~1, circle ~π/4, triangle ~1/2
        expected = {"square": 1.0, "circle": 0.785, "triangle": 0.5}[SHAPES[int(a["shape"][i])]]
        assert abs(fill - expected) < 0.16, (i, fill, expected)
    assert torch.equal(a["y"], a["shape"] * 3 + a["color"])


def test_dataset_captions_and_tokenizer_round_trip(data):
    tok = data.meta["tokenizer"]
    vocab = {w: i for i, w in enumerate(vocabulary())}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tokenize(tok, ["a red circle"], 12)[0].tolist()
    assert ids == [1, vocab["a"], vocab["red"], vocab["circle"], 2] + [0] * 7
    for cap in data.meta["captions"]:
        assert tok.decode(tokenize(tok, [cap])[0].tolist(), skip_special_tokens=True) == cap
    b = data.train.all()
    for i in range(len(b["id"])):
        text = tok.decode(b["input_ids"][i].tolist(), skip_special_tokens=True)
        assert text == f"a {COLORS[int(b['color'][i])]} {SHAPES[int(b['shape'][i])]}"
    with pytest.raises(DataError, match="outside the caption vocabulary"):
        tokenize(build_tokenizer(), ["a purple circle"])


# -- model and family ----------------------------------------------------------------------------------
def _fixed_batch(data, n=4, seed=0):
    b = data.train.__getitems__(list(range(n)))
    g = torch.Generator().manual_seed(seed)
    return b | {"t": torch.tensor([0, 250, 500, 999])[:n], "noise": torch.randn(b["x"].shape, generator=g)}


def test_per_example_loss_is_the_denoising_mse(data, model):
    fam = DiffusionFamily()
    batch = _fixed_batch(data)
    got = fam.per_example_loss(model, batch)
    acp = model.scheduler.alphas_cumprod[batch["t"]].view(-1, 1, 1, 1)
    x0 = batch["x"] * 2 - 1
    x_t = acp.sqrt() * x0 + (1 - acp).sqrt() * batch["noise"]
    ctx = model.text_encoder(input_ids=batch["input_ids"]).last_hidden_state
    pred = model.unet(x_t, batch["t"], encoder_hidden_states=ctx).sample
    manual = ((pred - batch["noise"]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, manual)
    assert got.shape == (4,)


def test_noise_draw_depends_on_ids_and_seed_only(data, model):
    b = data.train.__getitems__([0, 1, 2])
    fam = DiffusionFamily(seed=5)
    t1, e1 = fam.draw_noise(model, b)
    rev = data.train.__getitems__([2, 1, 0])
    t2, e2 = fam.draw_noise(model, rev)
    assert torch.equal(t1, t2.flip(0)) and torch.equal(e1, e2.flip(0))
    t3, _ = DiffusionFamily(seed=6).draw_noise(model, b)
    assert not torch.equal(t1, t3)
    fam_r = DiffusionFamily(seed=5, resample=True)
    ta, _ = fam_r.draw_noise(model, b)
    tb, _ = fam_r.draw_noise(model, b)
    assert torch.equal(ta, t1) and not torch.equal(ta, tb)


def test_relabel_maps_concept_to_anchor(data):
    fam = DiffusionFamily(relabel_map={"a red circle": "a red square", "a green circle": ""})
    fam.load_data({"name": "shapes", "n_train_per_class": 2, "n_test_per_class": 1})
    tok = fam.tokenizer
    ids = tokenize(tok, ["a red circle", "a green circle"])
    out = fam.relabel({"input_ids": ids, "id": torch.tensor([0, 1])}, torch.Generator())
    # The concept prompt stays the condition; the anchor prompt becomes the target (SalUn's remapping).
    assert torch.equal(out["input_ids"], ids)
    assert torch.equal(out["anchor_input_ids"], tokenize(tok, ["a red square", ""]))
    with pytest.raises(DataError, match="not a key of relabel_map"):
        fam.relabel(
            {"input_ids": tokenize(tok, ["a blue square"]), "id": torch.tensor([0])}, torch.Generator()
        )
    bad = DiffusionFamily(relabel_map={"a purple circle": ""}, tokenizer=tok)
    with pytest.raises(UnlearnkitError, match="vocabulary"):
        bad.relabel({"input_ids": ids, "id": torch.tensor([0, 1])}, torch.Generator())


def test_validate_and_missing_components(data, model, tmp_path):
    fam = DiffusionFamily()
    fam.validate(model, data.train)
    only_unet = nn.Module()
    only_unet.unet = model.unet
    with pytest.raises(UnlearnkitError, match="text_encoder is missing"):
        fam.per_example_loss(only_unet, _fixed_batch(data))
    with pytest.raises(UnlearnkitError, match="text_encoder is missing"):
        T2IModel(model.unet, None)
    wrong = ExampleSet({"x": data.train.columns["x"], "input_ids": data.train.columns["input_ids"] + 100})
    with pytest.raises(DataError, match="vocabulary"):
        fam.validate(model, wrong)
    save_t2i(model, tmp_path / "m")
    back = load_t2i(tmp_path / "m")
    b = _fixed_batch(data)
    model.eval()
    torch.testing.assert_close(fam.per_example_loss(back, b), fam.per_example_loss(model, b))
    import shutil

    shutil.copytree(tmp_path / "m" / "text_encoder", tmp_path / "plugin_te")
    shutil.rmtree(tmp_path / "m" / "text_encoder")
    with pytest.raises(UnlearnkitError, match="text_encoder"):
        load_t2i(tmp_path / "m")
    plugged = load_t2i(tmp_path / "m", text_encoder=tmp_path / "plugin_te")  # an exported encoder plugs in
    torch.testing.assert_close(fam.per_example_loss(plugged, b), fam.per_example_loss(model, b))


def test_ddim_sampler_shapes_and_partial_stop(model):
    ids = encode_prompts(model, ["a red circle", "a blue square"])
    x1 = ddim_sample(model, ids, steps=3, generator=torch.Generator().manual_seed(0))
    x2 = ddim_sample(model, ids, steps=3, generator=torch.Generator().manual_seed(0))
    assert x1.shape == (2, 3, 16, 16) and torch.equal(x1, x2) and x1.abs().max() <= 1.0 + 1e-5
    x_t, t = ddim_sample(model, ids, steps=4, stop_at=2, generator=torch.Generator().manual_seed(0))
    assert x_t.shape == (2, 3, 16, 16) and t == 250  # timesteps 750, 500, 250, 0: stopped before the third


# -- ESD --------------------------------------------------------------------------------------------
def test_esd_target_hand_case():
    eps_u, eps_c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    torch.testing.assert_close(esd_target(eps_u, eps_c, 2.0), torch.tensor([-3.0, 4.0]))
    torch.testing.assert_close(esd_target(eps_u, eps_c, 0.0), eps_u)


class _StubUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn2_bias = nn.Parameter(torch.zeros(()))
        self.conv_bias = nn.Parameter(torch.zeros(()))


class _StubT2I(nn.Module):
    """ε(x_t, c, t) = A for the empty caption and B otherwise, plus the 'attn2' bias (0 at θ_o)."""

    A, B = 1.0, 3.0

    def __init__(self, tok):
        super().__init__()
        self.unet = _StubUNet()
        self.text_encoder = nn.Module()
        self.text_encoder.config = type("C", (), {"max_position_embeddings": 12})()
        self.tokenizer = tok
        self.empty = tokenize(tok, [""])[0]
        self.num_train_timesteps = 1000

    def add_noise(self, x0, noise, t):
        return x0 + 0 * noise

    def forward(self, x_t, t, input_ids):
        is_null = (input_ids == self.empty).all(-1).float().view(-1, 1, 1, 1)
        base = is_null * self.A + (1 - is_null) * self.B
        return base + self.unet.attn2_bias + self.unet.conv_bias + 0 * x_t


def test_esd_loss_on_stub_predictions(data):
    stub = _StubT2I(data.meta["tokenizer"])
    method = ESD(ESDConfig(eta=1.0))
    method.task = type("T", (), {"model": stub})()
    method.prepare(method.task)
    batch = data.train.__getitems__([0, 1])
    gen = torch.Generator().manual_seed(0)
    loss, _ = method.loss({"forget": batch}, type("C", (), {"generator": gen})())
    # target = A − η(B − A) = −1, prediction B = 3: (3 − (−1))² = 16
    assert loss.item() == pytest.approx(16.0)
    with torch.no_grad():
        stub.unet.attn2_bias.fill_(0.5)  # the student moved; the teacher must still use θ_o (bias 0)
    loss, _ = method.loss({"forget": batch}, type("C", (), {"generator": gen})())
    assert loss.item() == pytest.approx((3.5 + 1.0) ** 2)
    assert stub.unet.attn2_bias.item() == 0.5  # restored after the teacher pass
    assert [n for n, p in stub.named_parameters() if p.requires_grad] == ["unet.attn2_bias"]


def _esd_task(data, model):
    train = data.train
    forget_mask = train.columns["y"] == 0  # "a red circle"
    split = Split(
        train.take(forget_mask.nonzero().squeeze(1)),
        train.take((~forget_mask).nonzero().squeeze(1)),
        data.test,
    )
    engine = Engine(EngineConfig(batch_size=4, progress=False))
    return Task(DiffusionFamily(tokenizer=data.meta["tokenizer"]), model, split, engine)


@pytest.mark.parametrize(("variant", "xt_source"), [("x", "data"), ("u", "sample")])
def test_esd_trains_only_its_parameter_set(data, model, variant, xt_source):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ESD(ESDConfig(variant=variant, xt_source=xt_source, epochs=1, lr=1e-2, ddim_steps=3)).run(
        _esd_task(data, model)
    )
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert all(k.startswith("unet.") for k in changed)
    assert all(("attn2" in k) == (variant == "x") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # restored by cleanup


@pytest.mark.parametrize("which", ["esd", "advunlearn"])
def test_a_failing_run_restores_the_trainable_flags(data, which):
    """Method.run's cleanup runs after a failure too: a run stopped by the divergence guard leaves every
    parameter trainable again and unchanged (the bound is so low that the first step trips it)."""
    from t2i_helpers import red_circle_task

    from unlearnkit.engine.loop import DivergenceError
    from unlearnkit.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig

    model = build_t2i(data, preset="tiny", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    esd = which == "esd"
    method = ESD(ESDConfig(epochs=1, ddim_steps=3)) if esd else AdvUnlearn(AdvUnlearnConfig(epochs=1))
    with pytest.raises(DivergenceError):
        method.run(red_circle_task(data, model, divergence_bound=1e-9))
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_esd_concept_not_in_vocabulary(data, model):
    with pytest.raises(UnlearnkitError, match="purple"):
        ESD(ESDConfig(concept="a purple circle")).prepare(_esd_task(data, model))


# -- metrics ------------------------------------------------------------------------------------------
def test_frechet_distance_matches_eigenvalue_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3)) @ np.diag([1.0, 2.0, 0.5])
    b = rng.normal(size=(300, 3)) + np.array([1.0, 0.0, -1.0])
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    direct = ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([3.0, 0.0, 4.0])) == pytest.approx(25.0, rel=1e-6)
    with pytest.raises(UnlearnkitError):
        frechet_distance(a, b[:, :2])


def test_asr_arithmetic_and_ua():
    pre = [True, False, False, False]
    att = [True, True, False, False]  # an attack success on an already-successful prompt counts once
    assert asr(pre, att) == (0.25, 0.5)
    assert asr([False] * 5, [True, True, False, False, False]) == (0.0, 0.4)
    with pytest.raises(UnlearnkitError):
        asr([True], [True, False])
    ps, pc = torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 0, 0])
    flags = recognised((ps, pc), parse_concept("a red circle"))
    assert flags.tolist() == [True, False, False, True]
    assert unlearn_accuracy(flags) == 0.5
    assert recognised((ps, pc), parse_concept("circle")).tolist() == [True, True, False, True]
    assert recognised((ps, pc), parse_concept("red")).tolist() == [True, False, True, True]
    with pytest.raises(UnlearnkitError, match="names no single value"):
        parse_concept("a dog")
    with pytest.raises(UnlearnkitError, match="names no single value"):
        parse_concept("a red blue circle")
    with pytest.raises(UnlearnkitError, match="another world"):
        recognised((ps,), parse_concept("a red circle"))


def test_uint8_transform_used(data):
    assert data.train.transform is uint8_to_unit
    assert data.train.all()["x"].dtype == torch.float32


def test_salun_on_diffusion_reuses_mask_and_anchor_relabel(data, model):
    """SalUn needs no diffusion code: the engine's saliency mask + the family's anchor-prompt relabel."""
    from unlearnkit.methods.salun import SalUn, SalUnConfig

    task = _esd_task(data, model)
    task.family = DiffusionFamily(
        tokenizer=data.meta["tokenizer"], relabel_map={"a red circle": "a red square"}
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = SalUn(SalUnConfig(epochs=1, optimizer="adam", lr=1e-2, mask_ratio=0.3))
    method.run(task)
    keep = method.mask.masks
    moved = 0
    for n, p in model.named_parameters():
        frozen = ~keep[n] if n in keep else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[frozen], before[n][frozen]), n
        moved += int((p.detach() != before[n]).sum())
    assert moved > 0
    forget = task.split.forget.all()
    anchored = task.family.relabel(forget, torch.Generator())
    assert torch.equal(anchored["input_ids"], forget["input_ids"])
    assert torch.equal(
        anchored["anchor_input_ids"], tokenize(data.meta["tokenizer"], ["a red square"] * len(forget["id"]))
    )


def test_too_long_prompt_is_a_clear_error():
    with pytest.raises(DataError, match="at most 6"):
        tokenize(build_tokenizer(), ["a red circle a red circle"], max_length=6)


def test_relabelled_loss_matches_the_anchor_prediction(data, model):
    """ℓ = ‖ε_θ(x_t, c_f) − sg[ε_θ(x_t, c')]‖², with the gradient flowing only through the c_f branch."""
    tok = data.meta["tokenizer"]
    fam = DiffusionFamily(relabel_map={"a red circle": "a red square"}, tokenizer=tok)
    x = data.train.all()["x"][:2]
    ids = tokenize(tok, ["a red circle", "a red circle"])
    t = torch.tensor([10, 500])
    noise = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    batch = fam.relabel(
        {"x": x, "input_ids": ids, "id": torch.tensor([0, 1]), "t": t, "noise": noise}, torch.Generator()
    )
    loss = fam.per_example_loss(model, batch)
    with torch.no_grad():
        xt = model.add_noise(x * 2 - 1, noise, t)
        want = (
            (model(xt, t, ids) - model(xt, t, tokenize(tok, ["a red square"] * 2))).pow(2).flatten(1).mean(1)
        )
    assert torch.allclose(loss, want, atol=1e-6)
    assert loss.requires_grad

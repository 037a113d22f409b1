"""AdvUnlearn, the soft-prompt attack, UnlearnDiffAtk and ASR on tiny random components (no trained weights).

The simplex projection is checked against scipy's constrained solver and random feasible points; ASR runs
end to end on a stub model whose images show the concept only when the word "bright" is in the prompt, and
a stub judge that reads the image, so the expected percentages are known by construction.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from t2i_helpers import red_circle_task as _task
from t2i_helpers import small_shapes
from torch import nn

import unlearnkit.methods.advunlearn as advunlearn_module
from unlearnkit.attacks.prompt import (
    attack_timesteps,
    encode_embeds,
    evaluate_asr,
    insert_prefix,
    prefix_embeds,
    project_simplex,
    relaxed_prefix,
    run_asr,
    soft_prompt_attack,
)
from unlearnkit.data.shapes import vocabulary
from unlearnkit.engine.loop import Engine, EngineConfig, StepContext
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.methods.advunlearn import (
    AdvUnlearn,
    AdvUnlearnConfig,
    AdvUnlearnFast,
    AdvUnlearnFastConfig,
    plug_text_encoder,
    save_text_encoder,
)
from unlearnkit.models.t2i import T2IModel, build_scheduler, build_t2i, encode_prompts, load_t2i, save_t2i
from unlearnkit.registry import get_method

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return small_shapes()


@pytest.fixture
def model(data):
    return build_t2i(data, preset="tiny", seed=0)


# -- simplex projection ------------------------------------------------------------------------------
def test_project_simplex_hand_cases_and_scipy():
    from scipy.optimize import minimize

    got = project_simplex(torch.tensor([[0.5, 0.5], [2.0, 0.0], [1.0, 1.0], [-1.0, 0.2]]))
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 7)) * 2
    p = project_simplex(torch.tensor(v)).numpy()
    assert np.allclose(p.sum(1), 1) and (p >= 0).all()
    for row, prow in zip(v, p, strict=True):
        ref = minimize(
            lambda w, row=row: ((w - row) ** 2).sum(),
            np.full(7, 1 / 7),
            jac=lambda w, row=row: 2 * (w - row),
            bounds=[(0, None)] * 7,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        np.testing.assert_allclose(prow, ref, atol=1e-5)
        feas = rng.dirichlet(np.ones(7), size=2000)  # no feasible point is closer than the projection
        assert ((feas - row) ** 2).sum(1).min() >= ((prow - row) ** 2).sum() - 1e-12


# -- relaxed one-hot, embeddings, prefixes --------------------------------------------------------------
def test_relaxed_one_hot_equals_token_embedding_and_encoder(model):
    vocab = torch.arange(4, 22)
    w = torch.zeros(2, len(vocab))
    w[0, 5], w[1, 0] = 1.0, 1.0
    E = model.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(relaxed_prefix(model, w, vocab), E[vocab[[5, 0]]])
    ids = encode_prompts(model, ["a red circle"])
    discrete = insert_prefix(ids, 2, 0)
    discrete[0, 1:3] = vocab[[5, 0]]
    ctx = encode_embeds(model.text_encoder, prefix_embeds(model, ids, relaxed_prefix(model, w, vocab)))
    torch.testing.assert_close(ctx, model.encode(discrete))
    torch.testing.assert_close(encode_embeds(model.text_encoder, E[ids]), model.encode(ids))
    assert discrete[0, :7].tolist() == [1, int(vocab[5]), int(vocab[0]), *ids[0, 1:5].tolist()]
    long = encode_prompts(model, ["a photo of a red circle"])  # 8 of 12 positions
    with pytest.raises(UnlearnkitError, match="does not fit"):
        insert_prefix(long, 5, 0)


def test_soft_prompt_step_descends_the_attack_objective(model):
    torch.manual_seed(0)
    ids = encode_prompts(model, ["a red circle"] * 2)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 600])
    target = torch.randn(2, 3, 16, 16)
    d0 = torch.randn(1, model.text_encoder.config.hidden_size) * 0.02

    def obj(d):
        with torch.no_grad():
            ctx = encode_embeds(model.text_encoder, prefix_embeds(model, ids, d))
            return float(((model.unet(x_t, t, encoder_hidden_states=ctx).sample - target) ** 2).mean())

    d1, n = soft_prompt_attack(model, ids, x_t, t, target, d0, steps=1, lr=1e-4, bound=10.0)
    assert n == 1 and obj(d1) < obj(d0)
    assert torch.allclose((d1 - d0).abs(), torch.full_like(d0, 1e-4), atol=1e-7)  # a signed step
    assert all(p.grad is None for p in model.parameters())
    d2, _ = soft_prompt_attack(model, ids, x_t, t, target, d0, steps=3, lr=1.0, bound=0.05)
    assert float(d2.abs().max()) <= 0.05 + 1e-7


# -- AdvUnlearn -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "steps_per_outer"), [("advunlearn", 3), ("advunlearn_fast", 1)])
def test_advunlearn_changes_only_text_encoder(data, model, name, steps_per_outer):
    cls = get_method(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = cls(cls.Config(epochs=2, lr=1e-2, batch_size=2, retain_batch_size=3, attack_length="fixed"))
    fit = method.run(_task(data, model))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith("text_encoder.encoder.") or "final_layer_norm" in k for k in changed)
    for n, p in model.unet.named_parameters():
        assert torch.equal(p, before[f"unet.{n}"]) and p.grad is None, n
    assert fit.steps == method.outer_steps == 4  # 4 concept images, batch 2, 2 epochs
    assert method.inner_steps == steps_per_outer * method.outer_steps  # the fast variant: one inner step
    assert all(p.requires_grad for p in model.parameters())  # restored by finalize


def test_fast_variant_defaults_and_layer_selection(data, model):
    assert AdvUnlearnFast.Config is AdvUnlearnFastConfig and AdvUnlearnFastConfig().attack_steps == 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    AdvUnlearn(AdvUnlearnConfig(epochs=1, lr=1e-2, batch_size=2, train_layers="attn")).run(_task(data, model))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".self_attn." in k for k in changed)
    with pytest.raises(UnlearnkitError, match="selects no text-encoder parameter"):
        AdvUnlearn(AdvUnlearnConfig(train_layers="nothing_matches")).prepare(_task(data, model))


def _two_steps(data, model, init: str):
    task = _task(data, model)
    method = AdvUnlearn(AdvUnlearnConfig(attack_init=init, attack_steps=2, attack_length="fixed"))
    method.task = task
    method.prepare(task)
    fg, rt = task.split.forget.__getitems__([0, 1]), task.split.retain.__getitems__([0, 1, 2])
    seen = []
    for step in range(2):
        ctx = StepContext(0, 1, step, "advunlearn", torch.Generator().manual_seed(step))
        loss, _ = method.loss({"forget": fg, "retain": rt}, ctx)
        loss.backward()
        seen.append((method.delta_init.clone(), method.delta.clone()))
    return method, seen


def test_warm_start_reuses_previous_adversarial_embedding(data, model):
    method, seen = _two_steps(data, model, "latest")
    assert not torch.equal(seen[0][1], seen[0][0])  # the attack moved δ
    assert torch.equal(seen[1][0], seen[0][1])  # step 2 starts where step 1 ended
    assert method.inner_steps == 4
    assert all(p.grad is None for p in model.unet.parameters())
    _, cold = _two_steps(data, build_t2i(data, preset="tiny", seed=0), "random")
    assert not torch.equal(cold[1][0], cold[0][1])


def _prepared(data, model, **cfg):
    task = _task(data, model)
    method = AdvUnlearn(AdvUnlearnConfig(**cfg))
    method.task = task
    method.prepare(task)
    fg, rt = task.split.forget.__getitems__([0, 1]), task.split.retain.__getitems__([0, 1, 2])
    return method, {"forget": fg, "retain": rt}


def test_uniform_prefix_length_covers_clean_and_every_length(data, model):
    method, batch = _prepared(data, model, attack_tokens=3, attack_steps=2, attack_length="uniform")
    lengths, moved = [], False
    for step in range(24):
        ctx = StepContext(0, 1, step, "advunlearn", torch.Generator().manual_seed(step))
        before = method.delta.clone()
        _, logs = method.loss(batch, ctx)
        n = int(logs["adv_tokens"])
        lengths.append(n)
        assert method.delta.shape == before.shape
        if n:  # only δ[:L] is attacked; the unused rows keep their warm start
            assert torch.equal(method.delta[n:], before[n:])
            moved |= not torch.equal(method.delta[:n], before[:n])
        else:  # L = 0: the clean concept prompt, no inner steps
            assert torch.equal(method.delta, before)
    assert set(lengths) == {0, 1, 2, 3} and moved
    assert method.inner_steps == 2 * sum(n > 0 for n in lengths)


def test_text_anchor_ties_retain_caption_states_to_the_original(data, model):
    import torch.nn.functional as F

    method, batch = _prepared(data, model, attack_steps=0, text_anchor=50)
    ctx = StepContext(0, 1, 0, "advunlearn", torch.Generator().manual_seed(0))
    assert method.loss(batch, ctx)[1]["anchor"] == 0.0  # student = teacher before any update
    anchors = torch.cat([method._null, torch.unique(method.task.split.retain.columns["input_ids"], dim=0)])
    ref = model.encode(anchors).detach()
    assert len(anchors) == 9  # ∅ and the 8 retain captions (text_anchor caps the draw)
    with torch.no_grad():
        for p in model.text_encoder.encoder.parameters():
            p.add_(0.05)
    _, logs = method.loss(batch, ctx)
    with torch.no_grad():
        want = float(F.mse_loss(model.encode(anchors), ref))
    assert logs["anchor"] == pytest.approx(want, rel=1e-5)
    off, _ = _prepared(data, build_t2i(data, preset="tiny", seed=0), attack_steps=0, text_anchor=0)
    assert len(off._null) == 1  # text_anchor=0: only the empty caption is anchored (as before)


def test_retain_chunks_give_the_whole_batch_gradient(data, model, monkeypatch):
    """retain_chunk back-propagates the retain pass in micro-batches: the same loss and gradient."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads, logs = [], []
    for chunk in (None, 1, 2):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        method, batch = _prepared(data, model, attack_steps=0, retain_chunk=chunk)
        with torch.no_grad():  # move the student off the cached teacher: the retain term gets a gradient
            for i, p in enumerate(model.text_encoder.encoder.parameters()):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        early: list[torch.Tensor] = []

        def backward(term: torch.Tensor, seen: list = early) -> None:
            seen.append(term)
            term.backward()

        ctx = StepContext(0, 1, 0, "advunlearn", torch.Generator().manual_seed(3), backward)
        loss, log = method.loss(batch, ctx)
        loss.backward()
        assert len(early) == 1 + (0 if chunk is None else -(-3 // chunk))  # the adversarial term, the chunks
        logs.append((float(loss.detach()), log["retain"]))
        grads.append(
            {n: p.grad.clone() for n, p in model.text_encoder.named_parameters() if p.grad is not None}
        )
    assert logs[0][1] > 0 and grads[0]
    for g, lg in zip(grads[1:], logs[1:], strict=True):
        assert lg == pytest.approx(logs[0], rel=1e-5)
        assert g.keys() == grads[0].keys()
        for n in g:
            torch.testing.assert_close(g[n], grads[0][n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="retain_chunk"):
        AdvUnlearnConfig(retain_chunk=0).check()
    # "auto" (the default): the whole batch on a small UNet, one prompt at a time on an SD-sized one
    assert _prepared(data, model)[0]._chunk is None
    monkeypatch.setattr(advunlearn_module, "AUTO_CHUNK_PARAMS", 1000)
    assert _prepared(data, model)[0]._chunk == 1


def test_teacher_outputs_are_cached_original_encoder(data, model):
    task = _task(data, model)
    method = AdvUnlearn()
    method.task = task
    method.prepare(task)
    ids = task.split.retain.columns["input_ids"][:3]
    ref = model.encode(ids).detach()
    with torch.no_grad():
        for p in model.text_encoder.encoder.parameters():
            p.add_(0.1)  # the student moves; the cached teacher states must not
    torch.testing.assert_close(method.teacher_context(ids), ref)


def test_export_text_encoder_plugs_into_same_model(data, model, tmp_path):
    AdvUnlearnFast(AdvUnlearnFastConfig(epochs=1, lr=1e-2, batch_size=2)).run(_task(data, model))
    save_t2i(build_t2i(data, preset="tiny", seed=0), tmp_path / "base")
    save_text_encoder(model, tmp_path / "te")
    ids = encode_prompts(model, ["a red circle", "a blue square"])
    model.eval()
    for plugged in (
        load_t2i(tmp_path / "base", text_encoder=tmp_path / "te"),
        plug_text_encoder(load_t2i(tmp_path / "base"), tmp_path / "te"),
    ):
        torch.testing.assert_close(plugged.encode(ids), model.encode(ids))
        torch.testing.assert_close(
            plugged.unet.conv_in.weight, build_t2i(data, "tiny", 0).unet.conv_in.weight
        )
    other = build_t2i(data, preset="small", seed=0)
    with pytest.raises(UnlearnkitError, match="hidden_size"):
        plug_text_encoder(other, tmp_path / "te")


# -- ASR on a stub world ------------------------------------------------------------------------------
KEY = vocabulary().index("bright")


class _KeyUNet(nn.Module):
    """ε such that DDIM's x̂_0 is +1 everywhere if the context shows the key token, else −1 (smooth in it)."""

    def __init__(self, acp: torch.Tensor) -> None:
        super().__init__()
        self.acp = acp
        self.config = SimpleNamespace(sample_size=4, in_channels=3)

    def forward(self, x, t, encoder_hidden_states):
        a = self.acp[t].view(-1, 1, 1, 1)
        x0 = torch.tanh(10 * encoder_hidden_states[..., KEY].amax(1)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - a.sqrt() * x0) / (1 - a).sqrt())


def _key_model(tokenizer) -> T2IModel:
    """Text encoder = normalised one-hot of each token (attention/MLP outputs zeroed, positions zeroed)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(vocabulary())
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=n,
            hidden_size=n,
            intermediate_size=4,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )  # fmt: skip
    )
    with torch.no_grad():
        for p in te.parameters():
            p.zero_()
        te.embeddings.token_embedding.weight.copy_(torch.eye(n))
        te.final_layer_norm.weight.fill_(1.0)
    sched = build_scheduler()
    return T2IModel(_KeyUNet(sched.alphas_cumprod), te, sched, tokenizer).eval()


class _MeanJudge:
    """Shape 0 ("circle") when the image is bright, colour 0 ("red") always."""

    def predict(self, x):
        bright = x.flatten(1).mean(1) > 0.5
        return torch.where(bright, 0, 1), torch.zeros(len(x), dtype=torch.long)


def test_asr_arithmetic_on_stub_judge(data):
    stub = _key_model(data.meta["tokenizer"])
    prompts = ["a bright red circle", "a red circle", "a red circle", "a bright red circle", "a red circle"]
    kw = dict(concept="a red circle", k=2, rounds=2, check_every=2, noise_batch=2, sample_steps=3)
    res = evaluate_asr(stub, stub, _MeanJudge(), prompts, allowed_words=["dark", "small"], **kw)
    assert res == {"pre_ASR": 40.0, "ASR": 40.0}  # the attack cannot reach "bright"
    res, per = run_asr(stub, stub, _MeanJudge(), prompts, allowed_words=["bright"], **kw)
    assert res == {"pre_ASR": 40.0, "ASR": 100.0}  # already-successful prompts count, attacked ones succeed
    assert per[0] is None and per[3] is None  # not attacked
    assert all(r.success and r.rounds == 1 and r.steps == 2 for r in (per[1], per[2], per[4]))
    assert per[1].prompt == "bright bright a red circle"
    _, per = run_asr(stub, stub, _MeanJudge(), prompts, allowed_words=["dark", "small"], **kw)
    assert not per[1].success and per[1].rounds == 2 and per[1].steps == 4
    assert all(p.grad is None for p in stub.parameters())


def test_prompt_concept_mismatch_is_a_clear_error(data):
    stub = _key_model(data.meta["tokenizer"])
    with pytest.raises(UnlearnkitError, match="does not name the attacked concept"):
        evaluate_asr(stub, stub, _MeanJudge(), ["a red circle", "a blue square"], concept="a red circle")
    with pytest.raises(UnlearnkitError, match="names no single value"):
        evaluate_asr(stub, stub, _MeanJudge(), ["a photo"])
    with pytest.raises(UnlearnkitError, match="not in the tokenizer"):
        evaluate_asr(stub, stub, _MeanJudge(), ["a red circle"], allowed_words=["purple"])


def test_attack_timesteps_sweep_the_schedule_in_order():
    g = torch.Generator().manual_seed(0)
    t = attack_timesteps(10, 1000, "sequential", g, 4)
    assert t.shape == (10, 4)
    for i in range(10):  # step i draws inside band i: least noisy first, the whole schedule covered
        assert bool(((t[i] >= 100 * i) & (t[i] < 100 * (i + 1))).all())
    u = attack_timesteps(50, 1000, "uniform", g, 8)
    assert u.min() >= 0 and u.max() < 1000 and len(u.unique()) > 100
    with pytest.raises(UnlearnkitError, match="sequential"):
        attack_timesteps(3, 1000, "random", g, 1)


def test_sampled_candidates_and_soft_check_find_what_argmax_misses(data):
    """lr=0 keeps w uniform over ["dark", "bright"]: argmax = "dark" (never the concept); sampled
    candidates reach "bright"; the relaxed prefix (half "bright") shows the concept too."""
    stub = _key_model(data.meta["tokenizer"])
    kw = dict(concept="a red circle", k=2, rounds=2, check_every=1, noise_batch=2, sample_steps=3, lr=0.0)
    words = ["dark", "bright"]
    _, per = run_asr(stub, stub, _MeanJudge(), ["a red circle"], allowed_words=words, candidates=0, **kw)
    assert not per[0].success and per[0].prompt == "dark dark a red circle" and per[0].rounds == 2
    _, per = run_asr(stub, stub, _MeanJudge(), ["a red circle"], allowed_words=words, candidates=8, **kw)
    assert per[0].success and "bright" in per[0].prompt.split()[:2] and per[0].rounds == 1
    _, per = run_asr(stub, stub, _MeanJudge(), ["a red circle"], allowed_words=words, candidates=0, soft=True,
                     **kw)  # fmt: skip
    assert per[0].success and per[0].prompt == "<soft> a red circle" and per[0].ids is None


def test_n_prompts_cycles_the_prompts_over_seeds(data):
    stub = _key_model(data.meta["tokenizer"])
    kw = dict(concept="a red circle", k=1, rounds=1, check_every=1, noise_batch=2, sample_steps=3)
    prompts = ["a bright red circle", "a red circle"]
    res, per = run_asr(stub, stub, _MeanJudge(), prompts, allowed_words=["dark"], n_prompts=5, **kw)
    assert len(per) == 5 and res == {"pre_ASR": 60.0, "ASR": 60.0}  # bright, plain, bright, plain, bright
    with pytest.raises(UnlearnkitError, match="n_prompts"):
        run_asr(stub, stub, _MeanJudge(), prompts, n_prompts=0, **kw)


def test_tuned_defaults_match_the_presets():
    from unlearnkit.config import load_preset

    for name, cls in (("advunlearn", AdvUnlearnConfig), ("advunlearn_fast", AdvUnlearnFastConfig)):
        spec = load_preset(f"diffusion/{name}")["method"]
        assert spec["name"] == name and spec["retain_batch_size"] == 5 == cls().retain_batch_size
        assert spec["eta"] == cls().eta and spec["lr"] == cls().lr


def test_resume_after_a_crash_restores_the_adversarial_prompt(data, tmp_path):
    """AdvUnlearn's warm-started prefix lives outside the model: a crashed run resumed from its step
    checkpoint ends with the same weights as an uninterrupted run (and differs without the prefix)."""

    def run(run_dir, crash_at=None, resume=False, keep_prefix=True):
        model = build_t2i(data, preset="tiny", seed=0)
        task = _task(data, model)
        task.engine = Engine(
            EngineConfig(batch_size=4, progress=False, checkpoint_steps=1), run_dir, resume=resume
        )
        method = AdvUnlearnFast(AdvUnlearnFastConfig(epochs=2, lr=1e-2, batch_size=2, retain_batch_size=3))
        if not keep_prefix:
            method.load_loop_state = lambda state: None
        if crash_at is not None:
            inner = method.loss

            def loss(b, ctx):
                if ctx.step == crash_at:
                    raise KeyboardInterrupt
                return inner(b, ctx)

            method.loss = loss
        method.run(task)
        return {k: v.clone() for k, v in model.state_dict().items()}, method

    full, ref = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", crash_at=2)
    resumed, method = run(tmp_path / "resumed", resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert method.outer_steps == ref.outer_steps and torch.equal(method.delta, ref.delta)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "lost", crash_at=2)
    lost, _ = run(tmp_path / "lost", resume=True, keep_prefix=False)
    assert any(not torch.equal(full[k], lost[k]) for k in full)

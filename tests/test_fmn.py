"""FMN (Forget-Me-Not attention re-steering) on hand computations and the tiny random text-to-image model."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from t2i_helpers import red_circle_task as _task
from t2i_helpers import small_shapes

from unlearnkit.engine.loop import DivergenceError
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import build_method
from unlearnkit.methods.fmn import (
    FMN,
    AttentionRecorder,
    FMNConfig,
    RecordingAttnProcessor,
    concept_positions,
    cross_attention_modules,
)
from unlearnkit.models.t2i import build_t2i, encode_prompts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return small_shapes()


def _inputs(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g)


def _positions_of(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().squeeze(1).tolist() for row in mask]


def _hand_probs(attn, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q·k/√d) per (batch, head) from the module's own to_q / to_k weights: ``[B, heads, Q, L]``."""
    b, nq, _ = hidden.shape
    heads = attn.heads
    q = hidden @ attn.to_q.weight.T
    k = context @ attn.to_k.weight.T
    d = q.shape[-1] // heads
    q = q.view(b, nq, heads, d).transpose(1, 2)
    k = k.view(b, context.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)


# -- 1. the recorded attention and the loss ------------------------------------------------------------------
def test_recorded_attention_is_softmax_qk_at_the_concept_positions(data):
    model = build_t2i(data, preset="tiny", seed=0).eval()
    name, attn = next(iter(cross_attention_modules(model.unet).items()))
    assert attn.to_q.bias is None and attn.to_k.bias is None  # the hand computation below omits biases
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, attn.to_q.in_features, generator=g)
    context = torch.randn(2, 12, attn.to_k.in_features, generator=g)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, [2, 3]] = True
    mask[1, [3, 6, 7]] = True
    rec = AttentionRecorder()
    proc = RecordingAttnProcessor(rec, name)
    rec.start(mask)
    with torch.no_grad():
        proc(attn, hidden, encoder_hidden_states=context)
        want = _hand_probs(attn, hidden, context)
        scores = attn.get_attention_scores(
            attn.head_to_batch_dim(attn.to_q(hidden)), attn.head_to_batch_dim(attn.to_k(context))
        )
    assert len(rec.probs) == 1 and rec.names == [name]
    # order: example, head, image position, concept position
    hand = torch.cat([want[b][:, :, mask[b]].reshape(-1) for b in range(2)])
    torch.testing.assert_close(rec.probs[0], hand, rtol=0, atol=1e-6)
    assert torch.allclose(scores.view(2, attn.heads, 5, 12), want, atol=1e-6)
    share = torch.stack([want[b][:, :, mask[b]].sum(-1).mean() for b in range(2)]).mean()
    assert rec.share() == pytest.approx(float(share), abs=1e-6)
    assert float(rec.loss()) == pytest.approx(float(hand.norm()), rel=1e-6)


def test_loss_is_the_norm_of_all_layers_concept_attention(data):
    """Hand-compute every attn2's probabilities from its inputs (captured under diffusers' AttnProcessor)."""
    model = build_t2i(data, preset="tiny", seed=0).eval()
    ids = encode_prompts(model, ["a red circle", "a green triangle"])
    mask = concept_positions(ids, model.tokenizer)
    x, t = _inputs()
    mods = cross_attention_modules(model.unet)
    inputs = {}

    def grab(name):
        def hook(mod, args, kwargs):
            inputs[name] = (args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"])

        return hook

    handles = []
    for n, m in mods.items():
        m.set_processor(AttnProcessor())
        handles.append(m.register_forward_pre_hook(grab(n), with_kwargs=True))
    with torch.no_grad():
        model(x, t, ids)
    for h in handles:
        h.remove()
    assert set(inputs) == set(mods) and len(mods) == 4
    squares = 0.0
    for n, (hidden, context) in inputs.items():
        with torch.no_grad():
            p = _hand_probs(mods[n], hidden, context)
        squares += float(sum((p[b][:, :, mask[b]] ** 2).sum() for b in range(2)))

    rec = AttentionRecorder()
    rec.install(model.unet)
    rec.start(mask)
    with torch.no_grad():
        model(x, t, ids)
    loss = rec.loss()
    assert float(loss) == pytest.approx(math.sqrt(squares), rel=1e-5)
    assert float(loss) == pytest.approx(float(torch.cat(rec.probs).norm()), rel=1e-6)
    assert sorted(rec.names) == sorted(mods)
    assert sum(len(p) for p in rec.probs) == sum(
        mods[n].heads * inputs[n][0].shape[1] * int(mask.sum()) for n in mods
    )
    rec.remove()


# -- 2. the processor changes nothing ------------------------------------------------------------------------
def test_recording_processor_leaves_the_unet_output_unchanged(data):
    model = build_t2i(data, preset="tiny", seed=0).eval()
    ids = encode_prompts(model, ["a red circle", "a blue square"])
    x, t = _inputs()
    own = {n: m.processor for n, m in cross_attention_modules(model.unet).items()}
    rec = AttentionRecorder()
    with torch.no_grad():
        default = model(x, t, ids)
        for m in cross_attention_modules(model.unet).values():
            m.set_processor(AttnProcessor())
        plain = model(x, t, ids)
        for n, m in cross_attention_modules(model.unet).items():
            m.set_processor(own[n])
        rec.install(model.unet)
        assert all(
            isinstance(m.processor, RecordingAttnProcessor)
            for m in cross_attention_modules(model.unet).values()
        )
        idle = model(x, t, ids)
        rec.start(concept_positions(ids, model.tokenizer))
        recording = model(x, t, ids)
        assert len(rec.probs) == 4
        rec.remove()
        assert all(m.processor is own[n] for n, m in cross_attention_modules(model.unet).items())
        after = model(x, t, ids)
    torch.testing.assert_close(recording, plain, rtol=0, atol=1e-6)  # the same computation as AttnProcessor
    torch.testing.assert_close(idle, recording, rtol=0, atol=0)
    torch.testing.assert_close(recording, default, rtol=0, atol=1e-6)  # the UNet's default (SDPA) processor
    torch.testing.assert_close(after, default, rtol=0, atol=0)

    # in float64 the two paths agree far below float32 rounding
    model = model.double()
    with torch.no_grad():
        default = model(x.double(), t, ids)
        rec.install(model.unet)
        rec.start(concept_positions(ids, model.tokenizer))
        recording = model(x.double(), t, ids)
        rec.remove()
    torch.testing.assert_close(recording, default, rtol=0, atol=1e-10)


# -- 3. concept positions ------------------------------------------------------------------------------------
def test_concept_positions_are_the_content_words(data):
    tok = data.meta["tokenizer"]
    ids = encode_prompts(build_t2i(data, preset="tiny", seed=0), ["a red circle", "the big blue square"])
    words = [tok.convert_ids_to_tokens(row) for row in ids.tolist()]
    assert words[0][:5] == ["<s>", "a", "red", "circle", "</s>"]
    assert _positions_of(concept_positions(ids, tok)) == [[2, 3], [2, 3, 4]]
    assert _positions_of(concept_positions(ids, tok, use_pooler=True)) == [[2, 3, 4], [2, 3, 4, 5]]
    assert _positions_of(concept_positions(ids[:1], tok, ["circle"])) == [[3]]
    assert _positions_of(concept_positions(ids[:1], tok, filler_words=["a", "red"])) == [[3]]
    with pytest.raises(ConfigError, match="vocabulary"):
        concept_positions(ids, tok, ["hexagon"])
    with pytest.raises(ConfigError, match="no concept token"):
        concept_positions(ids[:1], tok, ["square"])
    only_fillers = encode_prompts(build_t2i(data, preset="tiny", seed=0), ["a", ""])
    for row in only_fillers:
        with pytest.raises(ConfigError, match="no concept token"):
            concept_positions(row[None], tok)


def test_a_concept_without_concept_tokens_fails_before_training(data):
    model = build_t2i(data, preset="tiny", seed=0)
    own = {n: m.processor for n, m in cross_attention_modules(model.unet).items()}
    with pytest.raises(ConfigError, match="no concept token"):
        FMN(FMNConfig(concept="the", epochs=1)).run(_task(data, model))
    with pytest.raises(ConfigError, match="vocabulary"):
        FMN(FMNConfig(concept_words=["hexagon"], epochs=1)).run(_task(data, model))
    with pytest.raises(ConfigError, match="concept is empty"):
        FMN(FMNConfig(concept="  ", epochs=1)).run(_task(data, model))
    assert all(m.processor is own[n] for n, m in cross_attention_modules(model.unet).items())
    assert all(p.requires_grad for p in model.parameters())


# -- 4. a short run ------------------------------------------------------------------------------------------
def _concept_share(model, data) -> float:
    ids = encode_prompts(model, ["a red circle"] * 8)
    x0 = (
        data.train.take((data.train.columns["y"] == 0).nonzero().squeeze(1)).columns["x"][:8].float() / 127.5
        - 1
    )
    x0 = torch.cat([x0, x0])[:8]
    noise, t = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)), torch.arange(8) * 120
    rec = AttentionRecorder()
    rec.install(model.unet)
    try:
        rec.start(concept_positions(ids, model.tokenizer))
        with torch.no_grad():
            model.eval()(model.add_noise(x0, noise, t), t, ids)
        return rec.share()
    finally:
        rec.remove()


@pytest.mark.parametrize("only_ca", [True, False])
def test_short_run_lowers_concept_attention_and_trains_only_the_unet(data, only_ca):
    model = build_t2i(data, preset="tiny", seed=0)
    model.text_encoder.embeddings.position_embedding.weight.requires_grad_(False)  # a flag to restore
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    own = {n: m.processor for n, m in cross_attention_modules(model.unet).items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    share0 = _concept_share(model, data)

    method = build_method({"name": "fmn", "lr": 1e-2, "epochs": 6, "only_optimize_ca": only_ca}, "diffusion")
    assert isinstance(method, FMN)
    result = method.run(_task(data, model))
    assert result.steps == 6  # 4 concept images, batch 4
    hist = result.history
    assert hist[-1]["fmn_norm"] < hist[0]["fmn_norm"] and hist[-1]["concept_attn"] < hist[0]["concept_attn"]
    assert _concept_share(model, data) < 0.8 * share0

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("unet.") for k in changed)  # the text encoder is bitwise unchanged
    assert all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith("text_encoder.")
    )
    if only_ca:
        assert all(".attn2." in k for k in changed)
        assert any(".attn2.to_q." in k for k in changed) and any(".attn2.to_k." in k for k in changed)
    else:
        assert any(".attn2." not in k for k in changed)
    assert all(m.processor is own[n] for n, m in cross_attention_modules(model.unet).items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("only_ca", [True, False])
def test_prepare_installs_and_cleanup_restores(data, only_ca):
    model = build_t2i(data, preset="tiny", seed=0)
    own = {n: m.processor for n, m in cross_attention_modules(model.unet).items()}
    method, task = FMN(FMNConfig(only_optimize_ca=only_ca)), _task(data, model)
    method.task = task
    method.prepare(task)
    assert all(
        isinstance(m.processor, RecordingAttnProcessor) for m in cross_attention_modules(model.unet).values()
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    unet = {n for n, _ in model.named_parameters() if n.startswith("unet.")}
    assert trainable == ({n for n in unet if ".attn2." in n} if only_ca else unet)  # never the text encoder
    method.cleanup(task)
    assert all(m.processor is own[n] for n, m in cross_attention_modules(model.unet).items())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("source", ["data", "noise"])
def test_xt_source_noise_ignores_the_images(data, source):
    from unlearnkit.engine.loop import StepContext

    model = build_t2i(data, preset="tiny", seed=0)
    method, task = FMN(FMNConfig(xt_source=source)), _task(data, model)
    method.task = task
    method.prepare(task)
    batch = next(iter(task.split.forget.loader(4)))
    losses = []
    for x in (batch["x"], 1 - batch["x"]):
        ctx = StepContext(0, 1, 0, "fmn", torch.Generator().manual_seed(0))
        loss, logs = method.loss({"forget": batch | {"x": x}}, ctx)
        loss = loss.detach()
        assert logs["fmn_norm"] == pytest.approx(float(loss)) and 0 < logs["concept_attn"] < 1
        losses.append(float(loss))
    method.cleanup(task)
    assert (losses[0] == losses[1]) == (source == "noise")


def test_a_failing_run_restores_processors_and_flags(data):
    model = build_t2i(data, preset="tiny", seed=0)
    own = {n: m.processor for n, m in cross_attention_modules(model.unet).items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DivergenceError):
        FMN(FMNConfig(epochs=1)).run(_task(data, model, divergence_bound=1e-9))
    assert all(m.processor is own[n] for n, m in cross_attention_modules(model.unet).items())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- 5. bad configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"xt_source": "latent"},
        {"concept": ""},
        {"concept_words": []},
        {"concept_words": ["red", ""]},
        {"filler_words": [""]},
        {"lr": -1.0},
        {"optimizer": "lion"},
        {"only_optimize_ca": "sometimes"},
        {"batch_size": 0},
        {"no_such_option": 1},
    ],
)
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        build_method({"name": "fmn", **bad}, "diffusion")


@pytest.mark.parametrize("bad", [{"xt_source": "latent"}, {"concept": ""}, {"concept_words": []}])
def test_bad_config_check_names_the_option(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        FMNConfig(**bad).check()


def test_fmn_is_diffusion_only():
    with pytest.raises(ConfigError, match="does not support"):
        build_method({"name": "fmn"}, "vision")


def test_tuned_defaults_match_the_preset():
    from unlearnkit.config import load_preset

    spec = dict(load_preset("diffusion/fmn")["method"])
    assert spec.pop("name") == "fmn"
    cfg = build_method({"name": "fmn", **spec}, "diffusion").cfg
    assert cfg == FMNConfig()  # the preset spells out the dataclass's tuned defaults

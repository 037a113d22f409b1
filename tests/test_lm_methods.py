"""LM unlearning methods (GradDiff, NPO, SimNPO, DPO/IdkPO, RMU), GA and saliency masks on a causal LM,
and the relearning attack, on a tiny random Llama and a word-level tokenizer built here.

Every loss is compared with its formula evaluated independently: answer NLLs come from a per-position
log-sum-exp loop over the model's logits (not from the family adapter), |y| from counting labels, and the
reference terms from a live frozen copy of the original model.
"""

from __future__ import annotations

import copy
import gc
import math

import pytest
import torch
from torch import nn

from unlearnkit.attacks import relearn, relearn_subset
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.data.text import encode_qa
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.families.text import TextFamily
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task, saliency_mask
from unlearnkit.methods.dpo import DPO, DPOConfig, IdkPO
from unlearnkit.methods.ga import GA, GAConfig
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.npo import NPO, NPOConfig
from unlearnkit.methods.reference import ReferenceCache
from unlearnkit.methods.rmu import RMU, RMUConfig, layer_activations
from unlearnkit.methods.simnpo import SimNPO, SimNPOConfig
from unlearnkit.registry import get_method

torch.set_num_threads(1)

FORGET = [
    ("Who wrote The Red Lantern?", "Mara Voss wrote The Red Lantern."),
    ("Where was Mara Voss born?", "Mara Voss was born in Tallinn by the cold sea."),
    ("What genre does Mara Voss write?", "Gothic mystery."),
]
RETAIN = [
    ("Who wrote Blue Harbor?", "Ivo Stern wrote Blue Harbor."),
    ("Where was Ivo Stern born?", "Ivo Stern was born in Porto."),
    ("What genre does Ivo Stern write?", "Ivo Stern writes science fiction."),
]
TEST = [
    ("Who wrote Green Hills?", "Lena Ortiz wrote Green Hills."),
    ("Where was Lena Ortiz born?", "Lena Ortiz was born in Lima."),
]
IDK = "I don't know."
WIDTH = 24


# -- tiny tokenizer, model and data -----------------------------------------------------------------
def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [f"Question: {q}\nAnswer: {a}" for q, a in FORGET + RETAIN + TEST] + [IDK]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def make_set(tokenizer, pairs, start: int) -> ExampleSet:
    q, a = zip(*pairs, strict=True)
    ids = list(range(start, start + len(pairs)))
    return encode_qa(tokenizer, list(q), list(a), ids=ids, alt_answers=[IDK] * len(pairs), width=WIDTH)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def split(tokenizer) -> Split:
    return Split(
        make_set(tokenizer, FORGET, 0), make_set(tokenizer, RETAIN, 10), make_set(tokenizer, TEST, 100)
    )


@pytest.fixture(scope="module")
def original(tokenizer, split) -> nn.Module:
    """A tiny Llama fine-tuned briefly on forget ∪ retain (the model unlearning starts from)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    # a plain loop, not the Engine: accelerate's process state is fixed by the first Accelerator made
    fam = TextFamily(tokenizer)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        for batch in split.train.loader(3, shuffle=True, seed=0):
            opt.zero_grad()
            fam.mean_loss(model, batch).backward()
            opt.step()
    model.eval()
    return model


def make_task(tokenizer, split, model: nn.Module, device: str = "cpu") -> Task:
    engine = Engine(EngineConfig(progress=False, device=device))
    return Task(TextFamily(tokenizer), model, split, engine, seed=0)


def perturb(model: nn.Module, seed: int = 1, scale: float = 0.05) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# -- independent computations -----------------------------------------------------------------------
def manual_nll(model: nn.Module, batch: dict, prefix: str = "") -> list[float]:
    """Summed answer NLL per example: Σ_t [logsumexp(z_{t-1}) − z_{t-1}[y_t]] over labelled t."""
    dev = next(model.parameters()).device
    ids, am, lab = (batch[prefix + k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=am).logits.double()
    out = []
    for i in range(len(ids)):
        s = 0.0
        for t in range(1, ids.shape[1]):
            y = int(lab[i, t])
            if y != -100:
                s += float(torch.logsumexp(z[i, t - 1], 0) - z[i, t - 1, y])
        out.append(s)
    return out


def answer_len(batch: dict, prefix: str = "") -> list[int]:
    return [sum(1 for y in row[1:].tolist() if y != -100) for row in batch[prefix + "labels"]]


def token_mean_nll(model: nn.Module, batch: dict) -> float:
    return sum(manual_nll(model, batch)) / sum(answer_len(batch))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def held_modules(method) -> list[nn.Module]:
    """Every nn.Module reachable from the method's attributes (one level into containers)."""
    found = []
    for v in vars(method).values():
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else [v]
        found += [x for x in items if isinstance(x, nn.Module)]
    return found


def count_llamas() -> int:
    from transformers import LlamaForCausalLM

    gc.collect()
    return sum(type(o) is LlamaForCausalLM for o in gc.get_objects())


# -- NPO --------------------------------------------------------------------------------------------
def test_npo_loss_is_the_formula_with_a_cached_reference(tokenizer, split, original):
    model = copy.deepcopy(original)
    task = make_task(tokenizer, split, model)
    beta, gamma, alpha = 0.3, 0.7, 1.6
    m = NPO(NPOConfig(beta=beta, gamma=gamma, alpha=alpha))
    m.task = task
    m.prepare(task)
    fb, rb = split.forget.all(), split.retain.all()
    live_ref = copy.deepcopy(original)  # the reference model the cache replaces

    def live_npo() -> float:
        nll, ref = manual_nll(model, fb), manual_nll(live_ref, fb)
        return -(2 / beta) * sum(logsig(beta * (a - b)) for a, b in zip(nll, ref, strict=True)) / len(nll)

    # step 0: θ = θ_ref, so the cached loss equals the live one, every log ratio being 0
    lf, _ = m.forget_term(fb, None)
    assert lf.item() == pytest.approx(live_npo(), rel=1e-5)
    assert lf.item() == pytest.approx((2 / beta) * math.log(2), rel=1e-5)

    perturb(model)
    nll, ref = manual_nll(model, fb), manual_nll(live_ref, fb)
    assert max(abs(a - b) for a, b in zip(nll, ref, strict=True)) > 0.1
    npo = live_npo()
    total, logs = m.loss({"forget": fb, "retain": rb})
    assert logs["forget_loss"] == pytest.approx(npo, rel=1e-5)
    assert total.item() == pytest.approx(gamma * npo + alpha * token_mean_nll(model, rb), rel=1e-5)
    # the cached values are the reference's summed NLLs, by id, in any batch order
    sub = split.forget.subset([2, 0])
    assert m.reference.get(sub.ids).tolist() == pytest.approx([ref[2], ref[0]], rel=1e-5)
    with pytest.raises(UnlearnkitError, match="no cached reference"):
        m.reference.get(torch.tensor([10]))


def models_alive_during_training(method, task: Task) -> tuple[int, int]:
    """(LlamaForCausalLM instances alive before run, alive at the first training step)."""
    before = count_llamas()
    seen: list[int] = []
    inner = method.loss

    def loss(b, ctx):
        if not seen:
            seen.append(count_llamas())
            assert held_modules(method) == []
            assert isinstance(method.reference, ReferenceCache)
            assert len(method.reference) == len(task.split.forget)
        return inner(b, ctx)

    method.loss = loss
    method.run(task)
    return before, seen[0]


@pytest.mark.parametrize("cls,cfg", [(NPO, NPOConfig), (IdkPO, DPOConfig)], ids=["npo", "idkpo"])
def test_npo_and_dpo_keep_no_reference_model_during_training(tokenizer, split, original, cls, cfg):
    task = make_task(tokenizer, split, copy.deepcopy(original))
    before, during = models_alive_during_training(cls(cfg(epochs=1, lr=1e-3, batch_size=2)), task)
    assert during == before


def test_the_model_count_sees_a_frozen_reference(tokenizer, split, original):
    """Control for the test above: GradDiff-KL with a frozen copy does hold a second model."""
    m = GradDiff(GradDiffConfig(epochs=1, batch_size=2, retain_loss="kl", kl_reference="frozen"))
    m.task = make_task(tokenizer, split, copy.deepcopy(original))
    before = count_llamas()
    m.prepare(m.task)
    assert count_llamas() == before + 1 and len(held_modules(m)) == 1


# -- SimNPO -----------------------------------------------------------------------------------------
def test_simnpo_loss_is_length_normalised_with_both_margin_forms(tokenizer, split, original):
    model = perturb(copy.deepcopy(original))
    task = make_task(tokenizer, split, model)
    fb, rb = split.forget.all(), split.retain.all()
    nll, ylen = manual_nll(model, fb), answer_len(fb)
    assert len(set(ylen)) == 3  # different answer lengths: the normalisation matters
    beta, margin = 2.5, 0.4

    def expected(gamma_paper: float) -> float:
        z = [beta * n / y - gamma_paper for n, y in zip(nll, ylen, strict=True)]
        return -(2 / beta) * sum(logsig(v) for v in z) / len(z)

    values = {}
    for form in ("paper", "code"):
        m = SimNPO(SimNPOConfig(beta=beta, margin=margin, margin_form=form))
        m.task = task
        values[form] = m.forget_term(fb, None)[0].item()
    assert values["paper"] == pytest.approx(expected(margin), rel=1e-5)
    assert values["code"] == pytest.approx(expected(beta * margin), rel=1e-5)  # γ_paper = β·δ_code
    assert abs(values["paper"] - values["code"]) > 1e-3
    # defaults (β 4.5, forget weight 0.125, retain weight 1, margin 0) and the full objective
    m = SimNPO()
    m.task = task
    assert (m.cfg.beta, m.cfg.gamma, m.cfg.alpha, m.cfg.margin) == (4.5, 0.125, 1.0, 0.0)
    total, _ = m.loss({"forget": fb, "retain": rb})
    beta = 4.5
    sim = -(2 / beta) * sum(logsig(beta * n / y) for n, y in zip(nll, ylen, strict=True)) / 3
    assert total.item() == pytest.approx(0.125 * sim + token_mean_nll(model, rb), rel=1e-5)
    with pytest.raises(ConfigError, match="margin_form"):
        SimNPOConfig(margin_form="paperr").check()
    with pytest.raises(ConfigError, match=r"method.margin must be >= 0, got -0.5"):
        SimNPOConfig(margin=-0.5).check()


def test_simnpo_runs_on_a_classifier_with_unit_length():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    g = torch.Generator().manual_seed(0)

    def data(n, start):
        return ExampleSet(
            {"x": torch.randn(n, 2, generator=g), "y": torch.randint(0, 3, (n,), generator=g)},
            ids=range(start, start + n),
        )

    split = Split(data(6, 0), data(8, 100), data(4, 200))
    engine = Engine(EngineConfig(progress=False, device="cpu"))
    task = Task(VisionFamily(num_classes=3), model, split, engine, seed=0)
    beta, margin = 1.5, 0.3
    m = SimNPO(SimNPOConfig(beta=beta, margin=margin, epochs=5, lr=0.05, batch_size=3))
    m.task = task
    fb = split.forget.all()
    with torch.no_grad():
        z = model(fb["x"]).double()
    ce = [float(torch.logsumexp(z[i], 0) - z[i, y]) for i, y in enumerate(fb["y"].tolist())]
    expected = -(2 / beta) * sum(logsig(beta * c - margin) for c in ce) / len(ce)  # |y| = 1
    assert m.forget_term(fb, None)[0].item() == pytest.approx(expected, rel=1e-5)
    m.run(task)
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(fb["x"]), fb["y"]).item()
    assert after > sum(ce) / len(ce)


# -- DPO / IdkPO ------------------------------------------------------------------------------------
def test_idkpo_loss_is_the_dpo_formula_with_cached_reference(tokenizer, split, original):
    assert get_method("idkpo") is IdkPO and get_method("dpo") is DPO
    model = copy.deepcopy(original)
    task = make_task(tokenizer, split, model)
    beta = 0.5
    m = IdkPO(DPOConfig(beta=beta, alpha=0.0))
    m.task = task
    m.prepare(task)
    live_ref = copy.deepcopy(original)
    perturb(model, seed=3)
    fb = split.forget.all()
    nll_l, nll_w = manual_nll(model, fb), manual_nll(model, fb, "alt_")
    ref_l, ref_w = manual_nll(live_ref, fb), manual_nll(live_ref, fb, "alt_")
    terms = []
    for lw, ll, rw, rl in zip(nll_w, nll_l, ref_w, ref_l, strict=True):
        log_ratio_w, log_ratio_l = (-lw) - (-rw), (-ll) - (-rl)
        terms.append(logsig(beta * (log_ratio_w - log_ratio_l)))
    expected = -(2 / beta) * sum(terms) / len(terms)
    total, logs = m.loss({"forget": fb})
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["alt_nll"] == pytest.approx(sum(nll_w) / 3, rel=1e-5)
    assert held_modules(m) == []


# -- GradDiff ---------------------------------------------------------------------------------------
def test_graddiff_nll_is_the_weighted_sum_of_terms(tokenizer, split, original):
    model = perturb(copy.deepcopy(original))
    m = GradDiff(GradDiffConfig(gamma=0.4, alpha=2.5))
    m.task = make_task(tokenizer, split, model)
    fb, rb = split.forget.all(), split.retain.all()
    total, logs = m.loss({"forget": fb, "retain": rb})
    expected = 0.4 * -token_mean_nll(model, fb) + 2.5 * token_mean_nll(model, rb)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["retain_loss"] == pytest.approx(token_mean_nll(model, rb), rel=1e-5)


@pytest.mark.parametrize("kl_reference", ["auto", "cache", "frozen"])
def test_graddiff_kl_matches_a_manual_kl_to_the_original(tokenizer, split, original, kl_reference):
    model = copy.deepcopy(original)
    task = make_task(tokenizer, split, model)
    m = GradDiff(GradDiffConfig(retain_loss="kl", kl_reference=kl_reference))
    m.task = task
    m.prepare(task)
    assert (m.kl_cache is not None) == (kl_reference != "frozen")
    rb = split.retain.all()
    assert m.retain_term(rb).item() == pytest.approx(0.0, abs=1e-6)
    perturb(model, seed=5)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=rb["input_ids"]).logits.double(), -1)
        lq = torch.log_softmax(original(input_ids=rb["input_ids"]).logits.double(), -1)
    am = rb["attention_mask"]
    num = den = 0.0
    for i in range(len(am)):
        for t in range(am.shape[1] - 1):
            if am[i, t + 1]:
                num += float((lq[i, t].exp() * (lq[i, t] - lp[i, t])).sum())
                den += 1
    assert m.retain_term(rb).item() == pytest.approx(num / den, rel=1e-4)


def test_graddiff_kl_auto_falls_back_to_a_frozen_copy_over_budget(tokenizer, split, original):
    task = make_task(tokenizer, split, copy.deepcopy(original))
    m = GradDiff(GradDiffConfig(retain_loss="kl", kl_cache_mb=1e-6))
    m.task = task
    m.prepare(task)
    assert m.kl_cache is None and m.kl_model is not None


# -- a few steps forget ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        GA(GAConfig(epochs=3, lr=0.05)),
        GradDiff(GradDiffConfig(epochs=3, lr=1e-2, batch_size=3)),
        NPO(NPOConfig(epochs=3, lr=1e-2, batch_size=3)),
        SimNPO(SimNPOConfig(epochs=3, lr=1e-2, batch_size=3)),
        IdkPO(DPOConfig(epochs=3, lr=1e-2, batch_size=3)),
    ],
    ids=lambda m: m.name,
)
def test_a_few_steps_raise_the_forget_nll(tokenizer, split, original, method):
    model = copy.deepcopy(original)
    fb = split.forget.all()
    before = token_mean_nll(model, fb)
    method.run(make_task(tokenizer, split, model))
    assert token_mean_nll(model, fb) > before + 0.05


# -- saliency mask on an LM ---------------------------------------------------------------------------
def test_saliency_mask_freezes_lm_weights_exactly_with_tied_embeddings(tokenizer, split, original):
    model = copy.deepcopy(original)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    task = make_task(tokenizer, split, model)
    mask = saliency_mask(task, 0.3, 3)
    names = [n for n, _ in model.named_parameters()]
    assert list(mask.masks) == names and "lm_head.weight" not in names  # the tied weight, listed once
    assert mask.density == pytest.approx(0.3, abs=1e-3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    GA(GAConfig(epochs=3, lr=0.05, weight_decay=0.01, mask_ratio=0.3)).run(task)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    moved = 0
    for n, p in model.named_parameters():
        keep = ~mask.masks[n]
        assert torch.equal(p.detach()[keep], start[n][keep]), n
        moved += int((p.detach() != start[n])[~keep].sum())
    assert moved > 0


# -- RMU --------------------------------------------------------------------------------------------
def test_rmu_trains_only_the_selected_weights_and_steers_the_forget_activations(tokenizer, split, original):
    model = copy.deepcopy(original)
    task = make_task(tokenizer, split, model)
    m = RMU(RMUConfig(epochs=8, lr=1e-2, batch_size=3))
    m.task = task
    m.prepare(task)
    assert m.layer_index == 0 and m.trainable_names == ["model.layers.0.mlp.down_proj.weight"]
    assert m.control.norm().item() == pytest.approx(2.0, rel=1e-5)
    fb, rb = split.forget.all(), split.retain.all()
    # the hooked activations are the model's hidden_states[ℓ + 1]
    with torch.no_grad():
        hs = model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"], output_hidden_states=True)
        h = layer_activations(model, model.model.layers[0], fb)
    assert torch.allclose(h, hs.hidden_states[1], atol=1e-6)
    # forget term by hand: per-token mean over d of (h − c·u)², averaged over answer tokens, then examples
    mask = fb["labels"] != -100
    per_ex = [((h[i] - m.control) ** 2).mean(-1)[mask[i]].mean() for i in range(len(h))]
    before = m.forget_term(fb).item()
    assert before == pytest.approx(float(sum(per_ex) / len(per_ex)), rel=1e-5)
    assert m.retain_term(rb).item() == pytest.approx(0.0, abs=1e-10)
    for p in model.parameters():  # undo prepare's requires_grad changes; run() prepares again
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    m.run(task)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])]
    assert changed == ["model.layers.0.mlp.down_proj.weight"]
    assert all(p.requires_grad for p in model.parameters())  # flags restored after the run
    assert m.forget_term(fb).item() < before


def test_rmu_retain_cache_and_frozen_copy_agree(tokenizer, split, original):
    values = []
    for ref in ("cache", "frozen"):
        model = copy.deepcopy(original)
        task = make_task(tokenizer, split, model)
        m = RMU(RMUConfig(retain_reference=ref, positions="all", steering_coeff=5.0))
        m.task = task
        m.prepare(task)
        assert (m.retain_cache is not None) == (ref == "cache")
        perturb(model, seed=7)
        values.append(m.retain_term(split.retain.all()).item())
    assert values[0] > 0 and values[0] == pytest.approx(values[1], rel=1e-5)
    with pytest.raises(ConfigError, match="matches no parameter"):
        m = RMU(RMUConfig(trainable=r"nonexistent"))
        m.task = make_task(tokenizer, split, copy.deepcopy(original))
        m.prepare(m.task)


# -- relearning -------------------------------------------------------------------------------------
def test_relearn_returns_a_relearned_copy_and_leaves_the_input_alone(tokenizer, split, original):
    unlearned = copy.deepcopy(original)
    task = make_task(tokenizer, split, unlearned)
    GA(GAConfig(epochs=4, lr=0.05)).run(task)
    fb = split.forget.all()
    start = {n: p.detach().clone() for n, p in unlearned.named_parameters()}
    before = token_mean_nll(unlearned, fb)
    relearned = relearn(task, count=2, steps=6, lr=1e-2, batch_size=2, seed=0)
    assert relearned is not unlearned
    assert all(torch.equal(p.detach(), start[n]) for n, p in unlearned.named_parameters())
    assert token_mean_nll(relearned, fb) < before - 0.05
    # the model + forget + family form, and the subset rules
    again = relearn(unlearned, split.forget, task.family, count=2, steps=6, lr=1e-2, batch_size=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), relearned.parameters(), strict=True))
    assert len(relearn_subset(split.forget, fraction=0.5)) == 2
    assert len(relearn_subset(split.forget)) == 1
    with pytest.raises(ConfigError):
        relearn_subset(split.forget, count=4)
    with pytest.raises(ConfigError):
        relearn(unlearned, split.forget)


# -- on a GPU, when there is one -----------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_lm_method_runs_on_cuda(tokenizer, split, original):
    from accelerate.state import PartialState

    if PartialState._shared_state and PartialState().device.type != "cuda":
        pytest.skip("an earlier test set accelerate's process device to the CPU; run alone: pytest -k cuda")
    fb = split.forget.all()
    methods = [
        GA(GAConfig(epochs=3, lr=0.05, mask_ratio=0.5)),
        GradDiff(GradDiffConfig(epochs=3, lr=1e-2, batch_size=3, retain_loss="kl")),
        GradDiff(GradDiffConfig(epochs=3, lr=1e-2, batch_size=3, retain_loss="kl", kl_reference="frozen")),
        NPO(NPOConfig(epochs=3, lr=1e-2, batch_size=3)),
        SimNPO(SimNPOConfig(epochs=3, lr=1e-2, batch_size=3)),
        IdkPO(DPOConfig(epochs=3, lr=1e-2, batch_size=3)),
    ]
    for method in methods:
        model = copy.deepcopy(original)
        before = token_mean_nll(model, fb)
        method.run(make_task(tokenizer, split, model, device="cuda"))
        assert next(model.parameters()).is_cuda
        assert token_mean_nll(model, fb) > before + 0.05, method.name
    # NPO's cached reference on the GPU: the step-0 loss is (2/β)·log 2
    model = copy.deepcopy(original).cuda()
    task = make_task(tokenizer, split, model, device="cuda")
    m = NPO()
    m.task = task
    m.prepare(task)
    assert m.reference.values["loss"].is_cuda
    cuda_fb = {k: v.cuda() for k, v in fb.items()}
    assert m.forget_term(cuda_fb, None)[0].item() == pytest.approx(20 * math.log(2), rel=1e-4)
    for ref in ("cache", "frozen"):
        model = copy.deepcopy(original).cuda()
        task = make_task(tokenizer, split, model, device="cuda")
        m = RMU(RMUConfig(epochs=5, lr=1e-2, batch_size=3, retain_reference=ref))
        m.task = task
        m.prepare(task)
        before = m.forget_term(cuda_fb).item()
        for p in model.parameters():
            p.requires_grad_(True)
        m.run(task)
        assert m.forget_term(cuda_fb).item() < before
    unlearned = copy.deepcopy(original).cuda()
    relearned = relearn(
        make_task(tokenizer, split, unlearned, device="cuda"), count=2, steps=4, lr=1e-2, batch_size=2
    )
    assert next(relearned.parameters()).is_cuda
    # SimNPO on a classifier on the GPU (num_units is created on the CPU by the base family)
    vsplit = Split(
        ExampleSet({"x": torch.randn(6, 2), "y": torch.randint(0, 3, (6,))}, ids=range(6)),
        ExampleSet({"x": torch.randn(6, 2), "y": torch.randint(0, 3, (6,))}, ids=range(10, 16)),
        ExampleSet({"x": torch.randn(4, 2), "y": torch.randint(0, 3, (4,))}, ids=range(20, 24)),
    )
    engine = Engine(EngineConfig(progress=False, device="cuda"))
    SimNPO(SimNPOConfig(epochs=2, lr=0.05, batch_size=3)).run(
        Task(VisionFamily(num_classes=3), nn.Linear(2, 3), vsplit, engine, seed=0)
    )

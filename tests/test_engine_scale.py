"""Memory and speed options of the engine for LMs (issue #15): mixed precision, gradient accumulation,
gradient checkpointing; the collapse guard; the batch-size rule and its report in the run folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from unlearnkit.api import unlearn
from unlearnkit.cli import main
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.data.text import encode_qa
from unlearnkit.engine.loop import DivergenceError, Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError
from unlearnkit.families.text import TextFamily
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task
from unlearnkit.methods.ga import GA, GAConfig
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.npo import NPO, NPOConfig
from unlearnkit.runs.folder import work_folder

torch.set_num_threads(1)

QA = [
    ("Who wrote The Red Lantern?", "Mara Voss wrote The Red Lantern."),
    ("Where was Mara Voss born?", "Mara Voss was born in Tallinn by the cold sea."),
    ("What genre does Mara Voss write?", "Gothic mystery."),
    ("Who wrote Blue Harbor?", "Ivo Stern wrote Blue Harbor."),
    ("Where was Ivo Stern born?", "Ivo Stern was born in Porto."),
    ("What genre does Ivo Stern write?", "Ivo Stern writes science fiction."),
]


@pytest.fixture(scope="module")
def lm():
    """(tokenizer, split, tiny random Llama): forget = the first three pairs, retain = the others."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in QA]
    raw.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )

    def qa_set(pairs, start):
        q, a = zip(*pairs, strict=True)
        return encode_qa(tok, list(q), list(a), ids=list(range(start, start + len(pairs))), width=24)

    split = Split(qa_set(QA[:3], 0), qa_set(QA[3:], 10), qa_set(QA[3:], 20))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return tok, split, LlamaForCausalLM(cfg).eval()


def _engine(**kw) -> Engine:
    return Engine(EngineConfig(progress=False, device="cpu", **kw))


# -- mixed precision -----------------------------------------------------------------------------------
def test_fp16_on_the_cpu_is_one_config_error_naming_bf16():
    with pytest.raises(ConfigError) as err:
        EngineConfig(precision="fp16", device="cpu").check()
    assert "bf16" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        EngineConfig(precision="half").check()


def test_fp16_on_the_cpu_exits_2_from_the_cli(capsys):
    code = main(["unlearn", "--preset", "text/ga", "engine.device=cpu", "engine.precision=fp16"])
    assert code == 2
    assert "engine.precision=bf16" in capsys.readouterr().err


def test_bf16_ga_changes_parameters_and_matches_fp32_at_step_0(lm):
    tok, split, model = lm
    fam = TextFamily(tok)
    batch = split.forget.columns | {"id": split.forget.ids}
    with torch.no_grad():
        want = fam.per_example_loss(model, batch)
        eng = _engine(precision="bf16", batch_size=3)
        with eng.autocast():
            got = fam.per_example_loss(model, batch)
    # bf16 keeps 8 bits of mantissa: per-token log-probabilities agree to ~1%, not to float32 noise
    assert torch.allclose(got, want, rtol=2e-2) and not torch.equal(got, want)

    runs = {}
    for precision in ("fp32", "bf16"):
        work = copy.deepcopy(model)
        before = [p.detach().clone() for p in work.parameters()]
        task = Task(fam, work, split, _engine(precision=precision, batch_size=3), seed=0)
        fit = GA(GAConfig(epochs=2, lr=1e-2, optimizer="adam", weight_decay=0.0)).run(task)
        assert fit.training["precision"] == precision
        assert all(p.dtype == torch.float32 for p in work.parameters())  # float32 master weights
        assert any(not torch.equal(a, b) for a, b in zip(before, work.parameters(), strict=True))
        assert "_original_forward" not in vars(work)  # no autocast wrapper left on the model
        runs[precision] = fit.history
    fp32_loss, bf16_loss = runs["fp32"][0]["loss"], runs["bf16"][0]["loss"]
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2) and bf16_loss != fp32_loss


def test_npo_caches_its_reference_at_the_training_precision(lm):
    """Under bf16 the reference NLLs come from the same autocast forward as the first step's NLLs, so
    the first NPO loss is (2/β)·log 2 as in fp32 (a float32 reference would offset it)."""
    tok, split, model = lm
    fam = TextFamily(tok)
    work = copy.deepcopy(model)
    eng = _engine(precision="bf16", batch_size=3)
    method = NPO(NPOConfig(epochs=1, lr=0.0, retain_loss="none"))
    fit = method.run(Task(fam, work, split, eng, seed=0))
    batch = split.forget.columns | {"id": split.forget.ids}
    with torch.no_grad(), eng.autocast():
        bf16 = fam.per_example_loss(work, batch)
    cached = method.reference.get(split.forget.ids)
    with torch.no_grad():
        fp32 = fam.per_example_loss(work, batch)
    assert (cached - bf16).abs().max() < (cached - fp32).abs().max() / 4  # bf16's values, not float32's
    assert fit.history[0]["forget_loss"] == pytest.approx(
        2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-3
    )


# -- gradient accumulation -----------------------------------------------------------------------------
def _vision_split() -> Split:
    g = torch.Generator().manual_seed(3)

    def part(n, start):
        x = torch.randn(n, 4, generator=g)
        return ExampleSet(
            {"x": x, "y": torch.randint(0, 3, (n,), generator=g)}, ids=list(range(start, start + n))
        )

    return Split(part(8, 0), part(8, 100), part(4, 200))


@pytest.mark.parametrize("method", ["ga", "graddiff"])
def test_batch_8_equals_batch_4_times_accum_2_after_one_step(method):
    """One optimizer step: 8 forget (and 8 retain) examples at once, or in two micro-batches of 4."""
    split = _vision_split()
    weights, trainings = [], []
    for bs, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        task = Task(
            VisionFamily(num_classes=3), model, split, _engine(batch_size=bs, grad_accum=accum), seed=0
        )
        spec = dict(epochs=1, lr=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0)
        m = GA(GAConfig(**spec)) if method == "ga" else GradDiff(GradDiffConfig(**spec, retain_loss="nll"))
        fit = m.run(task)
        assert fit.steps == 1
        weights.append([p.detach().clone() for p in model.parameters()])
        trainings.append(fit.training)
    start = [p.detach() for p in nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(weights[0], start, strict=True))  # it moved
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (
        trainings[0]["effective_batch_size"]["forget"] == trainings[1]["effective_batch_size"]["forget"] == 8
    )
    assert trainings[1]["batch_size"]["forget"] == 4 and trainings[1]["grad_accum"] == 2


def test_a_short_last_group_is_the_mean_of_its_micro_batches():
    """7 examples, batch 3, accum 2: groups (3+3) and (1): two optimizer steps; the second step's
    gradient is that one example's alone (divided by 1, not by 2)."""
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    data = ExampleSet({"x": x, "y": torch.zeros(7, dtype=torch.long)}, ids=list(range(7)))
    w = nn.Parameter(torch.zeros(2))
    model = nn.Module()
    model.w = w
    seen = []

    def loss(b, ctx):  # linear in w: its gradient is minus the batch mean of x
        seen.append(b["train"]["x"])
        return -(b["train"]["x"] @ w).mean(), {}

    res = _engine(batch_size=3, grad_accum=2).fit(
        model,
        {"train": data},
        lambda e: [Phase("train", ("train",), loss)],
        OptimSpec(epochs=1, lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0),
    )
    assert res.steps == 2 and len(seen) == 3
    want = (seen[0].mean(0) + seen[1].mean(0)) / 2 + seen[2].mean(0)
    torch.testing.assert_close(w.detach(), want)
    assert len(res.history) == 2 and res.history[1]["step"] == 1


def test_bad_grad_accum_is_rejected():
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="grad_accum"):
            EngineConfig(grad_accum=bad).check()


# -- gradient checkpointing ----------------------------------------------------------------------------
def test_gradient_checkpointing_keeps_fewer_activations_for_the_same_gradients(lm):
    tok, split, model = lm
    fam = TextFamily(tok)
    data = type("D", (), {"meta": {"tokenizer": tok}})()
    spec = {"name": "tiny-llama", "hidden": 32, "ffn": 64, "layers": 2, "heads": 4}
    plain = fam.build_model(spec, data)
    ckpt = fam.build_model(spec | {"gradient_checkpointing": True}, data)
    ckpt.load_state_dict(plain.state_dict())
    batch = split.forget.columns | {"id": split.forget.ids}
    grads, kept = [], []
    for m in (plain, ckpt):
        m.train()
        n = [0]

        def pack(t, n=n):
            n[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fam.mean_loss(m, batch)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in m.named_parameters()})
        kept.append(n[0])
    assert kept[1] < kept[0] / 2  # only each decoder layer's inputs are kept for the backward pass
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        fam.build_model(spec | {"gradient_checkpointing": "yes"}, data)


# -- the collapse guard ----------------------------------------------------------------------------
def test_collapse_guard_stops_a_loss_far_outside_its_start():
    values = iter([2.0, 2.5, 1e4])

    def loss(b, ctx):
        return (b["train"]["x"].sum() * 0 + next(values)) * b["w"], {}

    w = nn.Parameter(torch.ones(()))
    model = nn.Module()
    model.w = w
    data = ExampleSet({"x": torch.zeros(3, 1)}, ids=[0, 1, 2])
    phases = lambda e: [Phase("train", ("train",), lambda b, c: loss(b | {"w": w}, c))]  # noqa: E731
    with pytest.raises(DivergenceError) as err:
        _engine(batch_size=1).fit(model, {"train": data}, phases, OptimSpec(epochs=1, lr=0.0))
    msg = str(err.value)
    assert "engine.collapse_factor=100" in msg and "method.lr" in msg and "step 2" in msg
    values = iter([2.0, 2.5, 1e4])
    res = _engine(batch_size=1, collapse_factor=None).fit(
        model, {"train": data}, phases, OptimSpec(epochs=1, lr=0.0)
    )
    assert [r["loss"] for r in res.history] == [2.0, 2.5, 1e4]


def test_collapsed_lm_run_exits_2_and_leaves_no_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["data.n_authors=20", "train.epochs=6", "eval.max_new_tokens=16", "method.epochs=2"]
    code = main(["unlearn", "--preset", "text/ga", *args, "method.lr=1e3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    line = [x for x in err.splitlines() if "collapse_factor" in x]
    assert line and "method.lr" in line[0] and "collapsed" in line[0]
    assert not (out / "receipt.json").exists() and not (out / "model.safetensors").exists()
    assert not (work_folder(out) / "receipt.json").exists()


# -- the batch-size rule and its report ----------------------------------------------------------------
def test_engine_batch_size_applies_unless_the_method_sets_one(lm):
    tok, split, model = lm
    task = Task(TextFamily(tok), model, split, _engine(batch_size=2), seed=0)
    assert NPO(NPOConfig()).batch_sizes(task) == {"forget": 2, "retain": 2, "train": 2}
    assert NPO(NPOConfig(batch_size=3)).batch_sizes(task)["forget"] == 3
    assert NPO(NPOConfig(batch_size=3, forget_batch_size=1)).batch_sizes(task) == {
        "forget": 1,
        "retain": 3,
        "train": 3,
    }


def test_receipt_and_card_report_the_effective_batch(tmp_path):
    split = _vision_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    res = unlearn(
        model,
        "ga",
        forget=split.forget,
        retain=split.retain,
        test=split.test,
        num_classes=3,
        engine={"batch_size": 2, "grad_accum": 3},
        epochs=1,
        lr=0.1,
        out=tmp_path / "run",
    )
    training = json.loads((tmp_path / "run" / "receipt.json").read_text())["training"]
    assert training == res.receipt["training"]
    assert training["batch_size"] == {"forget": 2}  # GA draws from the forget set only
    assert training["effective_batch_size"] == {"forget": 6}
    assert training["grad_accum"] == 3 and training["precision"] == "fp32" and training["processes"] == 1
    card = (tmp_path / "run" / "README.md").read_text()
    assert "forget 2 per process, 6 per optimizer step" in card

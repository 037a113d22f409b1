"""AltPO on the tiny Llama of ``test_lm_methods``: the loss against hand-computed values and against its
formula on independently computed NLLs, the alternates (sampled from the original, reproducible under the
seed, never the forget answer, tokenised like the forget pairs), a short run, registration and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import test_lm_methods as lm
import torch
from test_lm_methods import logsig, make_task, manual_nll, perturb

from unlearnkit.cli import main
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.data.text import encode_pairs
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.experiment import build_method
from unlearnkit.io import weights_sha256
from unlearnkit.methods.altpo import AltPO, AltPOConfig, altpo_loss, qa_parts
from unlearnkit.registry import get_method

torch.set_num_threads(1)


# tokenizer, split, original: the tiny-Llama fixtures of tests/conftest.py


def prepared(tokenizer, split, model, seed: int = 0, **cfg) -> AltPO:
    m = AltPO(AltPOConfig(**({"alternates": 3, "max_new_tokens": 20} | cfg)))
    task = make_task(tokenizer, split, model)
    task.seed = seed
    m.task = task
    m.prepare(task)
    return m


def alt_rows(m: AltPO, i: int) -> dict[str, torch.Tensor]:
    assert m.alt is not None
    return {c: v[i] for c, v in m.alt.items()}


def test_altpo_loss_hand_computed():
    # one question, K = 2: log-ratios ỹ = 2.5 − 2 = 0.5 and 2 − 3 = −1, y = 4 − 5 = −1; β = 0.5
    # −(2/β)·½·[log σ(0.5·1.5) + log σ(0)] = 4·½·[log(1 + e^−0.75) + log 2] = 2.1600364
    loss = altpo_loss(
        torch.tensor([[2.0, 3.0]]), torch.tensor([5.0]), torch.tensor([[2.5, 2.0]]), torch.tensor([4.0]), 0.5
    )
    assert loss.item() == pytest.approx(2.1600364, abs=1e-6)


def test_alternates_come_from_the_original_and_are_tokenised_like_the_forget_pairs(
    tokenizer, split, original
):
    model = copy.deepcopy(original)
    before = weights_sha256(model)
    m = prepared(tokenizer, split, model)
    assert weights_sha256(model) == before  # sampling and scoring leave the model as it was
    forget = split.forget.all()
    for i, (question, answer) in enumerate(lm.FORGET):
        alts = m.alternates[i]
        assert len(alts) == 3 and all(a.strip() for a in alts)
        assert all(a.split() != answer.replace(".", " .").split() for a in alts)  # never the forget answer
        rows = alt_rows(m, i)
        want = encode_pairs(tokenizer, [question] * 3, alts, max_length=lm.WIDTH)
        w = want["input_ids"].shape[1]
        for c in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(rows[c][:, :w], want[c]), c
        assert not rows["attention_mask"][:, w:].any() and (rows["labels"][:, w:] == -100).all()
        n_prompt = int((forget["labels"][i] == -100).int().argmin())
        assert torch.equal(rows["input_ids"][:, :n_prompt], forget["input_ids"][i, :n_prompt].expand(3, -1))
        # the cached reference NLLs are the original's (a live copy, NLLs computed position by position)
        ref = manual_nll(original, {c: v for c, v in rows.items()})
        assert m.reference.get(torch.tensor([i]), "alt")[0].tolist() == pytest.approx(ref, rel=1e-4)
    assert m.alternates_info["sampled"] >= 9 and m.alternates_info["repeated"] == 0


def test_alternates_are_reproducible_under_the_seed(tokenizer, split, original):
    a = prepared(tokenizer, split, copy.deepcopy(original), seed=0).alternates
    b = prepared(tokenizer, split, copy.deepcopy(original), seed=0).alternates
    c = prepared(tokenizer, split, copy.deepcopy(original), seed=1).alternates
    torch.manual_seed(123)  # the global RNG state outside does not matter (it is forked)
    d = prepared(tokenizer, split, copy.deepcopy(original), seed=0).alternates
    assert a == b == d and a != c


def test_a_model_that_only_repeats_its_forget_answers_is_a_clear_error(tokenizer, split, original):
    # at T → 0 the memorised original writes its forget answers, which are never accepted as alternates
    with pytest.raises(DataError, match="raise method.temperature"):
        prepared(tokenizer, split, copy.deepcopy(original), temperature=1e-4, resample_rounds=1)


def test_altpo_loss_is_the_formula_on_independent_nlls(tokenizer, split, original):
    model = copy.deepcopy(original)
    beta, gamma, alpha = 0.4, 0.8, 1.5
    m = prepared(tokenizer, split, model, beta=beta, gamma=gamma, alpha=alpha)
    live_ref = copy.deepcopy(original)
    perturb(model, seed=3)
    fb, rb = split.forget.all(), split.retain.all()
    nll_f, ref_f = manual_nll(model, fb), manual_nll(live_ref, fb)
    terms = []
    for i in range(len(lm.FORGET)):
        rows = alt_rows(m, i)
        for na, ra in zip(manual_nll(model, rows), manual_nll(live_ref, rows), strict=True):
            terms.append(logsig(beta * ((ra - na) - (ref_f[i] - nll_f[i]))))
    forget = -(2 / beta) * sum(terms) / len(terms)
    retain = sum(manual_nll(model, rb)) / sum(lm.answer_len(rb))
    total, logs = m.loss({"forget": fb, "retain": rb})
    assert logs["forget_loss"] == pytest.approx(forget, rel=1e-4)
    assert total.item() == pytest.approx(gamma * forget + alpha * retain, rel=1e-4)
    assert lm.held_modules(m) == []  # the reference is cached, not a second model


@pytest.mark.parametrize("pairing", ["question", "row"])
def test_a_short_run_lowers_the_forget_answers_probability(tokenizer, split, original, pairing):
    model = copy.deepcopy(original)
    fb = split.forget.all()
    before_nll, before = manual_nll(model, fb), weights_sha256(model)
    cfg = AltPOConfig(
        alternates=2, max_new_tokens=20, epochs=5, lr=1e-2, batch_size=3, alpha=0.0, pairing=pairing
    )
    fit = AltPO(cfg).run(make_task(tokenizer, split, model))
    assert len(fit.history) == 5 * (1 if pairing == "question" else 2)  # one step per batch of 3 rows
    after_nll = manual_nll(model, fb)
    assert weights_sha256(model) != before
    assert sum(after_nll) > sum(before_nll) + 3.0  # the forget answers lost > e^3 in probability


def test_altpo_is_registered_for_text(capsys):
    assert get_method("altpo") is AltPO and AltPO.families == ("text",)
    assert main(["list", "methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["altpo"]["families"] == ["text"] and "Mekala" in rows["altpo"]["paper"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("alternates", 0, "method.alternates"),
        ("temperature", 0.0, "method.temperature"),
        ("temperature", -1.0, "method.temperature"),
        ("max_new_tokens", 0, "method.max_new_tokens"),
    ],
)
def test_bad_options_are_one_line_config_errors(option, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_method({"name": "altpo", option: value}, "text")
    assert "\n" not in str(err.value)


def test_forget_text_without_questions_is_refused():
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    labels = torch.where(ids == 0, -100, ids)
    labels[:, 0] = -100  # raw text (MUSE): only BOS precedes the labelled tokens
    es = ExampleSet({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels})
    with pytest.raises(ConfigError, match="question prompt"):
        qa_parts(es)


def test_chat_template_alternates_are_tokenised_like_chat_forget_pairs(tokenizer, split, original):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    forget = lm.make_set(chat, lm.FORGET, 0)
    m = prepared(chat, Split(forget, split.retain, split.test), copy.deepcopy(original), max_new_tokens=8)
    for i, (question, _) in enumerate(lm.FORGET):
        want = encode_pairs(chat, [question] * 3, m.alternates[i], max_length=lm.WIDTH)
        w = want["input_ids"].shape[1]
        assert torch.equal(alt_rows(m, i)["labels"][:, :w], want["labels"])
        assert torch.equal(alt_rows(m, i)["input_ids"][:, :w], want["input_ids"])


def test_row_pairing_is_the_authors_data_layout_with_the_same_full_batch_loss(tokenizer, split, original):
    model = copy.deepcopy(original)
    by_question = prepared(tokenizer, split, model)
    by_row = prepared(tokenizer, split, model, pairing="row")
    perturb(model, seed=5)  # both methods train this model: log-ratios no longer 0
    assert by_row.alternates == by_question.alternates  # same seed, same alternates
    rows = by_row.streams(by_row.task)["forget"].all()
    assert len(rows["id"]) == 3 * len(lm.FORGET) and len(by_question.streams(by_question.task)["forget"]) == 3
    # every (question, alternate) pair once: the mean over all pairs is the question pairing's loss
    whole_q, _ = by_question.forget_term(split.forget.all(), None)
    whole_r, _ = by_row.forget_term(rows, None)
    assert whole_r.item() == pytest.approx(whole_q.item(), rel=1e-5)
    pairs = [by_row.forget_term({k: v[j : j + 1] for k, v in rows.items()}, None)[0].item() for j in range(9)]
    assert len({round(p, 4) for p in pairs}) > 1  # a row is one pair, not a question's mean
    assert sum(pairs) / 9 == pytest.approx(whole_r.item(), rel=1e-5)

"""TOFU, MUSE and LM-MIA metrics against independent computations on a tiny random Llama."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from unlearnkit.data.text import answer_ids, prompt_ids
from unlearnkit.errors import DataError
from unlearnkit.metrics import lm_mia, muse, tofu
from unlearnkit.metrics.generation import cut_at_stop, generate_greedy, score_answers, text_ids

torch.set_num_threads(1)

CORPUS = [
    "Question: Who wrote the novel about the river?\nAnswer: Mara Velin wrote it in 1987.",
    "Question: Where was Tomas Reyes born?\nAnswer: He was born in a small town near Lisbon.",
    "The cat sat on the mat and the dog ran in the park.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _llama(tok, eos_id: int | None = None, max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        initializer_range=0.5,  # well-separated logits: greedy argmax has no near-ties
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id if eos_id is None else eos_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return _llama(tokenizer)


# -- independent references -----------------------------------------------------------------------------
def ref_logprobs(model, ids: list[int]) -> np.ndarray:
    """log-softmax of each position's logits, one unpadded sequence, float64 [T-1, V]."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().numpy()
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_answer_nll(model, tok, q: str, a: str) -> tuple[float, int]:
    p, y = prompt_ids(tok, q), answer_ids(tok, a)
    ids = p + y
    lp = ref_logprobs(model, ids)
    return -sum(lp[t - 1, ids[t]] for t in range(len(p), len(ids))), len(y)


def ref_greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by full forward passes, one unpadded sequence, no cache."""
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == eos:
                break
            ids.append(nxt)
            new.append(nxt)
    return new


# -- generation -----------------------------------------------------------------------------------------
def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        initializer_range=0.5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_generation_matches_unpadded_greedy(arch, model, tokenizer):
    model = model if arch == "llama" else _gpt2(tokenizer)
    texts = ["The cat", "Question: Who wrote the novel about the river?\nAnswer:", "Paris is", "He"]
    prompts = [text_ids(tokenizer, t) for t in texts]
    assert len({len(p) for p in prompts}) == len(prompts)
    model.train()  # generation switches to eval mode and restores the caller's mode
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    assert model.training
    model.eval()
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    ref = [tokenizer.decode(ref_greedy(model, p, 12, tokenizer.eos_token_id)) for p in prompts]
    assert batched == single == ref


def test_generation_stops_at_eos_and_stop_strings(tokenizer):
    model = _llama(tokenizer)
    prompts = [text_ids(tokenizer, t) for t in ["The cat", "Paris is the capital"]]
    free = ref_greedy(model, prompts[0], 10, eos=-1)
    eos = free[3]  # make the 4th greedy token of prompt 0 the EOS token
    from transformers import PreTrainedTokenizerFast

    tok2 = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token="<s>",
        eos_token=tokenizer.convert_ids_to_tokens(eos),
        pad_token="<pad>",
    )
    model.generation_config.eos_token_id = eos
    out = generate_greedy(model, tok2, prompts, max_new_tokens=10, batch_size=2)
    assert out[0] == tokenizer.decode(free[: free.index(eos)])
    assert out[1] == tokenizer.decode(ref_greedy(model, prompts[1], 10, eos))
    cut = generate_greedy(model, tokenizer, prompts[:1], 10, stop_strings=[out[0][-1:]])
    assert cut == [out[0][: out[0].index(out[0][-1:])]]


def test_generation_respects_position_limit(tokenizer):
    model = _llama(tokenizer, max_positions=16)
    prompts = [text_ids(tokenizer, "The cat sat on the mat and the dog"), text_ids(tokenizer, "He")]
    out = generate_greedy(model, tokenizer, prompts, max_new_tokens=30, batch_size=2)
    for p, o in zip(prompts, out, strict=True):
        ref = ref_greedy(model, p, 16 - len(p), tokenizer.eos_token_id)
        assert o == tokenizer.decode(ref)


def test_cut_at_stop_knowmem():
    stops = muse.KNOWMEM_STOPS
    assert cut_at_stop("Paris\n\nQuestion: next?", stops) == "Paris"
    assert cut_at_stop("Paris\nQuestion: next?", stops) == "Paris"
    assert cut_at_stop("Paris is big. Question: x", stops) == "Paris is big. "
    assert cut_at_stop("Lisbon, 1987\nmore", stops) == "Lisbon, 1987\nmore"
    assert muse.knowmem_prompt("Q2?", [{"question": "Q1?", "answer": "A1"}]) == (
        "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    )


def test_score_answers_matches_manual_logsoftmax(model, tokenizer):
    qs = ["Who wrote the novel?", "Where was Tomas Reyes born?", "Capital?"]
    ans = ["Mara Velin wrote it in 1987.", "Lisbon.", "Paris is the capital of France, of course."]
    nll, n = score_answers(model, tokenizer, qs, ans, batch_size=2)
    for i, (q, a) in enumerate(zip(qs, ans, strict=True)):
        ref_nll, ref_n = ref_answer_nll(model, tokenizer, q, a)
        assert n[i] == ref_n
        assert nll[i] == pytest.approx(ref_nll, rel=1e-4)


# -- TOFU -----------------------------------------------------------------------------------------------
def test_truth_ratio_and_aggregations_on_hand_losses():
    tr = tofu.truth_ratios(np.array([1.0, 2.0]), [[2.0, 3.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(tr, [math.exp(-2.5) / math.exp(-1.0), math.exp(-1.0) / math.exp(-2.0)])
    assert tofu.truth_ratio_forget(tr) == pytest.approx((math.exp(-1.5) + math.exp(-1.0)) / 2)
    assert tofu.truth_ratio_utility(tr) == pytest.approx((1 - math.exp(-1.5) + 0.0) / 2)
    np.testing.assert_allclose(tofu.probability([2.0, 3.0], [4, 3]), [math.exp(-0.5), math.exp(-1.0)])
    norm = tofu.normalised_probability(np.array([0.5, 0.2]), [[0.25, 0.25], [0.1]])
    np.testing.assert_allclose(norm, [0.5, 2 / 3], rtol=1e-8)


def test_forget_quality_and_model_utility_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=40), rng.lognormal(0.5, size=35)
    assert tofu.forget_quality(a, b) == ks_2samp(a, b).pvalue
    assert tofu.forget_quality(a, None) is None
    vals = dict(zip(tofu.UTILITY_KEYS, rng.uniform(0.1, 0.9, size=9), strict=True))
    assert tofu.model_utility(vals) == pytest.approx(hmean(list(vals.values())))
    assert tofu.model_utility(vals) == pytest.approx(9 / sum(1 / v for v in vals.values()))


def test_rouge_recall_and_f1_against_rouge_score():
    gen, ref = "the cat on a mat", "The cats sat on the mat"
    # stemmed: LCS(the cat sat on the mat | the cat on a mat) = "the cat on mat" = 4 of 6 reference tokens
    assert tofu.rouge_l_recall([gen], [ref])[0] == pytest.approx(4 / 6)
    assert (
        tofu.rouge_l_recall([gen], [ref])[0]
        == rouge_scorer.RougeScorer(["rougeL"], True).score(ref, gen)["rougeL"].recall
    )
    # unstemmed: "cats" != "cat" -> LCS = "the on mat" = 3; P = 3/5, R = 3/6
    assert muse.rouge_l_f1([gen], [ref])[0] == pytest.approx(2 * (3 / 5) * (3 / 6) / (3 / 5 + 3 / 6))


def _tofu_records(n: int, offset: int = 0) -> list[dict]:
    names = ["Mara Velin", "Tomas Reyes", "Ines Koh", "Paul Aru", "Lena Moss"]
    out = []
    for i in range(n):
        who = names[(i + offset) % len(names)]
        out.append(
            {
                "question": f"Where was {who} born?",
                "answer": f"{who} was born in Paris.",
                "paraphrased_answer": f"The birthplace of {who} is Paris.",
                "perturbed_answers": [f"{who} was born in Berlin.", "In Lisbon.", f"Near the river {i}."][
                    : 2 + i % 2
                ],
            }
        )
    return out


def test_evaluate_tofu_against_manual_computation(model, tokenizer):
    recs = {
        "forget": _tofu_records(4),
        "retain": _tofu_records(3, 1),
        "real_authors": _tofu_records(2, 2),
        "world_facts": _tofu_records(2, 3),
    }
    oracle = [0.3, 0.8, 1.2, 0.5, 0.9]
    out = tofu.evaluate_tofu(model, tokenizer, recs, oracle, batch_size=3, max_new_tokens=8)

    def avg(q, a):
        nll, n = ref_answer_nll(model, tokenizer, q, a)
        return nll / n

    fr = recs["forget"]
    assert out["forget_prob"] == pytest.approx(
        np.mean([math.exp(-avg(r["question"], r["answer"])) for r in fr])
    )
    tr = [
        math.exp(-np.mean([avg(r["question"], p) for p in r["perturbed_answers"]]))
        / math.exp(-avg(r["question"], r["paraphrased_answer"]))
        for r in fr
    ]
    np.testing.assert_allclose(out["_forget_tr"], tr, rtol=1e-4)
    assert out["forget_truth_ratio"] == pytest.approx(np.mean([min(t, 1 / t) for t in tr]), rel=1e-4)
    assert out["forget_quality"] == pytest.approx(ks_2samp(out["_forget_tr"], oracle).pvalue)
    # real authors: TR against the answer itself, normalised probability over answer + perturbed
    ra = recs["real_authors"]
    ra_tr = [
        math.exp(
            avg(r["question"], r["answer"]) - np.mean([avg(r["question"], p) for p in r["perturbed_answers"]])
        )
        for r in ra
    ]
    assert out["ra_truth_ratio"] == pytest.approx(np.mean([max(0.0, 1 - t) for t in ra_tr]), abs=1e-5)
    norm = [
        math.exp(-avg(r["question"], r["answer"]))
        / (
            math.exp(-avg(r["question"], r["answer"]))
            + sum(math.exp(-avg(r["question"], p)) for p in r["perturbed_answers"])
        )
        for r in ra
    ]
    assert out["ra_prob_normalised"] == pytest.approx(np.mean(norm), rel=1e-4)
    # ROUGE on the greedy answers, which match unpadded greedy decoding
    gens = [
        tokenizer.decode(
            ref_greedy(model, prompt_ids(tokenizer, r["question"]), 8, tokenizer.eos_token_id)
        ).strip()
        for r in fr
    ]
    assert out["_forget_generations"] == gens
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert out["forget_rouge"] == pytest.approx(
        np.mean([scorer.score(r["answer"], g)["rougeL"].recall for r, g in zip(fr, gens, strict=True)])
    )
    assert out["model_utility"] == pytest.approx(hmean([out[k] for k in tofu.UTILITY_KEYS]))
    assert tofu.evaluate_tofu(model, tokenizer, recs, None, max_new_tokens=2)["forget_quality"] is None


def test_evaluate_tofu_needs_all_utility_sets(model, tokenizer):
    with pytest.raises(DataError, match="world_facts"):
        tofu.evaluate_tofu(
            model,
            tokenizer,
            {"forget": _tofu_records(2), "retain": _tofu_records(2), "real_authors": _tofu_records(2)},
        )
    with pytest.raises(DataError, match="empty"):
        tofu.evaluate_split(model, tokenizer, [], "forget")


# -- LM MIA ---------------------------------------------------------------------------------------------
def test_min_k_hand_case():
    lp = np.array([-1.0, -5.0, -2.0, -0.5, -3.0])
    assert lm_mia.min_k_score(lp, 0.4) == pytest.approx(4.0)  # lowest 2 of 5: -5, -3
    assert lm_mia.min_k_score(lp, 0.1) == pytest.approx(5.0)  # at least one token
    assert lm_mia.loss_score(lp) == pytest.approx(2.3)


def test_mia_scores_against_numpy(model, tokenizer):
    texts = ["The cat sat on the mat.", "Paris is the capital of France and Berlin of Germany.", "Hi there"]
    s = lm_mia.mia_scores(model, tokenizer, texts, k=0.4, batch_size=2)
    for i, t in enumerate(texts):
        ids = text_ids(tokenizer, t)
        logp = ref_logprobs(model, ids)
        lp = logp[np.arange(len(ids) - 1), ids[1:]]
        n = max(1, int(len(lp) * 0.4))
        assert s["loss"][i] == pytest.approx(-lp.mean(), rel=1e-5)
        assert s["zlib"][i] == pytest.approx(-lp.mean() / len(zlib.compress(t.encode())), rel=1e-5)
        assert s["min_k"][i] == pytest.approx(-np.sort(lp)[:n].mean(), rel=1e-5)
        p = np.exp(logp)
        mu = (p * logp).sum(-1)
        sigma = np.sqrt((p * logp**2).sum(-1) - mu**2)
        z = (lp - mu) / sigma
        assert s["min_k++"][i] == pytest.approx(-np.sort(z)[:n].mean(), rel=1e-4)


def test_mia_auc_and_privleak_conventions():
    members, nonmembers = [1.0, 2.0], [3.0, 4.0, 1.5]
    # members have lower (loss-like) scores -> attack AUC = P(member < nonmember) = 5/6
    assert lm_mia.mia_auc(members, nonmembers) == pytest.approx(5 / 6)
    # MUSE: forget label 0, holdout label 1, classifier output -score
    y = [0, 0, 1, 1, 1]
    assert muse.muse_auc(members, nonmembers) == pytest.approx(roc_auc_score(y, [-1, -2, -3, -4, -1.5]))
    assert muse.muse_auc(members, nonmembers) == pytest.approx(1 - 5 / 6)
    assert muse.privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert muse.privleak(0.0024, 0.4772) == pytest.approx((0.0024 - 0.4772) / 0.4772 * 100)
    assert muse.privleak(0.3, None) is None


# -- MUSE -----------------------------------------------------------------------------------------------
def test_evaluate_muse_against_manual_computation(model, tokenizer):
    data = {
        "verbmem_f": [
            {"prompt": "The cat sat", "gt": "on the mat and the dog ran in the park every day of the year."},
            {"prompt": "Paris is the", "gt": "capital of France."},
        ],
        "knowmem_f": [{"question": "Who wrote the novel?", "answer": "Mara Velin"}],
        "knowmem_f_icl": [{"question": "Where was Tomas Reyes born?", "answer": "Lisbon"}],
        "knowmem_r": [{"question": "What is the capital of France?", "answer": "Paris"}],
        "forget": CORPUS[:2],
        "holdout": CORPUS[2:] + ["A new sentence about rivers."],
    }
    out = muse.evaluate_muse(model, tokenizer, data, oracle_auc=0.5, batch_size=2, verbmem_max_new_tokens=6)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    eos = tokenizer.eos_token_id
    f1 = []
    for r in data["verbmem_f"]:
        gen = tokenizer.decode(ref_greedy(model, text_ids(tokenizer, r["prompt"]), 6, eos))
        gt = tokenizer.decode(tokenizer(r["gt"])["input_ids"][:6], skip_special_tokens=True)
        f1.append(scorer.score(gt, gen)["rougeL"].fmeasure)
    assert out["verbmem_f"] == pytest.approx(100 * np.mean(f1))
    prompt = (
        "Question: Where was Tomas Reyes born?\nAnswer: Lisbon\n\nQuestion: Who wrote the novel?\nAnswer: "
    )
    gen = tokenizer.decode(ref_greedy(model, text_ids(tokenizer, prompt), 32, eos))
    gen = cut_at_stop(gen, ["\n\n", "\nQuestion", "Question:"])
    assert out["knowmem_f"] == pytest.approx(100 * scorer.score("Mara Velin", gen)["rougeL"].fmeasure)
    f = lm_mia.mia_scores(model, tokenizer, data["forget"], ("min_k",))["min_k"]
    h = lm_mia.mia_scores(model, tokenizer, data["holdout"], ("min_k",))["min_k"]
    auc = roc_auc_score([0] * len(f) + [1] * len(h), -np.concatenate([f, h]))
    assert out["auc"] == pytest.approx(auc)
    assert out["privleak"] == pytest.approx((auc - 0.5) / 0.5 * 100)
    assert set(out) == {"verbmem_f", "knowmem_f", "knowmem_r", "privleak", "auc"} | {
        "forget_extraction_strength", "forget_exact_memorization", "mia_loss", "mia_min_k", "mia_gradnorm",
        "_mia_nll",
    }  # fmt: skip
    assert out["mia_min_k"] == pytest.approx(1 - auc)  # no mia_reference: no reference NLLs given
    with pytest.raises(DataError, match="holdout"):
        muse.evaluate_muse(model, tokenizer, {"forget": CORPUS}, None, metrics=("privleak",))

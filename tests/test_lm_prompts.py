"""One prompt format from training to evaluation, the model's own tokenizer, and the generation protocol.

Uses the tiny model folders of tests/lm_zoo.py (a chat-template Llama and a plain GPT-2) on a TOFU-schema
folder without a tokenizer of its own.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from lm_zoo import build_tokenizer, save_model, tofu_folder_and_texts

from unlearnkit.cli import main
from unlearnkit.data.prompt_format import check_template, prompt_ids, qa_ids
from unlearnkit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from lm_zoo import ARCHITECTURES

    root = tmp_path_factory.mktemp("prompts")
    folder, texts = tofu_folder_and_texts(root / "tofu")
    models = {a: save_model(root / a, a, build_tokenizer(texts, ARCHITECTURES[a])) for a in ("llama", "gpt2")}
    return root, folder, texts, models


def _setup(folder, model_dir, **data):
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import make_setup

    cfg = load_preset("text/tofu")
    cfg["data"] = cfg["data"] | {"source": str(folder)} | data
    cfg["model"] = cfg["model"] | {"path": str(model_dir)}
    cfg["eval"] = {"batch_size": 16}
    return make_setup(cfg)


def _train_prompts(setup) -> dict[int, list[int]]:
    """Forget item id -> the prompt tokens the model trains on (labels −100 before the answer)."""
    out = {}
    cols, ids = setup.split.forget.columns, setup.split.forget.ids.tolist()
    for i, row_id in enumerate(ids):
        n = int((cols["labels"][i] != -100).nonzero()[0])
        out[row_id] = cols["input_ids"][i, :n].tolist()
    return out


@pytest.mark.parametrize(("arch", "template"), [("llama", None), ("gpt2", "Q: {question} A:")])
def test_training_and_evaluation_format_the_same_prompt(zoo, monkeypatch, arch, template):
    """The prompts the TOFU metrics generate from are the prompts of the training rows, token for token,
    with the chat template (Llama) and with data.template (GPT-2); ROUGE generates 200 tokens by default."""
    import unlearnkit.metrics.tofu as tofu
    from unlearnkit.experiment import original_model

    _, folder, _, models = zoo
    setup = _setup(folder, models[arch], **({"template": template} if template else {}))
    assert setup.data.meta["tokenizer"].name_or_path == str(models[arch])  # the model folder's tokenizer
    model = original_model(setup).model
    seen = {}

    def spy(model, tokenizer, prompts, max_new_tokens=200, batch_size=16, stop_strings=()):
        seen["prompts"], seen["max_new"] = [list(p) for p in prompts], max_new_tokens
        return ["x"] * len(prompts)

    monkeypatch.setattr(tofu, "generate_greedy", spy)
    setup.protocol.evaluate_forget(setup, model, None)
    records = setup.data.meta["eval"]["forget"]
    train = _train_prompts(setup)
    assert seen["prompts"] == [train[r["id"]] for r in records]
    assert seen["max_new"] == 200
    tok = setup.data.meta["tokenizer"]
    text = tok.decode(seen["prompts"][0])
    assert text.startswith("<s><|user|>\n") if template is None else text.startswith("<s>Q: ")


def test_muse_verbmem_generates_128_tokens_by_default(monkeypatch):
    import unlearnkit.protocols.text as text_protocols

    seen = {}

    def spy(model, tok, records, ref_auc, batch_size, verbmem_max_new_tokens, **kw):
        seen["n"] = verbmem_max_new_tokens
        return {"auc": 0.5}

    monkeypatch.setattr(text_protocols, "evaluate_muse", spy)
    text_protocols.Muse.from_section({}).score(None, None, {}, None)
    assert seen["n"] == 128
    text_protocols.Muse.from_section({"verbmem_max_new_tokens": 16}).score(None, None, {}, None)
    assert seen["n"] == 16


def test_chat_template_returning_a_batch_encoding_gives_ids(zoo):
    """transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); the prompt is its
    input_ids, equal to tokenising the rendered text."""
    _, _, texts, _ = zoo
    from lm_zoo import CHATML

    tok = build_tokenizer(texts, CHATML)
    out = tok.apply_chat_template([{"role": "user", "content": "Who?"}], add_generation_prompt=True)
    assert not isinstance(out, dict) and "input_ids" in out  # the case that used to break
    text = "<s><|user|>\nWho?</s>\n<|assistant|>\n"
    assert prompt_ids(tok, "Who?") == tok(text, add_special_tokens=False)["input_ids"]
    prompt, answer = qa_ids(tok, "Who?", " Me. ")
    assert tok.decode(answer) == "Me.</s>\n</s>"  # the assistant turn as the template renders it, + EOS
    assert tok.decode(prompt + answer) == text + "Me.</s>\n</s>"


def test_template_fields_are_checked():
    check_template("Q: {question} A:")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['q'\].*\{question\}"):
        check_template("Q: {q} A:")
    with pytest.raises(ConfigError, match="has no {question} field"):
        check_template("Answer this:")
    with pytest.raises(ConfigError, match="not a valid format string"):
        check_template("Q: {question A:")


def _cli_error(capsys, args) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress bars of from_pretrained may come first
    assert "Traceback" not in "\n".join(lines) and lines[-1].startswith("error: ")
    assert sum(line.startswith("error") for line in lines) == 1  # one line says what is wrong
    return lines[-1]


def test_bad_prompts_and_tokenizers_are_one_line_exit_2(zoo, capsys, tmp_path):
    root, folder, texts, models = zoo
    base = ["unlearn", "--preset", "text/tofu", f"data.source={folder}"]
    base += ["method.name=ga", "method.epochs=1", "--out", str(tmp_path / "o")]
    llama = f"model.path={models['llama']}"
    err = _cli_error(capsys, [*base, llama, "data.template=Q: {q} A:"])
    assert "unknown field" in err and "{question}" in err
    # a tokenizer from another model: same special ids, smaller, other vocabulary
    other = tmp_path / "other_tok"
    build_tokenizer(texts[::3], None, vocab_size=300).save_pretrained(other)
    err = _cli_error(capsys, [*base, llama, f"data.tokenizer={other}"])
    assert "not the tokenizer of the model folder" in err
    bigger = tmp_path / "big_tok"
    build_tokenizer(texts, None, vocab_size=600).save_pretrained(bigger)
    err = _cli_error(capsys, [*base, llama, f"data.tokenizer={bigger}"])
    assert "embedding rows" in err
    # a broken chat template
    broken = tmp_path / "broken"
    shutil.copytree(models["llama"], broken)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(broken)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }"
    tok.save_pretrained(broken)
    err = _cli_error(capsys, [*base, f"model.path={broken}"])
    assert "chat template fails" in err
    # a dataset folder with no tokenizer and a model trained from scratch: no silent BPE
    err = _cli_error(capsys, [*base, "model.name=tiny-llama", "model.path=null"])
    assert "data.tokenizer=bpe" in err


def test_the_tokenizer_must_fit_the_model_directly(zoo):
    from transformers import AutoModelForCausalLM

    from unlearnkit.data.tokenizer import check_vocab_fit, load_tokenizer

    _, _, texts, models = zoo
    model = AutoModelForCausalLM.from_pretrained(models["gpt2"])
    own = load_tokenizer(models["gpt2"])
    check_vocab_fit(model, own, own)
    model.resize_token_embeddings(len(own) + 64)  # padded embeddings (Qwen2, Phi-3) are fine
    check_vocab_fit(model, own)
    model.config.eos_token_id = 3
    with pytest.raises(DataError, match="eos_token_id is 2 but the model's config says 3"):
        check_vocab_fit(model, own)
    check_vocab_fit(model, own, own=True)  # the folder's own tokenizer may end turns with other ids
    model.resize_token_embeddings(300)
    with pytest.raises(DataError, match="has 400 tokens but the model has only 300 embedding rows"):
        check_vocab_fit(model, own, own=True)


def test_generation_stops_when_every_row_has_produced_eos(zoo):
    """With EOS forced as the first new token of every row, a 200-token budget costs one decoding step;
    with EOS forbidden the whole budget is generated."""
    from transformers import AutoModelForCausalLM

    from unlearnkit.data.tokenizer import load_tokenizer
    from unlearnkit.metrics.generation import generate_greedy

    _, _, _, models = zoo
    model = AutoModelForCausalLM.from_pretrained(models["gpt2"]).eval()
    tok = load_tokenizer(models["gpt2"])
    prompts = [prompt_ids(tok, q) for q in ("Who wrote it?", "Where was she born, and when?", "Why?")]
    calls, bias = [], {"eos": 0.0}

    def hook(module, args, out):
        calls.append(1)
        out.logits[..., tok.eos_token_id] += bias["eos"]
        return out

    model.register_forward_hook(hook)
    bias["eos"] = 1e4
    assert generate_greedy(model, tok, prompts, max_new_tokens=200, batch_size=3) == ["", "", ""]
    assert len(calls) == 1
    calls.clear()
    bias["eos"] = -1e4
    gens = generate_greedy(model, tok, prompts, max_new_tokens=12, batch_size=3)
    assert len(calls) == 12 and all(g for g in gens)
    assert torch.is_grad_enabled()

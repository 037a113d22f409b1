"""Tiny random causal LMs of eight real architectures, saved offline with a tokenizer, as a user brings them.

Each model is built from its config (hidden 32, 2 layers, FFN 48 so the MLP output projection is
recognisable), paired with a byte-level BPE trained on the TOFU-schema text and sized to the model's
vocabulary, and written with ``save_pretrained`` (model + tokenizer in one folder). Half of them get a
small Jinja chat template, as instruct checkpoints have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 4, 48, 512

# A ChatML-like template and a Gemma-like one ("model" turns, no system role).
CHATML = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# architecture -> chat template (None: plain "Question: ...\nAnswer:" prompts)
ARCHITECTURES = {
    "llama": CHATML,
    "gpt2": None,
    "gpt_neox": None,
    "opt": None,
    "mistral": CHATML,
    "qwen2": CHATML,
    "gemma2": GEMMA_LIKE,
    "phi3": None,
}
# The MLP output projection RMU must find in each (relative to a decoder layer).
MLP_OUT = {
    "llama": "mlp.down_proj",
    "gpt2": "mlp.c_proj",
    "gpt_neox": "mlp.dense_4h_to_h",
    "opt": "fc2",
    "mistral": "mlp.down_proj",
    "qwen2": "mlp.down_proj",
    "gemma2": "mlp.down_proj",
    "phi3": "mlp.down_proj",
}


def _config(arch: str, vocab: int, ids: dict[str, int]) -> Any:
    import transformers as tf

    common = {"vocab_size": vocab, **ids}
    llama_like = {
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": POSITIONS,
    }
    if arch == "llama":
        return tf.LlamaConfig(**llama_like, **common)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like, **common)
    if arch == "gemma2":  # heads x head_dim (4 x 16) differs from the hidden size, as in real Gemma-2
        return tf.Gemma2Config(
            **llama_like, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, **common
        )
    if arch == "phi3":
        return tf.Phi3Config(**(llama_like | {"num_key_value_heads": HEADS}), **common)
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=POSITIONS, **common
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=HIDDEN,
            ffn_dim=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            word_embed_proj_dim=HIDDEN,
            **common,
        )
    raise ValueError(arch)


def build_tokenizer(texts: list[str], chat_template: str | None, vocab_size: int = 400) -> Any:
    from unlearnkit.data.tokenizer import train_tokenizer

    tok = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=POSITIONS)
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def save_model(folder: Path, arch: str, tok: Any, seed: int = 0) -> Path:
    """A random ``arch`` model sized to ``tok``, saved with the tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM

    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tok), ids))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tofu_folder_and_texts(path: Path, n_authors: int = 10) -> tuple[Path, list[str]]:
    """A TOFU-schema folder (no tokenizer in it) and the text a tokenizer for it is trained on."""
    from unlearnkit.data.synthetic_authors import generate_tofu, write_tofu_folder
    from unlearnkit.data.tofu import tofu_texts

    folder = write_tofu_folder(path, n_authors=n_authors, questions_per_author=4, n_perturbed=2)
    texts = tofu_texts(generate_tofu(n_authors, 4, 2, 0)) + [CHATML, GEMMA_LIKE]
    return folder, texts

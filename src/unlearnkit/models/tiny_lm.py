"""Tiny random causal LMs (Llama / GPT-2 configs) sized for CPU demos and tests.

The vocabulary comes from the dataset's tokenizer (``data.meta["tokenizer"]``). Defaults follow the
measured 2-core recipe: hidden 64, 2 layers, 4 heads, FFN 256, tied embeddings (~0.2M parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.errors import ConfigError
from unlearnkit.registry import register_model


def _vocab(data: Any) -> tuple[int, Any]:
    tok = getattr(data, "meta", {}).get("tokenizer")
    if tok is None:
        raise ConfigError("a text model needs the dataset's tokenizer (data.meta['tokenizer'])")
    return len(tok), tok


def llama_for_tokenizer(
    tok: Any, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 256, max_positions: int = 128
) -> nn.Module:
    """A random ``LlamaForCausalLM`` whose vocabulary and special ids match ``tok``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


@register_model("tiny-llama")
def build_tiny_llama(
    data: Any, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 256, max_positions: int = 128
) -> nn.Module:
    return llama_for_tokenizer(_vocab(data)[1], hidden, layers, heads, ffn, max_positions)


@register_model("tiny-gpt2")
def build_tiny_gpt2(
    data: Any, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 128
) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, tok = _vocab(data)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg)


@register_model("hf")
def load_hf_causal_lm(data: Any, path: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """A pretrained causal LM from a local folder (or hub id when online), via AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    if not path:
        raise ConfigError("model.name=hf needs model.path=FOLDER (a save_pretrained folder)")
    looks_local = str(path).startswith((".", "/", "~")) or Path(path).exists()
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        raise ConfigError(
            f"model.path={path!r} is not a Hugging Face model folder (no config.json there); "
            "pass a folder written by save_pretrained, or a hub id when online"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:  # not found offline, no weights file, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not load the causal LM {path!r}: {first}") from exc

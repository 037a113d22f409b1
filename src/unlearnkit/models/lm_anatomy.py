"""Where the parts of a Hugging Face causal LM are, found from the model itself (not from names).

:func:`mlp_output_projection` finds a decoder layer's MLP output projection, the module that maps the
FFN width back to the residual stream: Llama/Mistral/Qwen2/Gemma2/Phi-3 ``mlp.down_proj``, GPT-2
``mlp.c_proj``, GPT-NeoX ``mlp.dense_4h_to_h``, OPT ``fc2``. Rule: among the layer's linear modules
outside attention (names containing ``attn``/``attention``), those whose output width is the hidden size;
of these, the ones whose input width is the config's FFN width (``intermediate_size``, ``n_inner``,
``ffn_dim``) when any is; then the last in definition order (the output projection comes after the
input/gate projections in every architecture above). Linear modules are ``nn.Linear``, GPT-2's
``Conv1D`` and peft's LoRA wrappers (whose inner ``base_layer``/``lora_*`` modules are not candidates).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from unlearnkit.errors import ConfigError

_ATTENTION = ("attn", "attention")


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(input width, output width) of a linear-like module, else None."""
    if hasattr(module, "base_layer") and hasattr(module, "in_features"):  # peft LoRA wrapper
        return int(module.in_features), int(module.out_features)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight [in, out]
        return int(module.weight.shape[0]), int(module.nf)
    return None


def hidden_size(config: Any) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError("the model's config names no hidden size (hidden_size / n_embd / d_model)")


def ffn_size(config: Any) -> int | None:
    """The MLP's inner width from the config, when it names one."""
    for name in ("intermediate_size", "n_inner", "ffn_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def linear_modules(layer: nn.Module) -> list[tuple[str, tuple[int, int]]]:
    """(name relative to ``layer``, dims) of its outermost linear-like modules, in definition order."""
    out: list[tuple[str, tuple[int, int]]] = []
    for name, mod in layer.named_modules():
        if not name or any(name.startswith(n + ".") for n, _ in out):
            continue
        dims = linear_dims(mod)
        if dims is not None:
            out.append((name, dims))
    return out


def mlp_output_projection(layer: nn.Module, config: Any) -> str:
    """Name (relative to ``layer``) of the layer's MLP output projection; see the module docstring."""
    hidden, inner = hidden_size(config), ffn_size(config)
    linears = linear_modules(layer)
    outside = [(n, d) for n, d in linears if not any(a in n.lower() for a in _ATTENTION)]
    to_hidden = [(n, d) for n, d in outside if d[1] == hidden]
    if inner is not None and any(d[0] == inner for _, d in to_hidden):
        to_hidden = [(n, d) for n, d in to_hidden if d[0] == inner]
    else:
        to_hidden = [(n, d) for n, d in to_hidden if d[0] != hidden] or to_hidden
    if not to_hidden:
        shown = ", ".join(f"{n} ({d[0]}->{d[1]})" for n, d in linears) or "none"
        raise ConfigError(
            f"no MLP output projection (a linear map to the hidden size {hidden} outside attention) in "
            f"this decoder layer; its linear modules: {shown}. Set method.trainable to a regex over "
            "parameter names"
        )
    return to_hidden[-1][0]


def parameter_patterns(model: nn.Module) -> list[str]:
    """The model's parameter names with layer numbers replaced by ``N``, deduplicated, in order: a short,
    complete list to show in an error."""
    seen: dict[str, None] = {}
    for name, _ in model.named_parameters():
        seen.setdefault(re.sub(r"\.\d+\.", ".N.", name), None)
    return list(seen)

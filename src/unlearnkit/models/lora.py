"""Optional LoRA adapters (``peft``) for any method on a Hugging Face model.

``model.lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}`` wraps the model to
unlearn so that only the low-rank adapters train (the base weights are frozen); after unlearning the
adapters are merged back, so the saved model is a plain model of the original architecture.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unlearnkit.errors import ConfigError, UnlearnkitError

LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


def check_lora_spec(spec: Any) -> None:
    """Validate a ``model.lora`` section before any work starts (peft's own errors come late and raw)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"model.lora must be a mapping like {{r: 8, alpha: 16}}, got {spec!r}")
    unknown = set(spec) - LORA_KEYS
    if unknown:
        raise ConfigError(f"unknown model.lora option(s) {sorted(unknown)}: use {sorted(LORA_KEYS)}")
    for key in ("r", "alpha"):
        v = spec.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"model.lora.{key} must be a positive integer, got {v!r}")
    d = spec.get("dropout", 0.0)
    if not isinstance(d, int | float) or not 0.0 <= float(d) < 1.0:
        raise ConfigError(f"model.lora.dropout must lie in [0, 1), got {d!r}")


def apply_lora(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    check_lora_spec(spec)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise UnlearnkitError("LoRA needs peft: pip install 'unlearnkit[text]'") from exc
    if not hasattr(model, "config"):
        raise ConfigError("model.lora works on Hugging Face models (with a .config); this model has none")
    cfg = LoraConfig(
        r=int(spec.get("r", 8)),
        lora_alpha=int(spec.get("alpha", 16)),
        lora_dropout=float(spec.get("dropout", 0.0)),
        target_modules=spec.get("target_modules") or "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold trained adapters into the base weights and return the plain model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

"""UCE: Unified Concept Editing, a closed-form edit of the cross-attention projections (Gandikota et al.,
WACV 2024; reference code ``trainscripts/uce_sd_erase.py``).

Every cross-attention key and value projection W (``attn2.to_k`` / ``attn2.to_v``) is replaced by the
minimiser of

    λ‖W* − W‖² + s_e Σ_{i∈E} ‖W* c_i − v*_i‖² + s_p Σ_{j∈P} ‖W* c_j − W c_j‖²,

whose normal equations give the closed form (UCE Eq. 7 / the erase–preserve update):

    W* = (λW + s_e Σ_{i∈E} v*_i c_iᵀ + s_p Σ_{j∈P} (W c_j) c_jᵀ)
         · (λI + s_e Σ_{i∈E} c_i c_iᵀ + s_p Σ_{j∈P} c_j c_jᵀ)⁻¹.

- E are the erased concepts (the captions of the forget set, or ``concepts``), P the preserved ones (the
  captions of the retain set, or ``preserve``); c is the text encoder's output embedding of a concept and
  v*_i = W_old c_guide(i) the original projection of the guide prompt (``guide``, default ``""``: the empty
  prompt, so the concept is mapped to "nothing in particular").
- ``token="last"`` (the default, as in the reference code): one column per prompt, the embedding at the last
  word token (the position just before the end-of-text token; the empty prompt's is the start token). With a
  causal text encoder this token has attended to every word of the prompt, so it is the paper's summary of
  the concept, and the edit is small (one constraint per concept).
  ``token="all"``: one column per position of the whole padded context, the concept's position k paired with
  the guide's position k — every state the UNet's cross-attention actually reads (the UNet has no padding
  mask), so the concept's whole context is pushed to the guide's. Stronger, but it spends more of the
  layer's d dimensions (L columns per prompt).
- No gradient steps: the UNet's other tensors and the text encoder are untouched. Solved in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from unlearnkit.engine.loop import FitResult
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.models.t2i import encode_prompts
from unlearnkit.registry import register_method

TOKEN_MODES = ("last", "all")


def uce_closed_form(
    w: torch.Tensor,
    c_erase: torch.Tensor,
    v_target: torch.Tensor,
    c_preserve: torch.Tensor,
    lamb: float = 0.5,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """UCE's edited weight W* = (λW + s_e V* C_eᵀ + s_p W C_p C_pᵀ)(λI + s_e C_e C_eᵀ + s_p C_p C_pᵀ)⁻¹.

    ``w`` is ``[out, d]``; the concept embeddings are *columns*: ``c_erase`` ``[d, n_e]``, ``v_target``
    ``[out, n_e]`` (v*_i = W_old c_guide(i)), ``c_preserve`` ``[d, n_p]`` (either may have 0 columns).
    Computed in float64 and returned in ``w``'s dtype.
    """
    dt = torch.float64
    w64, ce, v, cp = (t.to(dt) for t in (w, c_erase, v_target, c_preserve))
    d = w64.shape[1]
    if ce.shape[0] != d or cp.shape[0] != d or v.shape != (w64.shape[0], ce.shape[1]):
        raise UnlearnkitError(
            f"UCE shapes disagree: W {tuple(w.shape)}, C_e {tuple(c_erase.shape)}, "
            f"V* {tuple(v_target.shape)}, C_p {tuple(c_preserve.shape)}"
        )
    lhs = lamb * w64 + erase_scale * v @ ce.T + preserve_scale * (w64 @ cp) @ cp.T
    gram = lamb * torch.eye(d, dtype=dt) + erase_scale * ce @ ce.T + preserve_scale * cp @ cp.T
    try:
        # W* B = A with B symmetric  <=>  B W*ᵀ = Aᵀ
        out = torch.linalg.solve(gram, lhs.T).T
    except RuntimeError as exc:  # torch raises a LinAlgError (a RuntimeError) on a singular B
        raise UnlearnkitError(
            f"the UCE system λI + s_e ΣccT + s_p ΣccT is singular (λ={lamb}); use method.lamb > 0"
        ) from exc
    return out.to(w.dtype)


def cross_attention_projections(unet: nn.Module) -> dict[str, nn.Linear]:
    """``{name: module}`` of every ``attn2.to_k`` and ``attn2.to_v`` linear layer of a diffusers UNet."""
    found: dict[str, nn.Linear] = {}
    for name, mod in unet.named_modules():
        if name.split(".")[-1] != "attn2":
            continue
        for proj in ("to_k", "to_v"):
            lin = getattr(mod, proj, None)
            if isinstance(lin, nn.Linear):
                found[f"{name}.{proj}"] = lin
    if not found:
        raise UnlearnkitError(
            "UCE found no attn2.to_k / attn2.to_v layers: is this a UNet with cross-attention?"
        )
    return found


def token_columns(states: torch.Tensor, ids: torch.Tensor, eos_id: int | None, token: str) -> torch.Tensor:
    """Concept columns ``[d, n]`` from encoder states ``[B, L, d]`` of token ids ``[B, L]``.

    ``"last"``: the state just before each prompt's first end-of-text token (the start token for the empty
    prompt; the last position when no end token is found). ``"all"``: every one of the L positions.
    """
    if token == "all":
        return states.reshape(-1, states.shape[-1]).T
    if token != "last":
        raise ConfigError(f"token must be one of {TOKEN_MODES}, got {token!r}")
    length = ids.shape[1]
    if eos_id is None:
        pos = torch.full((len(ids),), length - 1, dtype=torch.long)
    else:
        is_eos = (ids == eos_id).long()
        first = torch.where(is_eos.any(1), is_eos.argmax(1), torch.full_like(is_eos[:, 0], length))
        pos = (first - 1).clamp(min=0)
    return states[torch.arange(len(ids)), pos.to(states.device)].T


def unique_rows(ids: torch.Tensor) -> torch.Tensor:
    """The distinct rows of a ``[N, L]`` id tensor, in order of first appearance."""
    seen: dict[tuple[int, ...], None] = {}
    for row in ids.tolist():
        seen.setdefault(tuple(row), None)
    return torch.as_tensor(list(seen), dtype=torch.long).reshape(-1, ids.shape[1])


@dataclass
class UCEConfig(MethodConfig):
    """Reference defaults: λ=0.5, s_e=s_p=1, guide "" (for objects; "art" for styles), last-token columns.

    ``concepts`` overrides the erased prompts (default: the forget set's captions); ``preserve`` the
    preserved ones (default: the retain set's captions; ``[]`` preserves nothing but the λ‖W*−W‖² anchor).
    The optimizer fields inherited from MethodConfig are unused: UCE takes no gradient steps.
    """

    lamb: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    guide: str = ""
    token: str = "last"
    concepts: list[str] | None = None
    preserve: list[str] | None = None

    def check(self) -> None:
        super().check()
        if self.lamb < 0:
            raise ConfigError(f"lamb (λ) must be >= 0, got {self.lamb}")
        if self.erase_scale < 0 or self.preserve_scale < 0:
            raise ConfigError(
                f"erase_scale and preserve_scale must be >= 0, got {self.erase_scale}, {self.preserve_scale}"
            )
        if self.token not in TOKEN_MODES:
            raise ConfigError(f"token must be one of {TOKEN_MODES}, got {self.token!r}")
        if self.concepts is not None and not self.concepts:
            raise ConfigError(
                "concepts is an empty list: name at least one prompt to erase (or leave it unset)"
            )


@register_method("uce")
class UCE(Method):
    """Closed-form erasure: edit every cross-attention W_k, W_v so concept keys/values become the guide's."""

    families = ("diffusion",)
    paper = (
        "Gandikota et al., WACV 2024; W* = (λW + s_e Σ v*_i c_iᵀ + s_p Σ W c_j c_jᵀ)"
        "(λI + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹, v*_i = W c_guide"
    )
    Config = UCEConfig

    def _prompt_ids(self, model: nn.Module, prompts: list[str]) -> torch.Tensor:
        return encode_prompts(model, list(prompts)).cpu()

    def concept_ids(self, task: Task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids ``[n, L]`` of the erased prompts, their guides, and the preserved prompts."""
        model, split = task.model, task.split
        if self.cfg.concepts is not None:
            erase = self._prompt_ids(model, self.cfg.concepts)
        else:
            if "input_ids" not in split.forget.columns:
                raise UnlearnkitError("UCE needs captions: the forget set has no input_ids column")
            erase = unique_rows(split.forget.columns["input_ids"])
        if self.cfg.preserve is not None:
            keep = self._prompt_ids(model, self.cfg.preserve) if self.cfg.preserve else erase[:0]
        elif "input_ids" in split.retain.columns:
            keep = unique_rows(split.retain.columns["input_ids"])
            keep = keep[~(keep[:, None, :] == erase[None]).all(-1).any(1)]  # never preserve an erased one
        else:
            keep = erase[:0]
        guide = self._prompt_ids(model, [self.cfg.guide]).expand(len(erase), -1)
        return erase, guide, keep

    def run(self, task: Task) -> FitResult:
        self.task = task
        self.cfg.check()
        t0 = time.perf_counter()
        model = task.model
        dev = task.engine.device
        model.to(dev)
        erase, guide, keep = self.concept_ids(task)
        tok = getattr(model, "tokenizer", None)
        eos = getattr(tok, "eos_token_id", None) if tok is not None else None
        if eos is None:
            eos = getattr(model.text_encoder.config, "eos_token_id", None)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ids = torch.cat([erase, guide, keep]).to(dev)
                states = model.encode(ids).double()
                n_e = len(erase)
                cols = {
                    "erase": token_columns(states[:n_e], erase, eos, self.cfg.token),
                    "guide": token_columns(states[n_e : 2 * n_e], guide, eos, self.cfg.token),
                    "keep": token_columns(states[2 * n_e :], keep, eos, self.cfg.token),
                }
                before, after = 0.0, 0.0
                layers = cross_attention_projections(model.unet)
                for lin in layers.values():
                    w = lin.weight.detach()
                    w64 = w.double()
                    v_star = w64 @ cols["guide"]
                    new = uce_closed_form(
                        w64, cols["erase"], v_star, cols["keep"],
                        self.cfg.lamb, self.cfg.erase_scale, self.cfg.preserve_scale,
                    )  # fmt: skip
                    before += float(((w64 @ cols["erase"] - v_star) ** 2).sum())
                    after += float(((new @ cols["erase"] - v_star) ** 2).sum())
                    lin.weight.copy_(new.to(w.dtype))
        finally:
            model.train(was_training)
        model.eval()
        rec = {
            "epoch": 0,
            "step": 0,
            "phase": "uce",
            "loss": after,
            "layers": len(layers),
            "erase_columns": int(cols["erase"].shape[1]),
            "preserve_columns": int(cols["keep"].shape[1]),
            "erase_residual_before": before,
            "erase_residual_after": after,
        }
        return FitResult(steps=0, seconds=time.perf_counter() - t0, history=[rec])

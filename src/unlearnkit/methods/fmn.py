"""FMN / Forget-Me-Not: attention re-steering (Zhang et al., 2023, arXiv 2303.17591; reference code
``SHI-Labs/Forget-Me-Not``, ``src/train_attn.py`` and ``configs/attn.yaml``).

Every cross-attention layer ``attn2`` of the UNet computes A = softmax(Q Kᵀ/√d) over the text tokens. FMN
records, in every such layer ℓ, head h and image position i, the attention probabilities at the positions
P(c) of the concept's tokens in the prompt, and minimises their Frobenius norm (the reference's
``torch.cat(attn_probs).norm()``):

    L(θ) = ‖ cat_ℓ [ A^ℓ_θ(x_t, c, t)[:, :, P(c)] ] ‖_F = ( Σ_ℓ Σ_{b,h,i} Σ_{j∈P(c)} (A^ℓ_{bhij})² )^½,

so the UNet stops attending to the concept's words. The denoising prediction itself is not in the loss.

- x_t: a forget-set image noised to a random t (``xt_source="data"``, the reference's real images of the
  concept), or pure scaled noise (``xt_source="noise"``, the reference's ``no_real_image``: x_0 = 0; always so
  for a prompt set, which has no images). A latent model's images are its VAE latents. It is
  conditioned on the example's own caption, or on ``concept`` for every example.
- P(c): the concept's token positions in the tokenized prompt. By default every word token of the prompt
  except the filler words ``filler_words`` (a, an, the, of) and the special tokens: for
  ``<s> a red circle </s> <pad>...`` the positions of "red" and "circle". ``concept_words`` names the
  concept's words instead (each word's token sequence is matched wherever it occurs in the prompt, as the
  reference matches its concept snippet). ``use_pooler`` adds the first end-of-text token's position (the
  reference's pooler token). A prompt with no concept token is a ConfigError.
- Trained: the whole UNet, or only its cross-attention (every parameter with ``attn2`` in its name) with
  ``only_optimize_ca``; only the query and key projections (and, for the whole UNet, the layers feeding the
  queries) receive a gradient. The text encoder is never trained.
- The recording processors compute exactly what diffusers' default ``AttnProcessor`` computes (attention
  probabilities via ``Attention.get_attention_scores``); they are installed in ``prepare`` and the UNet's
  own processors are put back in ``finalize`` — and by ``run`` also when the loop fails, so an exception
  never leaves them installed. (Calling ``prepare`` without ``finalize`` by hand leaves them in place.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unlearnkit.engine.loop import Phase, StepContext
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.models.t2i import clean_sample, encode_prompts
from unlearnkit.registry import register_method

FILLER_WORDS = ("a", "an", "the", "of")
XT_SOURCES = ("data", "noise")


# -- concept token positions ---------------------------------------------------------------------------------
def _word_ids(tokenizer: Any, words: list[str] | tuple[str, ...], what: str) -> list[tuple[str, list[int]]]:
    """Each word's token ids (no special tokens); a word the tokenizer does not know is a ConfigError."""
    unk = getattr(tokenizer, "unk_token_id", None)
    out = []
    for w in words:
        ids = list(tokenizer(w, add_special_tokens=False)["input_ids"])
        if not ids or (unk is not None and unk in ids):
            raise ConfigError(
                f"{what} {w!r} is not in the tokenizer's vocabulary; name words the prompts contain "
                f"(method.{what.replace(' ', '_')}s)"
            )
        out.append((w, ids))
    return out


def _occurrences(row: list[int], seq: list[int]) -> list[int]:
    n = len(seq)
    return [i for i in range(len(row) - n + 1) if row[i : i + n] == seq]


def concept_positions(
    input_ids: torch.Tensor,
    tokenizer: Any,
    concept_words: list[str] | None = None,
    filler_words: list[str] | tuple[str, ...] = FILLER_WORDS,
    use_pooler: bool = False,
) -> torch.Tensor:
    """The concept's token positions P(c), a bool mask ``[B, L]`` over the prompts ``input_ids [B, L]``.

    Without ``concept_words``: every non-special token that is not one of ``filler_words``. With them: every
    occurrence of each word's token sequence. ``use_pooler`` adds each prompt's first end-of-text token. A
    prompt without any concept token is a ConfigError (naming the prompt and the options to fix it).
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    eos = getattr(tokenizer, "eos_token_id", None)
    targets = _word_ids(tokenizer, concept_words, "concept word") if concept_words is not None else None
    fillers = _word_ids(tokenizer, filler_words, "filler word") if targets is None else []
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for r, row in enumerate(input_ids.tolist()):
        if targets is not None:
            for _, seq in targets:
                for i in _occurrences(row, seq):
                    mask[r, i : i + len(seq)] = True
        else:
            for i, tok in enumerate(row):
                mask[r, i] = tok not in special
            for _, seq in fillers:
                for i in _occurrences(row, seq):
                    mask[r, i : i + len(seq)] = False
        if not bool(mask[r].any()):
            shown = tokenizer.decode(row, skip_special_tokens=True)
            if targets is not None:
                why = f"none of method.concept_words {concept_words} occurs in it"
            else:
                why = f"it has no word besides the filler words {list(filler_words)}"
            raise ConfigError(
                f"FMN found no concept token in the prompt {shown!r}: {why}. Set method.concept to the "
                "prompt to erase and/or method.concept_words to its words"
            )
        if use_pooler and eos is not None and eos in row:
            mask[r, row.index(eos)] = True
    return mask


# -- recording the cross-attention probabilities -------------------------------------------------------------
class AttentionRecorder:
    """Collects softmax(QKᵀ/√d) at the concept positions from every recording processor it installed.

    ``install(unet)`` puts a :class:`RecordingAttnProcessor` on every ``attn2`` module (the UNet's own
    processors are kept); ``remove()`` puts them back (idempotent). Recording happens only between
    ``start(positions)`` and ``stop()``; otherwise the processors are plain attention.
    """

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None
        self.probs: list[torch.Tensor] = []
        self.shares: list[torch.Tensor] = []
        self.names: list[str] = []
        self._saved: dict[str, tuple[nn.Module, Any]] = {}

    # installation
    def install(self, unet: nn.Module) -> int:
        if self._saved:
            raise UnlearnkitError("the FMN attention recorder is already installed: remove() it first")
        for name, mod in cross_attention_modules(unet).items():
            self._saved[name] = (mod, mod.processor)
            mod.set_processor(RecordingAttnProcessor(self, name))
        return len(self._saved)

    def remove(self) -> None:
        for mod, proc in self._saved.values():
            mod.set_processor(proc)
        self._saved = {}
        self.stop()

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    # recording
    def start(self, positions: torch.Tensor) -> None:
        self.positions = positions.bool()
        self.probs, self.shares, self.names = [], [], []

    def stop(self) -> None:
        self.positions = None
        self.probs, self.shares, self.names = [], [], []

    def record(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """``probs`` ``[B·heads, Q, L]`` in diffusers' head-major-within-batch order (index b·heads + h)."""
        if self.positions is None:
            return
        pos = self.positions.to(probs.device)
        if probs.shape[0] != pos.shape[0] * heads or probs.shape[-1] != pos.shape[1]:
            raise UnlearnkitError(
                f"FMN recorded attention of shape {tuple(probs.shape)} in {name} but holds concept positions "
                f"for {pos.shape[0]} prompt(s) of {pos.shape[1]} tokens with {heads} heads: the batch "
                "passed to the UNet differs from the one the positions were computed for"
            )
        sel = pos.repeat_interleave(heads, dim=0)[:, None, :].expand_as(probs)
        self.probs.append(probs.masked_select(sel))
        self.shares.append((probs * sel).sum(-1).mean().detach())
        self.names.append(name)

    def loss(self) -> torch.Tensor:
        """‖cat(recorded probabilities)‖_F (the reference's ``torch.cat(attn_probs).norm()``)."""
        if not self.probs:
            raise UnlearnkitError(
                "FMN recorded no cross-attention: run the UNet between start() and loss(), with the "
                "recorder installed"
            )
        return torch.cat(self.probs).norm()

    def share(self) -> float:
        """Mean over layers, heads and image positions of the attention share on the concept tokens."""
        return float(torch.stack(self.shares).mean()) if self.shares else 0.0


class RecordingAttnProcessor:
    """diffusers' default attention (``AttnProcessor``: explicit softmax(QKᵀ·scale) via
    ``get_attention_scores``, then ``A V`` and the output projection) that hands A to a recorder."""

    def __init__(self, recorder: AttentionRecorder, name: str) -> None:
        self.recorder = recorder
        self.name = name

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_like = hidden_states.ndim == 4
        if image_like:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        n, length, _ = source.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, n)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        q = attn.head_to_batch_dim(query)
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)
        self.recorder.record(self.name, probs, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if image_like:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every cross-attention ``attn2`` module of a diffusers UNet."""
    found = {n: m for n, m in unet.named_modules() if n.split(".")[-1] == "attn2" and hasattr(m, "processor")}
    if not found:
        raise UnlearnkitError(
            "FMN found no attn2 cross-attention modules: is this a UNet with cross-attention?"
        )
    return found


def fmn_param_names(model: nn.Module, only_optimize_ca: bool) -> list[str]:
    """Names (in ``model``) of the parameters FMN trains: the UNet's, or only its ``attn2`` ones."""
    names = [
        n
        for n, _ in model.named_parameters()
        if n.startswith("unet.") and (not only_optimize_ca or "attn2" in n)
    ]
    if not names:
        raise UnlearnkitError("FMN found no UNet parameters to train: is this a T2IModel with a UNet?")
    return names


# -- the method ----------------------------------------------------------------------------------------------
@dataclass
class FMNConfig(MethodConfig):
    """Reference defaults (``configs/attn.yaml``, SD-2.1-base): 35 steps of batch 1 (one image each), AdamW lr
    2e-6, weight decay 0.01, gradient clipping at 1.0, constant schedule, the whole UNet
    (``only_optimize_ca: false``), ``use_pooler: true``; the paper first learns the concept as a textual-
    inversion token (``use_ti``), which has no counterpart here (the concept is a caption of known words).

    Here, tuned on t2i-shapes (erase "a red circle", 16 samples per prompt, seed 0; the full table is in
    ``presets/diffusion/fmn.yaml``): cross-attention only, AdamW lr 1e-3, 1 pass over the concept's 300
    images in batches of 16 (19 steps, ~1.3 s), no EOT term, gave UA 56% / utility 93% (3 seeds: 52±4% /
    92±2%), pre-ASR 25% and ASR 87.5% under UnlearnDiffAtk; with the EOT term 50% / 90%. The window is
    narrow: lr 1.5e-3 gave 81% / 59%, the whole UNet at lr 1e-4 50% / 34%. (The original: UA 6%, utility 99%.)
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    batch_size: int | None = None  # the batch-size rule: methods/base.py MethodConfig
    only_optimize_ca: bool = True
    use_pooler: bool = False
    concept: str | None = None
    concept_words: list[str] | None = None
    filler_words: list[str] = field(default_factory=lambda: list(FILLER_WORDS))
    xt_source: str = "data"

    def check(self) -> None:
        super().check()
        if self.xt_source not in XT_SOURCES:
            raise ConfigError(f"xt_source must be one of {XT_SOURCES}, got {self.xt_source!r}")
        if self.concept is not None and not self.concept.strip():
            raise ConfigError(
                "concept is empty: give the prompt to erase (e.g. 'a red circle'), or null to condition on "
                "each forget example's own caption"
            )
        if self.concept_words is not None and (
            not self.concept_words or not all(isinstance(w, str) and w.strip() for w in self.concept_words)
        ):
            raise ConfigError(
                f"concept_words must be a non-empty list of words (e.g. ['red', 'circle']) or null for the "
                f"prompt's non-filler words, got {self.concept_words!r}"
            )
        if not all(isinstance(w, str) and w.strip() for w in self.filler_words):
            raise ConfigError(f"filler_words must be a list of words, got {self.filler_words!r}")
        for name in ("only_optimize_ca", "use_pooler"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")


@register_method("fmn")
class FMN(Method):
    """Forget-Me-Not: minimise the cross-attention on the concept's tokens (Zhang et al. 2023)."""

    families = ("diffusion",)
    paper = "Zhang et al., arXiv 2303.17591 (Forget-Me-Not); L = ‖cat_ℓ softmax(QKᵀ/√d)[:, :, P(c)]‖_F"
    Config = FMNConfig

    def __init__(self, cfg: FMNConfig | None = None) -> None:
        super().__init__(cfg)
        self.recorder = AttentionRecorder()
        self._positions: dict[tuple[int, ...], torch.Tensor] = {}

    def streams(self, task: Task):
        return {"forget": task.split.forget}

    def _tokenizer(self, task: Task) -> Any:
        tok = getattr(task.model, "tokenizer", None) or getattr(task.family, "tokenizer", None)
        if tok is None:
            raise UnlearnkitError(
                "FMN needs the tokenizer to find the concept's tokens: the T2I model has none"
            )
        return tok

    def prepare(self, task: Task) -> None:
        model = task.model
        self.cfg.check()
        if getattr(model.unet, "is_gradient_checkpointing", False):  # the recompute would not record again
            raise ConfigError(
                "fmn reads the attention probabilities its processors record in the forward pass, which "
                "gradient checkpointing recomputes without recording: remove model.gradient_checkpointing"
            )
        self._tok = self._tokenizer(task)
        self._positions = {}
        self._concept = encode_prompts(model, [self.cfg.concept]) if self.cfg.concept is not None else None
        # find every prompt's concept positions now, so a prompt without concept tokens fails before training
        if self._concept is not None:
            self.positions(self._concept)
        elif task.split is not None and "input_ids" in task.split.forget.columns:
            self.positions(torch.unique(task.split.forget.columns["input_ids"], dim=0))
        names = set(fmn_param_names(model, self.cfg.only_optimize_ca))
        self.train_only(model, names)
        self.recorder.install(model.unet)

    def cleanup(self, task: Task) -> None:  # also after a failure: no recording processors left behind
        self.recorder.remove()
        super().cleanup(task)

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """P(c) of each prompt row of ``ids`` (a bool mask ``[B, L]``, cached per distinct prompt)."""
        rows = []
        for row in ids.cpu():
            key = tuple(row.tolist())
            if key not in self._positions:
                self._positions[key] = concept_positions(
                    row[None], self._tok, self.cfg.concept_words, self.cfg.filler_words, self.cfg.use_pooler
                )[0]
            rows.append(self._positions[key])
        return torch.stack(rows)

    def loss(self, b, ctx: StepContext):
        batch = b["forget"]
        model = self.model
        x0 = clean_sample(model, batch)
        n, dev = len(batch["id"]), next(model.parameters()).device
        if x0 is None:  # a prompt set: no images, the reference's no_real_image
            x0 = torch.zeros(n, *model.sample_shape, device=dev)
        x0 = x0.to(dev)
        ids = batch["input_ids"] if self._concept is None else self._concept.expand(n, -1)
        ids = ids.to(dev)
        t = torch.randint(0, model.num_train_timesteps, (n,), generator=ctx.generator).to(dev)
        noise = torch.randn(x0.shape, generator=ctx.generator).to(dev)
        x_t = model.add_noise(x0 if self.cfg.xt_source == "data" else torch.zeros_like(x0), noise, t)
        with torch.no_grad():  # the text encoder is frozen
            context = model.encode(ids)
        self.recorder.start(self.positions(ids))
        try:
            model(x_t, t, context=context)  # the prediction is unused: only the recorded attention matters
            loss = self.recorder.loss()
            share = self.recorder.share()
        finally:
            self.recorder.stop()
        return loss, {"fmn_norm": float(loss.detach()), "concept_attn": share}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("fmn", ("forget",), self.loss)]

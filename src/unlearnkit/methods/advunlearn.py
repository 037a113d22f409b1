"""AdvUnlearn: robust concept erasure by adversarial training of the text encoder
(Zhang et al., NeurIPS 2024).

Bi-level problem (paper Eq. 5–6), with φ the text encoder's trainable weights, c the concept prompt, δ an
adversarial soft prefix (:func:`unlearnkit.attacks.prompt.soft_prompt_attack`):

    min_φ  ‖ε_θ(x_t, TE_φ([δ*; c]), t) − ε*(x_t, c, t)‖²
           + γ ‖ε_θ(x_r, TE_φ(c_r), t) − ε_θ(x_r, TE_o(c_r), t)‖²
    δ*   = argmin_δ ‖ε_θ(x_t, TE_φ([δ; c]), t) − ε_θ(x_t, TE_o(c), t)‖²        (the attacker restores c)
    ε*   = ε_θ(x_t, TE_o(∅), t) − η (ε_θ(x_t, TE_o(c), t) − ε_θ(x_t, TE_o(∅), t))   (ESD's target)

- Only the text encoder trains (``train_layers``: ``"all"`` = every transformer layer + the final layer norm,
  the reference's ``text_encoder_full``; ``"attn"`` / ``"mlp"``; or a regex on names inside the encoder).
  Token and position embeddings stay frozen.
- ONE UNet, frozen (``requires_grad_(False)``, no copy, never a ``.grad``): teacher and student differ only
  in the text encoder, so the teacher's text states TE_o(c) for the fixed prompts (∅, the concept captions,
  the retain captions) are computed once in ``prepare`` and cached — no second model is held at all.
  The adversarial term is back-propagated (``StepContext.backward``) before the retain pass runs, so only
  one UNet graph is alive at a time: peak memory 1.11× ESD-x's (1.35× when both graphs were kept;
  ``benchmarks/advunlearn_cost.py``), iteration time 2.9×. ``retain_chunk`` splits the retain pass into
  micro-batches, each back-propagated at once (the same gradient; the retain batch of 5 is otherwise the
  largest graph of the step); its default ``"auto"`` does so, one prompt at a time, on an SD-sized UNet.
  At the SD v1.4 size, 512 px, on a CPU with ``retain_chunk=1``: 4.04× ESD-x's
  iteration time, 1.16× its peak memory (``benchmarks/sd_cost.py``).
- The utility term follows the reference's ``reg`` mode (γ = 0.5 for objects, AdvUnlearn issue #7): retain
  captions, with x_r a retain image noised to a random t (``xt_source="data"``, like our ESD default; the
  reference samples x_r with DDIM). Because the unconditional branch of CFG also goes through TE_φ, the
  empty caption is anchored too, and with ``text_anchor=n`` so are up to n retain captions per step
  (drawn from the distinct ones): + γ Σ_{c_a ∈ {∅} ∪ A} ‖TE_φ(c_a) − TE_o(c_a)‖² / |…| (encoder only, cached
  teacher states, no UNet pass). Keeping TE_φ(c_r) = TE_o(c_r) is sufficient for the ε-space term to vanish.
- Inner attack: ``attack_steps`` signed-gradient steps (``advunlearn_fast``: a single FGSM-like step) on
  ``attack_tokens`` = k prefix vectors, warm-started from the previous outer step's δ
  (``attack_init="latest"``, the code default) or from random vocabulary tokens (``"random"``); the attack
  reuses the teacher prediction ε_θ(x_t, TE_o(c), t) already computed for ε*. ``attack_length="uniform"``
  draws the prefix length L ~ U{0..k} at every outer step (δ[:L] is attacked and trained on; L = 0 is the
  clean prompt), ``"fixed"`` always uses k (the reference). ``warmup_steps`` outer steps use the clean
  concept prompt (plain ESD on the encoder).

Why the t2i-shapes defaults differ from the reference (1 prefix token, γ only in ε-space) — measured on
"a red circle", issue #4. With the reference's single adversarial token, AdvUnlearn was the *most*
attackable method (UnlearnDiffAtk ASR 75% vs ESD-x 12.5%): the 2-layer encoder (12 positions, trained only
on 3-word captions at fixed positions) learnt an erasure tied to a shift of the concept by one position. At
the end of training a 1-token soft attack could not undo it (attack loss 0.0116 vs 0.0053 for the clean
prompt), but a 5-token one restored the concept in 3 steps (0.0018) and the evaluation attack prefixes
k = 5 tokens — the successful prompts put "circle" among the prefix tokens ("shape big circle an an a red
circle"). Hence the inner attack must cover the threat model's k (``attack_tokens=5``). Training only on
[δ_{1..5}; c] then left the clean prompt half-erased (UA 62%), so every prefix length 0..k is drawn
(``attack_length="uniform"``): UA 100%, ASR 0%, but utility 84% — the ε-space retain term is ~30× smaller
than the unlearning term (0.0005 vs 0.013) and covers 5 of the 8 retain captions per step, so "red" and
"circle" drifted ("a red square" 50%). Anchoring the retain captions' text states (``text_anchor=16``, i.e.
all 8 here) keeps utility at the original's 99% with the reference's γ = 0.5 and retain batch 5 (a retain
batch of 16 also worked, 93–98%, but costs 1.8× ESD's peak memory); 6 passes instead of 3 then close the
remaining gap under a 4× stronger attack (12 rounds × 20 steps): ASR 0 / 0 / 12.5% on seeds 0 / 1 / 2 (3
passes: 25%).

Export: :func:`save_text_encoder` writes the unlearned encoder (safetensors); :func:`plug_text_encoder` or
``models.t2i.load_t2i(folder, text_encoder=...)`` puts it into any model with the same encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unlearnkit.attacks.prompt import (
    attack_vocabulary,
    encode_embeds,
    prefix_embeds,
    random_prefix,
    soft_prompt_attack,
)
from unlearnkit.engine.loop import Phase, StepContext
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.methods.esd import esd_target
from unlearnkit.models.t2i import clean_sample, ddim_sample, encode_prompts
from unlearnkit.registry import register_method


def text_encoder_param_names(model: torch.nn.Module, train_layers: str = "all") -> list[str]:
    """Names (in ``model``) of the text-encoder parameters AdvUnlearn trains."""
    names = []
    for n, _ in model.named_parameters():
        if not n.startswith("text_encoder.") or ".embeddings." in n:
            continue
        inner = n.removeprefix("text_encoder.")
        if train_layers == "all":
            ok = ".layers." in n or "final_layer_norm" in n
        elif train_layers in ("attn", "mlp"):
            ok = {"attn": ".self_attn.", "mlp": ".mlp."}[train_layers] in n
        else:
            try:
                ok = re.search(train_layers, inner) is not None
            except re.error as exc:
                raise ConfigError(
                    f"train_layers {train_layers!r} is not 'all', 'attn', 'mlp' or a regex"
                ) from exc
        if ok:
            names.append(n)
    if not names:
        raise UnlearnkitError(
            f"train_layers={train_layers!r} selects no text-encoder parameter (names look like "
            "'encoder.layers.0.self_attn.q_proj.weight'); is this a T2IModel?"
        )
    return names


# retain_chunk="auto" micro-batches the retain pass above this UNet size (SD v1.x: 860M; the worlds: < 1M).
# Measured with benchmarks/sd_cost.py on a CPU: at the SD v1.4 size (512 px) the whole retain batch of 5
# takes AdvUnlearn's peak memory well past 1.3x ESD-x's, one prompt at a time 1.16x; on the small config it
# costs 1.12x the time for no need.
AUTO_CHUNK_PARAMS = 100_000_000


@dataclass
class AdvUnlearnConfig(MethodConfig):
    """Reference defaults (SD 1.4): 1000 iterations of batch 1, lr 1e-5, η=1, γ=0.3–0.5, retain batch 5,
    1 prefix token, 30 Adam attack steps at lr 1e-3, 200 warm-up iterations. Here (t2i-shapes, CPU): 6 passes
    over the concept's images in batches of 16, the reference's retain batch of 5 and γ = 0.5, and 3 attack
    steps so that an iteration costs at most ~5 ESD iterations (measured 2.9×). η=1 hardly erases through the
    2-layer encoder (UA 25%); η=3 does. The robustness settings (``attack_tokens=5``, ``attack_length=
    "uniform"``, ``text_anchor=16``, 6 epochs) and the measurements behind them are in the module docstring:
    UA 100%, utility 98–99%, UnlearnDiffAtk ASR 0–12.5% (was 75% with 1 token, 3 epochs, no text anchor).
    """

    epochs: int = 6
    lr: float = 5e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int | None = None  # the batch-size rule: methods/base.py MethodConfig
    retain_batch_size: int = 5
    eta: float = 3.0
    retain_weight: float = 0.5
    train_layers: str = "all"
    attack_steps: int = 3
    attack_lr: float = 0.02
    attack_tokens: int = 5
    attack_init: str = "latest"
    attack_bound: float | None = None
    attack_length: str = "uniform"
    text_anchor: int = 16
    # micro-batch of the ε-space retain pass: an int, None (the whole retain batch) or "auto" (1 when the UNet
    # is Stable-Diffusion sized, over AUTO_CHUNK_PARAMS parameters; the whole batch on smaller models)
    retain_chunk: int | str | None = "auto"
    warmup_steps: int = 0
    start_guidance: float = 3.0  # x_t of a prompt set (no images): DDIM at this guidance ...
    ddim_steps: int = 25  # ... with this many steps, stopped at a random one
    # η: ESD's guidance away from the concept; the rest are counts, a step size and a loss weight
    non_negative = (
        *("eta", "start_guidance", "attack_lr", "attack_steps"),
        *("text_anchor", "retain_weight", "warmup_steps"),
    )

    def check(self) -> None:
        super().check()
        if self.attack_tokens < 1:
            raise ConfigError(f"method.attack_tokens must be >= 1, got {self.attack_tokens}")
        if self.attack_init not in ("latest", "random"):
            raise ConfigError(f"attack_init must be 'latest' or 'random', got {self.attack_init!r}")
        c = self.retain_chunk
        if not (c is None or c == "auto" or (isinstance(c, int) and not isinstance(c, bool) and c >= 1)):
            raise ConfigError(f"retain_chunk must be 'auto', null or an int >= 1, got {c!r}")
        if self.retain_batch_size < 1 or self.ddim_steps < 1:
            raise ConfigError("method.retain_batch_size and ddim_steps must be >= 1")
        if self.attack_length not in ("fixed", "uniform"):
            raise ConfigError(f"attack_length must be 'fixed' or 'uniform', got {self.attack_length!r}")


@dataclass
class AdvUnlearnFastConfig(AdvUnlearnConfig):
    """The fast variant: one signed-gradient (FGSM-like) attack step per outer step, a larger step size."""

    attack_steps: int = 1
    attack_lr: float = 0.05
    lr: float = 3e-3


@register_method("advunlearn")
class AdvUnlearn(Method):
    """AdvUnlearn: adversarial training of the text encoder only, ESD loss + utility retention."""

    families = ("diffusion",)
    paper = "Zhang et al., NeurIPS 2024 (AdvUnlearn), Eq. 5-6; ESD target of Gandikota et al. 2023"
    Config = AdvUnlearnConfig

    def streams(self, task: Task):
        return {"forget": task.split.forget, "retain": task.split.retain}

    def batch_sizes(self, task: Task) -> dict[str, int]:
        return super().batch_sizes(task) | {"retain": self.cfg.retain_batch_size}

    def prepare(self, task: Task) -> None:
        self.cfg.check()
        model = task.model
        names = set(text_encoder_param_names(model, self.cfg.train_layers))
        self.train_only(model, names)
        model.unet.requires_grad_(False)
        self._chunk = self.cfg.retain_chunk
        if self._chunk == "auto":  # batched is faster on a small UNet; at SD size its graph sets the peak
            big = sum(p.numel() for p in model.unet.parameters()) > AUTO_CHUNK_PARAMS
            self._chunk = 1 if big else None
        dev = next(model.parameters()).device
        self._null = encode_prompts(model, [""]).to(dev)
        rows = [self._null]
        for part in (task.split.forget, task.split.retain):
            rows.append(torch.unique(part.columns["input_ids"], dim=0).to(dev))
        self._retain_captions = rows[-1]
        self._cache: dict[bytes, torch.Tensor] = {}  # TE_o(c) for every fixed prompt, computed once
        was = model.training
        model.eval()
        with torch.no_grad():
            ids = torch.cat(rows)
            for i, ctx in zip(ids, model.encode(ids), strict=True):
                self._cache[_key(i)] = ctx
        model.train(was)
        self.vocab = attack_vocabulary(model.tokenizer).to(dev) if model.tokenizer is not None else None
        if self.vocab is None:
            self.vocab = torch.arange(4, model.text_encoder.config.vocab_size, device=dev)
        gen = torch.Generator().manual_seed(task.seed)
        self.delta = random_prefix(model, self.cfg.attack_tokens, gen, self.vocab.cpu()).to(dev)
        self.delta_init: torch.Tensor | None = None  # the warm start of the last inner attack (for tests)
        self.inner_steps = 0
        self.outer_steps = 0

    def loop_state(self) -> dict[str, Any]:
        """The adversarial prefix (warm start of the next inner attack) and the step counters live outside
        the model; engine checkpoints carry them so a resumed run continues bit for bit."""
        return {
            "delta": self.delta.detach().cpu().clone(),
            "inner_steps": int(self.inner_steps),
            "outer_steps": int(self.outer_steps),
        }

    def load_loop_state(self, state: dict[str, Any]) -> None:
        self.delta = state["delta"].to(self.delta.device, self.delta.dtype)
        self.inner_steps = int(state["inner_steps"])
        self.outer_steps = int(state["outer_steps"])

    def teacher_context(self, ids: torch.Tensor) -> torch.Tensor:
        try:
            return torch.stack([self._cache[_key(i)] for i in ids])
        except KeyError as exc:
            raise UnlearnkitError(
                "a caption outside the forget/retain sets reached AdvUnlearn's teacher cache"
            ) from exc

    def _noised(self, batch, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = clean_sample(self.model, batch)  # pixels, or a latent model's VAE latents
        if x0 is None:  # a prompt set has no images: the reference's x_t, a DDIM sample stopped early
            return self._sampled(batch["input_ids"], gen)
        x0 = x0.to(next(self.model.parameters()).device)
        t = torch.randint(0, self.model.num_train_timesteps, (len(x0),), generator=gen).to(x0.device)
        return self.model.add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0.device), t), t

    @torch.no_grad()
    def _sampled(self, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t of the frozen UNet with the teacher's text states TE_o(c): DDIM (``ddim_steps``, guidance
        ``start_guidance``) from fresh noise, stopped at a random step (as ESD's and the reference's code)."""
        model, cfg = self.model, self.cfg
        dev = next(model.parameters()).device
        stop = int(torch.randint(0, cfg.ddim_steps, (1,), generator=gen))
        x_T = torch.randn(len(ids), *model.sample_shape, generator=gen).to(dev)
        x_t, t = ddim_sample(
            model, context=self.teacher_context(ids.to(dev)), guidance=cfg.start_guidance,
            steps=cfg.ddim_steps, x_T=x_T, stop_at=stop, uncond_context=self.teacher_context(self._null),
        )  # fmt: skip
        return x_t, torch.full((len(ids),), t, device=dev, dtype=torch.long)

    def loss(self, b, ctx: StepContext):
        model, cfg = self.model, self.cfg
        unet = model.unet
        forget, retain = b["forget"], b["retain"]
        ids = forget["input_ids"]
        x_t, t = self._noised(forget, ctx.generator)
        with torch.no_grad():
            null0 = self.teacher_context(self._null).expand(len(ids), -1, -1)
            c0 = self.teacher_context(ids)
            eps_u, eps_c = unet(
                torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([null0, c0])
            ).sample.chunk(2)
            target = esd_target(eps_u, eps_c, cfg.eta)
        adversarial = self.outer_steps >= cfg.warmup_steps and cfg.attack_steps > 0
        n_tok = cfg.attack_tokens
        if adversarial and cfg.attack_length == "uniform":  # this step's prefix length L ~ U{0..k}
            n_tok = int(torch.randint(0, cfg.attack_tokens + 1, (1,), generator=ctx.generator))
        if adversarial and n_tok:
            if cfg.attack_init == "random":
                self.delta = random_prefix(model, cfg.attack_tokens, ctx.generator, self.vocab.cpu()).to(
                    ids.device
                )
            self.delta_init = self.delta.clone()
            d, n = soft_prompt_attack(
                model, ids, x_t, t, eps_c, self.delta[:n_tok], cfg.attack_steps, cfg.attack_lr,
                cfg.attack_bound,
            )  # fmt: skip
            self.delta = torch.cat([d, self.delta[n_tok:]])
            self.inner_steps += n
            c_adv = encode_embeds(model.text_encoder, prefix_embeds(model, ids, d))
        else:
            c_adv = model.encode(ids)
        # back-propagated now: its UNet graph is freed before the retain pass builds its own (peak memory)
        unlearn = ctx.backward(F.mse_loss(unet(x_t, t, encoder_hidden_states=c_adv).sample, target))
        x_r, t_r = self._noised(retain, ctx.generator)
        keep, keep_value = self._keep(x_r, t_r, retain["input_ids"], ctx)
        anchor = self._null
        if cfg.text_anchor:
            caps = self._retain_captions
            pick = torch.randperm(len(caps), generator=ctx.generator)[: cfg.text_anchor].to(caps.device)
            anchor = torch.cat([anchor, caps[pick]])
        keep_text = F.mse_loss(model.encode(anchor), self.teacher_context(anchor))
        self.outer_steps += 1
        loss = unlearn + keep + cfg.retain_weight * keep_text
        logs = {
            "unlearn": float(unlearn.detach()),
            "retain": keep_value,
            "anchor": float(keep_text.detach()),
            "adv_tokens": float(n_tok if adversarial else 0),
        }
        return loss, logs

    def _keep(
        self, x_r: torch.Tensor, t_r: torch.Tensor, r_ids: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, float]:
        """γ ‖ε_θ(x_r, TE_φ(c_r), t) − ε_θ(x_r, TE_o(c_r), t)‖² (to add to the loss) and the norm's value.

        With ``retain_chunk`` the retain batch goes through the UNet in micro-batches, each weighted by its
        share of the batch and back-propagated at once (``StepContext.backward``): the same gradient, with
        one micro-batch's UNet graph alive instead of the whole batch's (at the SD v1.4 size the retain batch
        of 5 is the largest graph of the step)."""
        unet, n, w = self.model.unet, len(r_ids), self.cfg.retain_weight
        size = min(self._chunk or n, n)
        total: torch.Tensor | float = 0.0
        value = 0.0
        for s in range(0, n, size):
            x, t, ids = x_r[s : s + size], t_r[s : s + size], r_ids[s : s + size]
            with torch.no_grad():
                eps_r0 = unet(x, t, encoder_hidden_states=self.teacher_context(ids)).sample
            eps_r = unet(x, t, encoder_hidden_states=self.model.encode(ids)).sample
            term = F.mse_loss(eps_r, eps_r0) * (len(ids) / n)  # equal-sized items: the batch mean's share
            total = total + (ctx.backward(w * term) if size < n else w * term)
            value += float(term.detach())
        return total, value

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("advunlearn", ("forget", "retain"), self.loss, driver="forget")]


@register_method("advunlearn_fast")
class AdvUnlearnFast(AdvUnlearn):
    """Fast AdvUnlearn: the inner attack is a single signed-gradient (FGSM-like) step."""

    Config = AdvUnlearnFastConfig


def _key(ids: torch.Tensor) -> bytes:
    return ids.detach().cpu().numpy().tobytes()


def save_text_encoder(model: Any, folder: str | Path) -> Path:
    """Write only the (unlearned) text encoder with ``save_pretrained`` (safetensors); returns the folder."""
    folder = Path(folder)
    model.text_encoder.save_pretrained(folder, safe_serialization=True)
    return folder


def plug_text_encoder(model: Any, folder: str | Path) -> Any:
    """Load a text encoder saved by :func:`save_text_encoder` into ``model`` (in place; returns it).
    The encoder must match the model's (hidden size, vocabulary, positions); otherwise a clear error."""
    from transformers import CLIPTextModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UnlearnkitError(
            f"{str(folder)!r} holds no text encoder (config.json) written by save_text_encoder"
        )
    te = CLIPTextModel.from_pretrained(folder, local_files_only=True)
    old = model.text_encoder.config
    for key in ("hidden_size", "vocab_size", "max_position_embeddings"):
        if getattr(te.config, key) != getattr(old, key):
            raise UnlearnkitError(
                f"the text encoder in {str(folder)!r} has {key}={getattr(te.config, key)}, the model's has "
                f"{getattr(old, key)}: it only plugs into models with the same encoder"
            )
    dev = next(model.parameters()).device
    model.text_encoder = te.to(dev).train(model.training)
    return model

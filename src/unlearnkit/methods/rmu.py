"""RMU (Li et al., 2024, WMDP): push layer-ℓ activations on D_f to a random direction, keep them on D_r.

    L = γ·E_{D_f}[‖h_θ^ℓ(x) − c·u‖²] + α·E_{D_r}[‖h_θ^ℓ(x) − h_orig^ℓ(x)‖²]

(WMDP paper, "Representation Misdirection for Unlearning"), u a fixed random unit vector (uniform
entries, normalised, as in the WMDP code), c the steering coefficient, ‖·‖² the mean squared error over
hidden dimensions, averaged per example over its tokens and then over the batch (open-unlearning's
``compute_activation_loss``). Only the parameters matching ``trainable`` are updated.

Activations: the output of decoder layer ℓ, captured with a forward hook that stops the forward pass
right after layer ℓ (the WMDP code hooks the same module but runs the whole model; the upper layers and
the LM head are wasted work). This is ``output_hidden_states[ℓ + 1]`` of a Hugging Face model.

Retain reference, ``retain_reference``: the original's layer-ℓ activations on D_r are T·d floats per
example (TOFU retain90 on a 4096-wide 7B model at ~150 tokens: ~9 GB fp32), so ``"auto"`` caches them
per example id before the loop when the cache fits in ``cache_mb`` (tiny models; one model in memory,
one truncated forward per retain batch), and otherwise keeps a frozen copy of the original; ``"cache"``
/ ``"frozen"`` force one of the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import FitResult, Phase, StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import Method, MethodConfig, Task, frozen_copy
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.models.lm_anatomy import hidden_size, mlp_output_projection, parameter_patterns
from unlearnkit.registry import register_method


@dataclass
class RMUConfig(MethodConfig):
    """Defaults and their sources.

    - ``steering_coeff`` 2, ``alpha`` (retain weight) 1, ``gamma`` (forget weight) 1: open-unlearning's
      ``RMU.yaml`` for TOFU. The WMDP paper uses c = 6.5, α = 1200 on Zephyr-7B (layer 7; its code's
      argparse defaults are c = 20, α = 100). We keep c = 2 for tiny models: on a 2-layer, hidden-32
      Llama fine-tuned on 6 QA pairs (layer-0 activation norms ≈ 3), 20 epochs at lr 1e-2 raised the
      forget NLL 0.43 → 2.5 per token with the retain NLL 0.33 → 0.57; c = 6.5 / 20 forgot a little more
      (2.8 / 3.1) at a much higher retain cost (0.93 / 1.9). The default lr (5e-5) is for 7B models.
    - ``layer``: ``None`` = the middle decoder layer, (L − 1) // 2 (0-based); WMDP uses 7 of 32.
    - ``trainable``: a regex over parameter names; ``None`` = the MLP output projection of layers
      ℓ−2..ℓ, the WMDP setup (``layer_ids 5,6,7``, ``param_ids 6``), found from the model for every
      architecture (Llama ``down_proj``, GPT-2 ``mlp.c_proj``, GPT-NeoX ``dense_4h_to_h``, OPT ``fc2``;
      :mod:`unlearnkit.models.lm_anatomy`); under LoRA, that module's adapters. open-unlearning's TOFU
      RMU trains everything (``".*"``).
    - ``positions``: ``"answer"`` averages over answer tokens (labels ≠ −100; open-unlearning on TOFU),
      ``"all"`` over every real token (WMDP, on raw text).
    - AdamW lr 5e-5 (WMDP), weight decay 0.01, 10 epochs and batch 32 (open-unlearning TOFU).
    """

    epochs: int = 10
    lr: float = 5e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    batch_size: int | None = None  # the batch-size rule: methods/base.py MethodConfig
    steering_coeff: float = 2.0
    gamma: float = 1.0
    alpha: float = 1.0
    layer: int | None = None
    trainable: str | None = None
    positions: str = "answer"
    retain_reference: str = "auto"
    cache_mb: float = 512.0
    non_negative = ("steering_coeff", "gamma", "alpha", "cache_mb")  # c scales the control vector

    def check(self) -> None:
        super().check()
        if self.positions not in ("answer", "all"):
            raise ConfigError(f"method.positions must be 'answer' or 'all', got {self.positions!r}")
        if self.retain_reference not in ("auto", "cache", "frozen"):
            raise ConfigError(
                f"method.retain_reference must be auto, cache or frozen, got {self.retain_reference!r}"
            )
        if self.trainable is not None:
            try:
                re.compile(self.trainable)
            except re.error as exc:
                raise ConfigError(f"method.trainable is not a valid regex: {exc}") from exc


class _Stop(Exception):
    """Raised by the capture hook to skip the layers above ℓ."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the model's decoder layers (Llama ``model.layers``, GPT-2 ``h``)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return name, mod
    raise ConfigError("RMU needs a transformer with a list of decoder layers; none was found in this model")


def layer_activations(model: nn.Module, layer: nn.Module, batch: Batch) -> torch.Tensor:
    """Output of ``layer`` [B, T, d] on ``batch`` (the forward pass stops after it)."""
    captured: list[torch.Tensor] = []

    def hook(module, args, out):
        captured.append(out[0] if isinstance(out, tuple) else out)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("the chosen RMU layer was not run by the model's forward pass")
    return captured[0]


def activation_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per token mean over d of (h − target)², averaged over each example's masked tokens, then the batch."""
    sq = (h.float() - target.float()).pow(2).mean(-1)
    m = mask.to(sq)
    return ((sq * m).sum(-1) / m.sum(-1).clamp_min(1)).mean()


@register_method("rmu")
class RMU(Method):
    """RMU: γ·MSE(h^ℓ(D_f), c·u) + α·MSE(h^ℓ(D_r), h_orig^ℓ(D_r)), training only the ``trainable`` weights."""

    paper = (
        "Li et al., 'The WMDP Benchmark', ICML 2024 (RMU): L = E_{D_f}‖h_θ^ℓ − c·u‖² "
        "+ α·E_{D_r}‖h_θ^ℓ − h_orig^ℓ‖²"
    )
    families = ("text",)
    Config = RMUConfig

    def __init__(self, cfg: RMUConfig | None = None) -> None:
        super().__init__(cfg)
        self.layer_index: int = 0
        self.control: torch.Tensor | None = None
        self.retain_cache: ReferenceCache | None = None
        self.retain_model: nn.Module | None = None
        self.trainable_names: list[str] = []
        self._flags: dict[str, bool] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def layer_module(self, model: nn.Module) -> nn.Module:
        return decoder_layers(model)[1][self.layer_index]

    def layer_range(self) -> range:
        """The layers whose MLP output projection trains by default: ℓ−2..ℓ (WMDP's ``layer_ids 5,6,7``)."""
        return range(max(0, self.layer_index - 2), self.layer_index + 1)

    def default_trainable(self, model: nn.Module, trainable_only: bool = True) -> list[str]:
        """Parameter names of the MLP output projections of layers ℓ−2..ℓ, found from the model
        (:func:`~unlearnkit.models.lm_anatomy.mlp_output_projection`): their ``weight`` on a plain model,
        their adapter weights under LoRA (peft freezes the base weight). ``trainable_only=False`` also
        lists weights that do not require grad (for error messages)."""
        prefix, layers = decoder_layers(model)
        params = dict(model.named_parameters())
        names = []
        for i in self.layer_range():
            module = f"{prefix}.{i}.{mlp_output_projection(layers[i], model.config)}"
            under = [n for n in params if n.startswith(module + ".") and n.endswith("weight")]
            if trainable_only:
                under = [n for n in under if params[n].requires_grad and not n.endswith("base_layer.weight")]
            names += under
        return names

    def _candidates(self, model: nn.Module) -> str:
        try:
            could = self.default_trainable(model, trainable_only=False)
        except ConfigError:
            could = []
        shown = ", ".join(could) if could else "none found"
        return f"the MLP output projections of layers {list(self.layer_range())}: {shown}"

    def prepare(self, task: Task) -> None:
        model = task.model
        _, layers = decoder_layers(model)
        ell = self.cfg.layer if self.cfg.layer is not None else (len(layers) - 1) // 2
        if not 0 <= ell < len(layers):
            raise ConfigError(f"method.layer={ell} is outside the model's {len(layers)} decoder layers")
        self.layer_index = ell
        dev = next(model.parameters()).device
        d = hidden_size(model.config)
        g = torch.Generator().manual_seed(task.seed)
        u = torch.rand(d, generator=g)
        self.control = (self.cfg.steering_coeff * u / u.norm()).to(dev)

        self.retain_cache, self.retain_model = None, None
        if self.cfg.alpha != 0:
            if self.cfg.retain_reference != "frozen":
                budget = None if self.cfg.retain_reference == "cache" else int(self.cfg.cache_mb * 2**20)
                self.retain_cache = compute_reference(
                    model,
                    task.split.retain,
                    lambda m, b: layer_activations(m, self.layer_module(m), b),
                    self.batch_sizes(task)["retain"],
                    budget_bytes=budget,
                )
            if self.retain_cache is None:
                self.retain_model = frozen_copy(model)

        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if self.cfg.trainable is None:
            names = self.default_trainable(model)
            if not names:
                raise ConfigError(
                    "RMU trains the MLP output projections, but none of them has trainable weights here "
                    f"({self._candidates(model)}): under model.lora add that module's name to "
                    "model.lora.target_modules (or leave it unset for all linear layers), or set "
                    "method.trainable to a regex over parameter names"
                )
        else:
            pattern = re.compile(self.cfg.trainable)
            names = [n for n, _ in model.named_parameters() if pattern.search(n) and n in trainable]
            if not names:
                raise ConfigError(
                    f"method.trainable={pattern.pattern!r} matches no parameter of this model that can "
                    "train; "
                    f"names that could match: {self._candidates(model)}; every parameter: "
                    f"{', '.join(parameter_patterns(model))} (N = layer number)"
                )
        self.trainable_names = names
        self._flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.requires_grad_(n in names and self._flags[n])

    def run(self, task: Task) -> FitResult:
        try:
            return super().run(task)
        finally:
            for n, p in task.model.named_parameters():
                p.requires_grad_(self._flags.get(n, p.requires_grad))
            self.retain_cache, self.retain_model = None, None

    # -- losses -----------------------------------------------------------------------------------
    def token_mask(self, batch: Batch) -> torch.Tensor:
        if self.cfg.positions == "answer":
            return batch["labels"] != -100
        return batch["attention_mask"].bool()

    def forget_term(self, batch: Batch) -> torch.Tensor:
        assert self.control is not None, "prepare() was not called"
        h = layer_activations(self.model, self.layer_module(self.model), batch)
        return activation_mse(h, self.control.expand_as(h), self.token_mask(batch))

    def retain_term(self, batch: Batch) -> torch.Tensor:
        h = layer_activations(self.model, self.layer_module(self.model), batch)
        if self.retain_cache is not None:
            ref = self.retain_cache.get(batch["id"])[:, : h.shape[1]].to(h)  # the batch's width
        else:
            assert self.retain_model is not None, "prepare() was not called"
            with torch.no_grad():
                ref = layer_activations(self.retain_model, self.layer_module(self.retain_model), batch)
        return activation_mse(h, ref, self.token_mask(batch))

    def loss(
        self, b: dict[str, Batch], ctx: StepContext | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        lf = self.forget_term(b["forget"])
        total = self.cfg.gamma * lf
        logs = {"forget_loss": float(lf.detach())}
        if self.cfg.alpha != 0:
            lr = self.retain_term(b["retain"])
            total = total + self.cfg.alpha * lr
            logs["retain_loss"] = float(lr.detach())
        return total, logs

    def streams(self, task: Task):
        if self.cfg.alpha != 0:
            return {"forget": task.split.forget, "retain": task.split.retain}
        return {"forget": task.split.forget}

    def phases(self, epoch: int) -> list[Phase]:
        streams = ("forget", "retain") if self.cfg.alpha != 0 else ("forget",)
        return [Phase("rmu", streams, self.loss, driver="forget")]

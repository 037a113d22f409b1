"""Boundary Unlearning: shrink or expand the decision space of the forgotten data (Chen et al., CVPR 2023)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.loop import FitResult, Phase, StepContext
from unlearnkit.engine.masks import WeightMask
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.methods.base import (
    Method,
    MethodConfig,
    Task,
    frozen_copy,  # noqa: F401 (re-exported)
)
from unlearnkit.registry import register_method

PAPER = (
    "Chen et al., 'Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision "
    "Boundary', CVPR 2023"
)


# -- Boundary Shrink ---------------------------------------------------------------------------------


@dataclass
class BoundaryShrinkConfig(MethodConfig):
    """Boundary Shrink options.

    ``eps``: the FGSM step that finds the neighbouring class (0.1, "hard coding in the paper" in the
    reference). ``exclude_true``: take the nearest *incorrect* class, argmax over the classes other than
    y (the paper's "nearest but incorrect" label); False reproduces the reference, a plain argmax of
    f_o(x_adv) that may equal y. ``discretize``: round x_adv to multiples of 1/255 of the input range
    after clamping, as the reference does (off by default: the paper states no rounding).
    ``input_range``: where x_adv is clamped. None (default) takes it from the data: the min and max of the
    training inputs (forget ∪ retain) per channel (dim 1; per feature for flat inputs), so standardised
    inputs are not squeezed into images' range; ``[lo, hi]`` clamps to a known range (the reference's
    ``[0, 1]``, which it hard-codes for images scaled to [0, 1]); ``clamp=False`` does not clamp at all.
    The family's ``input_range`` is used when it declares one and this option is unset.
    Optimisation: 10 epochs of SGD (momentum 0.9, wd 5e-4) on the forget set; lr 1e-5 is a documented
    starting point only, the WorstCase authors search it in an interval starting at 1e-8 (presets tune it).
    """

    epochs: int = 10
    lr: float = 1e-5
    eps: float = 0.1
    exclude_true: bool = True
    discretize: bool = False
    input_range: list[float] | None = None
    clamp: bool = True

    def check(self) -> None:
        super().check()
        if not self.eps >= 0:
            raise ConfigError(f"method.eps must be >= 0, got {self.eps}")
        r = self.input_range
        if r is not None and not (len(r) == 2 and r[0] < r[1]):
            raise ConfigError(f"method.input_range must be [lo, hi] with lo < hi, got {r}")
        if self.discretize and not self.clamp:
            raise ConfigError("method.discretize rounds within the input range: it needs method.clamp=true")


@register_method("boundary_shrink")
class BoundaryShrink(Method):
    """Boundary Shrink: fine-tune on (x_f, y_nbi), the nearest-but-incorrect label found by FGSM on f_o.

    For each forget batch, with the original model f_o frozen:
        x_adv = clip(x + ε·sign(∇ₓ CE(f_o(x), y)), lo, hi)      ((lo, hi): the data's range, per channel)
        y_nbi = argmax_{k ≠ y} f_o(x_adv)_k
        loss  = CE(f_θ(x), y_nbi)                               (forget data only)
    """

    paper = PAPER + "; Boundary Shrink, min_θ E_{D_f} CE(f_θ(x), y_nbi)"
    epochwise = True
    families = ("vision",)
    Config = BoundaryShrinkConfig

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        super().__init__(cfg)
        self.original: nn.Module | None = None
        self.bounds: tuple[torch.Tensor, torch.Tensor] | None = None

    def streams(self, task: Task):
        return {"forget": task.split.forget}

    def prepare(self, task: Task) -> None:
        self.original = frozen_copy(task.model)
        self.bounds = self._bounds(task) if self.cfg.clamp else None

    def finalize(self, task: Task) -> None:
        self.original = None

    def _bounds(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) broadcastable to a batch of inputs: the option, the family's, or the data's range."""
        fixed = self.cfg.input_range or getattr(task.family, "input_range", None)
        if fixed is not None:
            return torch.tensor(float(fixed[0])), torch.tensor(float(fixed[1]))
        return data_range(task.split.forget, task.split.retain)

    def neighbour_labels(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, y_nbi) for a batch, from the frozen original model."""
        assert self.original is not None, "call prepare() first"
        family, orig = self.family, self.original
        x, y = batch["x"], batch["y"]
        x_req = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(family.logits(orig, batch | {"x": x_req}), y, reduction="sum")
            (gx,) = torch.autograd.grad(loss, x_req)
        x_adv = x.detach() + self.cfg.eps * gx.sign()
        if self.bounds is not None:
            lo, hi = (b.to(x_adv.device, x_adv.dtype) for b in self.bounds)
            x_adv = torch.maximum(torch.minimum(x_adv, hi), lo)
            if self.cfg.discretize:
                span = hi - lo
                steps = torch.round((x_adv - lo) * 255 / torch.where(span > 0, span, 1))
                x_adv = torch.where(span > 0, lo + steps * span / 255, lo)
        with torch.no_grad():
            logits = family.logits(orig, batch | {"x": x_adv}).float()
            if self.cfg.exclude_true:
                logits = logits.scatter(1, y.unsqueeze(1), float("-inf"))
            y_nbi = logits.argmax(dim=1)
        return x_adv, y_nbi

    def loss(self, b: dict[str, Batch], ctx: StepContext):
        batch = b["forget"]
        _, y_nbi = self.neighbour_labels(batch)
        loss = self.mean_loss(batch | {"y": y_nbi})
        return loss, {"label_kept": float((y_nbi == batch["y"]).float().mean())}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("forget", ("forget",), self.loss)]


def data_range(*sets: ExampleSet, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the inputs ``x`` over ``sets`` (transforms applied), per channel (dim 1; per
    feature for flat inputs; one scalar for 1-D inputs), shaped to broadcast against a batch."""
    lo = hi = None
    for s in sets:
        for batch in s.loader(batch_size):
            x = batch["x"].float()
            dims = [d for d in range(x.ndim) if d != 1] if x.ndim > 1 else [0]
            b_lo, b_hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
            lo = b_lo if lo is None else torch.minimum(lo, b_lo)
            hi = b_hi if hi is None else torch.maximum(hi, b_hi)
    if lo is None or hi is None:
        raise UnlearnkitError("boundary_shrink needs training inputs to take their range from")
    return lo, hi


# -- Boundary Expanding ------------------------------------------------------------------------------


@dataclass
class BoundaryExpandConfig(MethodConfig):
    """Boundary Expanding options.

    ``prune_shadow``: after training, drop the shadow neuron (copy the first K rows back into a K-way
    head), as the paper does; False keeps the K+1-way head of the reference code, whose evaluation then
    argmaxes over K+1 logits (a forget example predicted as the shadow class counts as wrong).
    Optimisation: 10 epochs of SGD (momentum 0.9, wd 5e-4) on the forget set; lr 1e-5 as for Boundary
    Shrink (the WorstCase authors search the lr from 1e-8 upwards; presets tune it).
    """

    epochs: int = 10
    lr: float = 1e-5
    prune_shadow: bool = True


@register_method("boundary_expand")
class BoundaryExpand(Method):
    """Boundary Expanding: add a shadow class K, fit every forget example to it, then prune it.

        head  W ∈ R^{K×d} → [W; w_K] ∈ R^{(K+1)×d}   (the old rows copied; w_K freshly initialised)
        loss  = CE(f_θ(x), K)  on forget batches only
        prune [W'; w'_K] → W'                          (``prune_shadow``, the paper's final step)

    The head is the last ``nn.Linear`` whose ``out_features`` equals the family's number of classes.
    Weight masks (``mask_ratio``/``mask_path``) are built *after* the expansion: a saliency mask is
    computed on the K+1-way model, a mask file made for the K-way model is padded with a row for the
    shadow neuron, and the shadow neuron's row is always free to move.
    """

    paper = PAPER + "; Boundary Expanding, min_θ E_{D_f} CE(f_θ(x), K) with a shadow class K, then pruned"
    epochwise = True  # the pruning at the end is a function of the weights: ``finished`` applies it
    families = ("vision",)
    Config = BoundaryExpandConfig

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        super().__init__(cfg)
        self.head_name: str | None = None
        self.num_classes: int | None = None

    def streams(self, task: Task):
        return {"forget": task.split.forget}

    def run(self, task: Task) -> FitResult:
        try:
            return super().run(task)
        finally:
            if self.num_classes is not None:  # always give the family its K classes back
                task.family.num_classes = self.num_classes

    def prepare(self, task: Task) -> None:
        model, family = task.model, task.family
        k = getattr(family, "num_classes", None)
        name, head = find_head(model, k)
        k = head.out_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task.seed)
            new = nn.Linear(
                head.in_features,
                k + 1,
                bias=head.bias is not None,
                device=head.weight.device,
                dtype=head.weight.dtype,
            )
        with torch.no_grad():
            new.weight[:k] = head.weight
            if head.bias is not None:
                new.bias[:k] = head.bias
        new.weight.requires_grad_(head.weight.requires_grad)
        if head.bias is not None:
            new.bias.requires_grad_(head.bias.requires_grad)
        _set_module(model, name, new)
        self.head_name, self.num_classes = name, k
        family.num_classes = k + 1

    def build_mask(self, task: Task) -> WeightMask | None:
        mask = super().build_mask(task)
        if mask is None:
            return None
        assert self.num_classes is not None and self.head_name is not None
        k = self.num_classes
        for suffix in ("weight", "bias"):
            key = f"{self.head_name}.{suffix}"
            m = mask.masks.get(key)
            if m is None:
                continue
            if m.shape[0] == k:
                m = torch.cat([m, torch.ones_like(m[:1])])
            m = m.clone()
            m[k:] = True
            mask.masks[key] = m
        return mask

    def loss(self, b: dict[str, Batch], ctx: StepContext):
        batch = b["forget"]
        shadow = torch.full_like(batch["y"], self.num_classes)
        return self.mean_loss(batch | {"y": shadow}), {}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("forget", ("forget",), self.loss)]

    def finalize(self, task: Task) -> None:
        task.family.num_classes = self.num_classes
        if self.cfg.prune_shadow:
            _set_module(task.model, self.head_name, self._pruned_head(task.model))

    def finished(self, model: nn.Module) -> nn.Module:
        """A copy with the shadow neuron pruned (``prune_shadow``), as :meth:`finalize` would leave it."""
        if not self.cfg.prune_shadow or self.head_name is None:
            return model
        done = copy.deepcopy(model)
        _set_module(done, self.head_name, self._pruned_head(model))
        return done

    def _pruned_head(self, model: nn.Module) -> nn.Linear:
        """The first K rows of the (K+1)-way head of ``model``, as a new K-way head."""
        k, head = self.num_classes, _get_module(model, self.head_name)
        pruned = nn.Linear(
            head.in_features,
            k,
            bias=head.bias is not None,
            device=head.weight.device,
            dtype=head.weight.dtype,
        )
        with torch.no_grad():
            pruned.weight.copy_(head.weight[:k])
            if head.bias is not None:
                pruned.bias.copy_(head.bias[:k])
        pruned.weight.requires_grad_(head.weight.requires_grad)
        if head.bias is not None:
            pruned.bias.requires_grad_(head.bias.requires_grad)
        pruned.train(head.training)
        return pruned


# -- helpers -----------------------------------------------------------------------------------------


def find_head(model: nn.Module, num_classes: int | None) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` with ``out_features == num_classes`` (the last Linear if it is None)."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (num_classes is None or module.out_features == num_classes):
            found = (name, module)
    if found is None:
        what = "nn.Linear" if num_classes is None else f"nn.Linear with out_features == {num_classes}"
        raise UnlearnkitError(
            f"boundary_expand needs a classifier head ({what}) to add the shadow class to, and this "
            f"{type(model).__name__} has none; use a model whose last layer is an nn.Linear over the classes"
        )
    return found


def _get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise UnlearnkitError("boundary_expand cannot replace the model itself: wrap the head in a module")
    parent, _, attr = name.rpartition(".")
    setattr(_get_module(model, parent), attr, new)

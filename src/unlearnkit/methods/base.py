"""The method contract: a config dataclass with the paper's defaults, ``prepare``, and phases of losses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.loop import FitResult, Phase, StepContext
from unlearnkit.engine.masks import WeightMask
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family, Task


@dataclass
class MethodConfig(OptimSpec):
    """Options every method accepts, on top of the optimizer settings.

    ``mask_ratio`` turns on a SalUn weight-saliency mask for *any* method (share of weights that may
    move, ranked by the forget-loss gradient at the original weights); ``mask_path`` loads one instead.

    The batch-size rule (one rule for every method, applied by :meth:`Method.batch_sizes`): a step draws
    ``method.batch_size`` examples per process from each stream when the config sets it (in the method's
    preset, a suite's method entry or an override), else ``engine.batch_size``; no method has a batch
    size of its own by default (a paper's batch size is in its docstring and its preset).
    ``forget_batch_size`` (and a method's own per-stream options, e.g. AdvUnlearn's
    ``retain_batch_size``) then sets that one stream's. With ``engine.grad_accum=N`` and P processes an
    optimizer step sees ``batch × P × N`` examples of each stream: the run's ``results.json`` and
    ``receipt.json`` report both (``training``: ``batch_size`` per process, ``effective_batch_size``).
    """

    batch_size: int | None = None
    forget_batch_size: int | None = None
    mask_ratio: float | None = None
    mask_path: str | None = None
    # options that must be >= 0, checked for every method: loss weights (a negative one turns descent on
    # its term into ascent), scales and sizes; a subclass lists its own (with its base's, if any)
    non_negative: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        super().check()
        for name in self.non_negative:
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"method.{name} must be >= 0, got {value}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"mask_ratio must lie in (0, 1], got {self.mask_ratio}")
        for name in ("batch_size", "forget_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")


class Method:
    """Base class; subclasses set ``Config``, ``families``, ``paper`` and implement ``phases``."""

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("*",)
    paper: ClassVar[str] = ""
    exact: ClassVar[bool] = False
    # forgets only through training on D_r (FT, l1-sparse): tune's last trial runs the full epochs
    retain_only: ClassVar[bool] = False
    # ascends the forget loss with nothing to bound it or hold RA (GA): one small step more can take the
    # model from not forgetting to collapsed (tune bisects that cliff). Boundary shrink/expand also train
    # on D_f alone but descend a bounded loss toward other labels: bisecting there lost 1.1 points class-wise
    ascent_cliff: ClassVar[bool] = False
    # nothing in the update depends on ``cfg.epochs`` (no decay over the run): with a constant schedule,
    # the first e epochs of a run, passed through ``finished``, are an e-epoch run (tune scores every epoch)
    epochwise: ClassVar[bool] = False
    Config: ClassVar[type] = MethodConfig

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()
        self.task: Task | None = None
        self.mask: WeightMask | None = None

    # -- to override ---------------------------------------------------------------------------
    def streams(self, task: Task) -> dict[str, ExampleSet]:
        return {"forget": task.split.forget, "retain": task.split.retain}

    def phases(self, epoch: int) -> list[Phase]:
        raise NotImplementedError

    def prepare(self, task: Task) -> None:
        """Work done once before the loop (frozen teachers, cached reference losses, head surgery)."""

    def finalize(self, task: Task) -> None:
        """Work done once after a successful loop (e.g. pruning an added head)."""

    def finished(self, model: nn.Module) -> nn.Module:
        """The model as :meth:`finalize` would leave it if the run ended now, without touching ``model``
        (what tune scores after each epoch); the model itself where ``finalize`` changes no weights."""
        return model

    def cleanup(self, task: Task) -> None:
        """Undo what the run changed temporarily, after ``finalize`` or after a failure (also one inside
        ``prepare``): by default, restore the ``requires_grad`` flags :meth:`train_only` changed."""
        state, self._grad_state = getattr(self, "_grad_state", None), None
        if state is not None:
            for n, p in task.model.named_parameters():
                p.requires_grad_(state.get(n, True))

    def train_only(self, model: nn.Module, names: set[str]) -> None:
        """Make exactly the parameters ``names`` trainable for this run (:meth:`cleanup` restores the
        previous flags)."""
        self._grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)

    @property
    def prefix_consistent(self) -> bool:
        """Whether the model after epoch e of this run equals an e-epoch run's (same seed, same device)."""
        return self.epochwise and self.cfg.scheduler == "constant"

    # -- shared machinery ----------------------------------------------------------------------
    @property
    def family(self) -> Family:
        assert self.task is not None
        return self.task.family

    @property
    def model(self) -> nn.Module:
        assert self.task is not None
        return self.task.model

    def batch_sizes(self, task: Task) -> dict[str, int]:
        """Examples per step and process of each stream (the batch-size rule, :class:`MethodConfig`)."""
        bs = self.cfg.batch_size or task.engine.cfg.batch_size
        return {"forget": self.cfg.forget_batch_size or bs, "retain": bs, "train": bs}

    def build_mask(self, task: Task) -> WeightMask | None:
        if self.cfg.mask_path:
            return WeightMask.load(self.cfg.mask_path)
        if self.cfg.mask_ratio is None:
            return None
        return saliency_mask(task, self.cfg.mask_ratio, self.batch_sizes(task)["forget"])

    def run(self, task: Task) -> FitResult:
        """Unlearn ``task.model`` in place."""
        self.task = task
        task.model.to(task.engine.device)
        try:
            with task.engine.autocast():  # what prepare caches matches the training forward's precision
                self.prepare(task)
            self.mask = self.build_mask(task)
            result = task.engine.fit(
                task.model,
                self.streams(task),
                self.phases,
                self.cfg,
                mask=self.mask,
                batch_sizes=self.batch_sizes(task),
                desc=self.name,
                seed=task.seed,
            )
            self.finalize(task)
        finally:  # also after a failure: the model must not keep this run's frozen flags or hooks
            self.cleanup(task)
        return result

    # loss helpers shared by the methods
    def mean_loss(self, batch: Batch) -> torch.Tensor:
        return self.family.mean_loss(self.model, batch)

    def ctx_generator(self, ctx: StepContext) -> torch.Generator:
        return ctx.generator


def saliency_mask(task: Task, ratio: float, batch_size: int) -> WeightMask:
    """SalUn's saliency map on the forget set: gradient of the GA loss −ℓ(θ_o; D_f), summed over batches,
    computed in eval mode at the original weights, global top-``ratio`` (see ``engine.masks``)."""
    model, family = task.model, task.family
    dev = task.engine.device
    was_training = model.training
    model.eval()

    def losses():
        for batch in task.split.forget.loader(batch_size):
            batch = {k: v.to(dev) for k, v in batch.items()}
            yield -family.per_example_loss(model, batch).mean()

    try:
        return WeightMask.from_gradients(model, losses, ratio)
    finally:
        model.train(was_training)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen (the original model f_o / a teacher)."""
    frozen = copy.deepcopy(model)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen

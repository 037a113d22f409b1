"""Random labelling (RL): fit wrong labels on D_f while keeping D_r, over any family's ``relabel``."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.data.examples import ExampleSet
from unlearnkit.engine.loop import Phase
from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method


@dataclass
class RLConfig(MethodConfig):
    """``alpha``: weight of the retain term (1 per the SalUn authors, issue #21).

    ``schedule`` says how the two expectations of Eq. 6 are optimised:
    ``"sequential"`` (default) takes, each epoch, a pass over D_f with random labels and then a pass
    over D_r with true labels (weighted by α): the procedure the SalUn authors state they use
    (Unlearn-Saliency issue #21) and their CIFAR-10 code. ``"joint"`` sums one forget-batch term and
    one retain-batch term in every step, an epoch being one pass over D_f; on the digits suite it
    over-forgets badly (D_r is visited ~10x less often). ``"concat"`` is the CIFAR-100 reference code:
    relabelled D_f and D_r shuffled together, each example weighted equally within a batch.
    """

    epochs: int = 10
    lr: float = 0.01
    alpha: float = 1.0
    non_negative = ("alpha",)  # the retain term's weight
    schedule: str = "sequential"

    def check(self) -> None:
        super().check()
        if self.schedule not in ("joint", "sequential", "concat"):
            raise ConfigError(f"schedule must be joint, sequential or concat, got {self.schedule!r}")


@register_method("rl")
class RL(Method):
    """RL: min E_{D_f, y'≠y}[ℓ(θ; x, y')] + α E_{D_r}[ℓ(θ; x, y)] (Golatkar et al. 2020; SalUn Eq. 6)."""

    paper = "Golatkar et al., CVPR 2020; objective of Fan et al., ICLR 2024, Eq. 6"
    epochwise = True
    Config = RLConfig

    def streams(self, task: Task):
        if self.cfg.schedule == "concat":
            return {"train": _MixedForget(task)}
        return {"forget": task.split.forget, "retain": task.split.retain}

    def forget_loss(self, batch, ctx):
        return self.mean_loss(self.family.relabel(batch, ctx.generator))

    def joint_loss(self, b, ctx):
        lf = self.forget_loss(b["forget"], ctx)
        lr = self.mean_loss(b["retain"])
        return lf + self.cfg.alpha * lr, {
            "forget_loss": float(lf.detach()),
            "retain_loss": float(lr.detach()),
        }

    def concat_loss(self, b, ctx):
        batch = b["train"]
        is_f = batch["is_forget"].bool()
        relabelled = self.family.relabel(batch, ctx.generator)
        y = batch["y"].where(~is_f, relabelled["y"])
        losses = self.family.per_example_loss(self.model, batch | {"y": y})
        weights = is_f.float() + self.cfg.alpha * (~is_f).float()
        return (weights * losses).mean(), {}

    def phases(self, epoch: int) -> list[Phase]:
        if self.cfg.schedule == "joint":
            return [Phase("joint", ("forget", "retain"), self.joint_loss, driver="forget")]
        if self.cfg.schedule == "concat":
            return [Phase("concat", ("train",), self.concat_loss)]
        return [
            Phase("forget", ("forget",), lambda b, ctx: (self.forget_loss(b["forget"], ctx), {})),
            Phase("retain", ("retain",), lambda b, ctx: (self.cfg.alpha * self.mean_loss(b["retain"]), {})),
        ]


def _MixedForget(task: Task):
    """D_f ∪ D_r with an ``is_forget`` column, for the concatenated schedule."""
    import torch

    f, r = task.split.forget, task.split.retain
    cols = {k: torch.cat([f.columns[k], r.columns[k]]) for k in f.columns}
    cols["is_forget"] = torch.cat(
        [torch.ones(len(f), dtype=torch.long), torch.zeros(len(r), dtype=torch.long)]
    )
    return ExampleSet(cols, torch.cat([f.ids, r.ids]), f.transform, f.meta)

"""Retrain from scratch on the retain set: the exact-unlearning reference (the oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.engine.loop import FitResult, Phase
from unlearnkit.errors import UnlearnkitError
from unlearnkit.families.base import reinitialize
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method

# the training recipe's fields: what retrain takes from the original's, and what the API reports it used
RECIPE_KEYS = (
    "epochs",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "scheduler",
    "milestones",
    "max_grad_norm",
)


@dataclass
class RetrainConfig(MethodConfig):
    """Defaults follow SalUn's original-model recipe (SGD 0.1, momentum 0.9, wd 5e-4, cosine);
    suites replace epochs/lr with the recipe that trained their original model."""

    epochs: int = 182
    lr: float = 0.1
    scheduler: str = "cosine"
    use_train_recipe: bool = True


@register_method("retrain")
class Retrain(Method):
    """Exact unlearning: train a freshly initialised model on D_r only, with the original recipe.

    Classifiers and language models only: a text-to-image world ships trained (its own recipe, judge and
    captions), and the concept-erasure papers compare with the original, not with a retrained model."""

    families = ("vision", "text")
    paper = "Exact reference; recipe of the original model (Fan et al., ICLR 2024, §5 setup)"
    exact = True
    Config = RetrainConfig

    def streams(self, task: Task):
        return {"retain": task.split.retain}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", ("retain",), lambda b, ctx: (self.mean_loss(b["retain"]), {}))]

    def run(self, task: Task) -> FitResult:
        if self.cfg.use_train_recipe and task.train_spec is not None:
            spec = task.train_spec
            for k in RECIPE_KEYS:
                setattr(self.cfg, k, getattr(spec, k))
        if task.model_factory is not None:
            fresh = task.model_factory()
            task.model.load_state_dict(fresh.state_dict())
        else:
            reinitialize(task.model, task.seed)
        if self.cfg.epochs == 0:
            raise UnlearnkitError("retrain needs method.epochs > 0")
        return super().run(task)

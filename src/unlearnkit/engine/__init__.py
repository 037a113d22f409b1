"""The one training loop, weight masks and optimizers."""

from unlearnkit.engine.loop import Engine, EngineConfig, Phase, StepContext
from unlearnkit.engine.masks import WeightMask

__all__ = ["Engine", "EngineConfig", "Phase", "StepContext", "WeightMask"]

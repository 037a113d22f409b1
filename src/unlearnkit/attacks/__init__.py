"""Attacks on unlearned models: relearning (fine-tuning on part of the forget set)."""

from unlearnkit.attacks.relearn import relearn, relearn_subset

__all__ = ["relearn", "relearn_subset"]

"""The experiment layer: a config resolved and validated, the frozen experiment it describes (family, data,
split, protocol, engine and recipe), the original and oracle models (built, loaded or cached; where the
oracle comes from: ``oracle_source``, its flat result: ``oracle``), running a method on a copy of the
original, and evaluating a model under the experiment's protocol.

It replaces the former ``pipeline`` module; nothing here tests a family's name: it asks the family
(split, original, protocol) and the protocol (evaluation)."""

from unlearnkit.experiment.cache import cache_key, oracle_model, original_model
from unlearnkit.experiment.config import DEFAULTS, TOP_KEYS, resolve
from unlearnkit.experiment.oracle import Oracle, export_oracle, resolve_oracle, wants_oracle
from unlearnkit.experiment.run import attack_metrics, build_method, evaluate_model, run_method, train_original
from unlearnkit.experiment.setup import Setup, make_setup

__all__ = [
    "attack_metrics",
    "DEFAULTS",
    "Oracle",
    "TOP_KEYS",
    "Setup",
    "build_method",
    "cache_key",
    "evaluate_model",
    "export_oracle",
    "make_setup",
    "oracle_model",
    "original_model",
    "resolve",
    "resolve_oracle",
    "run_method",
    "train_original",
    "wants_oracle",
]

"""The frozen experiment a resolved config describes: family, data, split, protocol, engine and recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.data.base import LoadedData
from unlearnkit.data.splits import Split, validate_labels
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError
from unlearnkit.experiment.config import resolve
from unlearnkit.experiment.oracle_source import OracleSource, check_source, parse_section
from unlearnkit.families.base import Family
from unlearnkit.models.lora import check_lora_spec
from unlearnkit.protocols import Protocol, protocol_for
from unlearnkit.protocols.base import check_relearnable
from unlearnkit.registry import get_family


@dataclass(frozen=True)
class Setup:
    """One experiment. Frozen: a variant (another forget set) is a new object, :meth:`with_split`."""

    cfg: dict[str, Any]
    family: Family
    data: LoadedData
    split: Split
    engine_cfg: EngineConfig
    train_spec: OptimSpec
    seed: int
    protocol: Protocol
    oracle: OracleSource = OracleSource()  # the ``oracle:`` section (experiment/oracle_source.py)

    def with_split(self, split: Split, data: LoadedData | None = None) -> Setup:
        """The same experiment with another split (and, when the split narrows it, other data)."""
        return replace(self, split=split, data=self.data if data is None else data)

    def engine(self, run_dir: str | Path | None = None, resume: bool = False) -> Engine:
        return Engine(copy.deepcopy(self.engine_cfg), run_dir, resume=resume)

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model of the ``model:`` section, drawn from ``seed`` (default: the run's)."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed if seed is None else seed)
        try:
            return self.family.build_model(self.cfg["model"], self.data)
        finally:
            torch.random.set_rng_state(state)


def make_setup(cfg: dict[str, Any]) -> Setup:
    """Resolve and validate ``cfg``, load its data and build its split; no model is built yet."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < 2**32:  # numpy's generators take 0 .. 2**32 - 1
        raise ConfigError(f"seed must lie in 0..{2**32 - 1}, got {seed}")
    if not isinstance(cfg["family_options"], dict):
        raise ConfigError(
            "family_options must be a mapping (e.g. {relabel_map: {'a red circle': 'a red square'}})"
        )
    try:
        family = get_family(cfg["family"])(**cfg["family_options"])
    except TypeError as exc:
        raise ConfigError(f"bad family_options for {cfg['family']!r}: {exc}") from exc
    engine_cfg = build_dataclass(EngineConfig, cfg["engine"] | {"seed": seed}, "engine")
    if cfg["model"].get("lora") is not None:
        check_lora_spec(cfg["model"]["lora"])
    train_spec = build_dataclass(OptimSpec, cfg["train"], "train")
    data = family.load_data(family.data_spec(cfg))
    split, data = family.make_split(data, cfg["split"], seed)
    protocol = protocol_for(family.protocol(data), cfg["eval"])
    if data.num_classes:
        for name, s in (("forget set", split.forget), ("retain set", split.retain), ("test set", split.test)):
            validate_labels(s, data.num_classes, name)
    oracle = parse_section(cfg.get("oracle"))
    setup = Setup(cfg, family, data, split, engine_cfg, train_spec, seed, protocol, oracle)
    protocol.check_setup(setup)  # e.g. the erasure judge knows the concept: fail before any training
    if (cfg.get("attack") or {}).get("relearn") is not None:
        check_relearnable(protocol)
    check_source(oracle, setup)  # the oracle's architecture, vocabulary or forget set: also before training
    return setup

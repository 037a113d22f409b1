"""The protocol contract and the result it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.errors import ConfigError
from unlearnkit.registry import get_protocol


@dataclass(frozen=True)
class Result:
    """What an evaluation found: ``public`` metrics (tables, results.json) and ``private`` per-item values
    an oracle's result lends to the methods compared with it (TOFU's forget truth ratios, MUSE's AUC).

    Stored rows keep both in one mapping, private keys prefixed with ``_`` (:meth:`flat`)."""

    public: dict[str, Any] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        return dict(self.public) | {f"_{k}": v for k, v in self.private.items()}

    @classmethod
    def from_flat(cls, metrics: dict[str, Any]) -> Result:
        pub = {k: v for k, v in metrics.items() if not k.startswith("_")}
        return cls(pub, {k[1:]: v for k, v in metrics.items() if k.startswith("_")})


def public(metrics: dict[str, Any]) -> dict[str, Any]:
    """A stored row's metrics without its private (``_``-prefixed) entries."""
    return Result.from_flat(metrics).public


@dataclass
class EvalConfig:
    """Options every protocol's ``eval:`` section has. ``oracle``: also retrain the exact reference and
    compare with it (``unlearnkit unlearn``; the suites always do)."""

    oracle: bool = False


class Protocol:
    """One benchmark's evaluation. Subclasses set the class attributes and implement :meth:`evaluate`.

    ``oracle`` passed to :meth:`evaluate` is the oracle's flat result (public + ``_`` private values),
    ``"self"`` when the model *is* the oracle (gap 0 / forget quality 1, as the papers' tables report it),
    or None (no comparison)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EvalConfig
    headline: ClassVar[tuple[str, ...]] = ()  # the columns of a suite table, most important first
    forget_keys: ClassVar[tuple[str, ...]] = ()  # what a relearning attack re-measures
    axes: ClassVar[tuple[str, str] | None] = None  # (forgetting, utility) of the trade-off plot
    caption: ClassVar[str] = ""
    gap_key: ClassVar[str | None] = None  # the one number that ranks methods against the oracle

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> Protocol:
        """Validate a config's ``eval:`` section (unknown keys get a did-you-mean) and build the protocol."""
        return cls(build_dataclass(cls.Config, section or {}, "eval"))

    def check_setup(self, exp: Any) -> None:
        """Refuse, before any training, evaluation options that cannot work with this experiment's data
        (e.g. a judge that does not know the erased concept). Nothing to check by default."""

    def evaluate(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, original: Any = None
    ) -> Result:
        raise NotImplementedError

    def documents(self) -> dict[str, Any]:
        """JSON documents the last :meth:`evaluate` produced besides its metrics, stored in a run folder
        under their names (e.g. ``lm_eval.json``, lm-evaluation-harness's whole result). None by default."""
        return {}

    def relearn(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | None, spec: dict[str, Any]
    ) -> dict[str, Any]:
        """Relearning attack: fine-tune a copy on part of the forget set, re-measure :attr:`forget_keys`
        (reported with the suffix ``_relearned``). Protocols without one refuse."""
        raise ConfigError(f"the {self.name} protocol has no relearning attack: remove attack.relearn")


def check_relearnable(protocol: Protocol) -> None:
    """A one-line ConfigError, before any training, for ``attack.relearn`` on a protocol without it."""
    if type(protocol).relearn is Protocol.relearn:
        raise ConfigError(f"the {protocol.name} protocol has no relearning attack: remove attack.relearn")


def protocol_for(name: str, section: dict[str, Any] | None = None) -> Protocol:
    """The registered protocol ``name`` with its ``eval:`` section validated."""
    return get_protocol(name).from_section(section)

"""Where a run's oracle comes from: the ``oracle:`` config section, its checks, and the stats file format.

TOFU's oracle is the *base* model fine-tuned on the retain set with the full model's recipe (Maini et al.,
2024, §2.2: ``retain90`` is trained exactly as ``full`` is, without the forget authors); open-unlearning
reuses a retain model's stored evaluation (``retain_logs_path``). So a run names one of:

- ``oracle.model.path=DIR``: a retain model the user already has (a Hugging Face folder of the model's
  architecture and tokenizer; for the models built here, a weights file of the same builder);
- ``oracle.base=DIR``: the base model, fine-tuned here on the retain set with the ``train:`` recipe (what
  ``retrain`` does with ``use_train_recipe``), cached under the base folder's identity;
- ``oracle.stats=FILE``: the stored oracle values of an earlier run (:func:`write_stats`).

None of them: the oracle is ``retrain`` from a fresh initialisation, right for the models trained here from
scratch (the synthetic worlds) and refused for a pretrained folder (``model.name=hf``), whose fresh
initialisation would be its own fine-tuned weights.

**The stats file** (``oracle_stats.json``, written by every run that computes an oracle) is one JSON object:
``format`` ("unlearnkit-oracle-stats"), ``version`` (1), ``protocol`` (e.g. "tofu", "muse"),
``forget_ids_sha256`` and ``forget_count`` (the forget set it was computed on: a run on another forget set
refuses it), ``source`` (how the oracle was obtained) and ``metrics``: the oracle's flat evaluation, public
metrics plus the ``_``-prefixed per-item values a protocol compares with (TOFU: ``_forget_tr``, the forget
truth ratios of the KS test, ``_mia_nll`` and ``mia_min_k`` for the reference MIA and PrivLeak; MUSE:
``_auc``, the oracle's Min-40% AUC of PrivLeak)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.data.tokenizer import has_tokenizer_files, load_tokenizer
from unlearnkit.errors import ConfigError, did_you_mean
from unlearnkit.io import write_json

STATS_FORMAT = "unlearnkit-oracle-stats"
STATS_VERSION = 1
STATS_FILE = "oracle_stats.json"
KEYS = ("model", "base", "stats")
HOW = (
    "oracle.base=DIR (the base model, fine-tuned here on the retain set with the train: recipe), "
    "oracle.model.path=DIR (a retain model you have) or oracle.stats=FILE (the oracle_stats.json of an "
    "earlier run on this forget set)"
)


@dataclass(frozen=True)
class OracleSource:
    """The validated ``oracle:`` section: at most one of the three is set."""

    model_path: str | None = None
    base: str | None = None
    stats: str | None = None

    @property
    def kind(self) -> str | None:
        """The source given: ``model``, ``base``, ``stats``, or None (retrained from scratch)."""
        for kind, value in (("model", self.model_path), ("base", self.base), ("stats", self.stats)):
            if value is not None:
                return kind
        return None

    def describe(self) -> dict[str, Any]:
        """How the oracle is obtained, for the stats file and the run's records."""
        value = {"model": self.model_path, "base": self.base, "stats": self.stats}.get(self.kind or "")
        return {"kind": self.kind or "retrain", "path": value}


def parse_section(section: Any) -> OracleSource:
    """Validate a config's ``oracle:`` section (unknown keys get a did-you-mean; one source at most)."""
    if section is None:
        return OracleSource()
    if not isinstance(section, dict):
        raise ConfigError(f"config section 'oracle' must be a mapping ({HOW}), got {section!r}")
    for k in section:
        if k not in KEYS:
            raise ConfigError(f"unknown option oracle.{k}: {did_you_mean(str(k), list(KEYS))}")
    model = section.get("model")
    if model is not None and not isinstance(model, dict):
        raise ConfigError(f"oracle.model must be a mapping: write oracle.model.path=DIR, not {model!r}")
    for k in model or {}:
        if k != "path":
            raise ConfigError(f"unknown option oracle.model.{k}: {did_you_mean(str(k), ['path'])}")
    values = {
        "oracle.model.path": (model or {}).get("path"),
        "oracle.base": section.get("base"),
        "oracle.stats": section.get("stats"),
    }
    for name, v in values.items():
        if v is not None and (not isinstance(v, str | Path) or not str(v)):
            raise ConfigError(f"{name} must be a path, got {v!r}")
    given = [name for name, v in values.items() if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give one oracle source, not {' and '.join(given)}: {HOW}")
    m, b, s = (None if v is None else str(v) for v in values.values())
    return OracleSource(m, b, s)


def pretrained(cfg: dict[str, Any]) -> bool:
    """Whether the model is loaded from a pretrained folder (then no fresh initialisation is the oracle's)."""
    return (cfg.get("model") or {}).get("name") == "hf"


def check_source(src: OracleSource, setup: Any) -> None:
    """Refuse, before any training, an oracle that cannot be this run's (``setup`` is the experiment's
    :class:`~unlearnkit.experiment.setup.Setup`): a pretrained model with ``eval.oracle=true`` and no source,
    a folder of another architecture or vocabulary, a stats file of another forget set or protocol."""
    cfg = setup.cfg
    if src.kind is None:
        if setup.protocol.cfg.oracle and pretrained(cfg):
            raise ConfigError(needs_source_message(cfg))
        return
    if src.stats is not None:
        check_stats(read_stats(src.stats), setup, src.stats)
        return
    name = "oracle.model.path" if src.kind == "model" else "oracle.base"
    path = src.model_path if src.kind == "model" else src.base
    if not pretrained(cfg):
        if src.kind == "base":
            raise ConfigError(
                "oracle.base needs a pretrained model folder (model.name=hf model.path=DIR); a model trained "
                "here from scratch gets its retrained oracle from eval.oracle=true alone"
            )
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"{name}={path!r} is not a weights file (.safetensors) of the model's builder")
        return
    check_same_architecture(str(cfg["model"]["path"]), path, name)
    tok = setup.data.meta.get("tokenizer")
    if tok is not None and has_tokenizer_files(path) and load_tokenizer(path).get_vocab() != tok.get_vocab():
        raise ConfigError(
            f"{name}={path!r} has another tokenizer than the model (their vocabularies differ): the oracle "
            "must share the model's vocabulary"
        )


def needs_source_message(cfg: dict[str, Any]) -> str:
    path = (cfg.get("model") or {}).get("path")
    return (
        f"the oracle of a pretrained model (model.path={path}) is not a retraining from scratch: give {HOW}"
    )


def _architecture(path: str, name: str) -> dict[str, Any]:
    from transformers import AutoConfig

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{name}={path!r} is not a Hugging Face model folder (no config.json there)")
    try:
        c = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not read {name}={path!r}: {first}") from None
    text = c.get_text_config() if hasattr(c, "get_text_config") else c
    return {
        "model_type": c.model_type,
        "architectures": list(c.architectures or []),
        "vocab_size": getattr(text, "vocab_size", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
    }


def check_same_architecture(model_path: str, other: str, name: str) -> None:
    """One line naming the first field (model type, architecture class, vocabulary size, width, depth)
    in which the folder ``other`` differs from the model's."""
    mine, theirs = _architecture(model_path, "model.path"), _architecture(other, name)
    for key, want in mine.items():
        if theirs[key] != want:
            raise ConfigError(
                f"{name}={other!r} is not the model's architecture: its {key} is {theirs[key]!r}, "
                f"the model's (model.path) is {want!r}; the oracle must have the model's architecture and "
                "vocabulary"
            )


def read_stats(path: str | Path) -> dict[str, Any]:
    """The stats file at ``path``, its format checked (one-line ConfigErrors)."""
    p, where = Path(path).expanduser(), f"oracle.stats={str(path)!r}"
    if not p.is_file():
        raise ConfigError(f"{where} not found: give the oracle_stats.json an earlier run wrote")
    try:
        obj = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    ok = isinstance(obj, dict) and obj.get("format") == STATS_FORMAT and isinstance(obj.get("metrics"), dict)
    if not ok:
        raise ConfigError(
            f"{where} is not an oracle stats file (format {STATS_FORMAT!r} with metrics): use the "
            "oracle_stats.json an unlearnkit run wrote"
        )
    if obj.get("version") != STATS_VERSION:
        raise ConfigError(f"{where} has version {obj.get('version')!r}; unlearnkit reads {STATS_VERSION}")
    return obj


def check_stats(stats: dict[str, Any], setup: Any, path: str) -> None:
    """Refuse stats made under another protocol or on another forget set."""
    if stats.get("protocol") != setup.protocol.name:
        raise ConfigError(
            f"oracle.stats={path!r} holds {stats.get('protocol')!r} values, but this run is evaluated "
            f"with the {setup.protocol.name!r} protocol"
        )
    sha, n = setup.split.forget_ids_sha256(), len(setup.split.forget)
    if stats.get("forget_ids_sha256") != sha or stats.get("forget_count") != n:
        raise ConfigError(
            f"oracle.stats={path!r} was made on another forget set ({stats.get('forget_count')} items, ids "
            f"sha256 {str(stats.get('forget_ids_sha256'))[:12]}) than this run's ({n} items, {sha[:12]}): "
            "use the stats of an oracle of this forget set"
        )


def stats_document(
    flat: dict[str, Any], protocol: str, forget_ids_sha256: str, forget_count: int, source: dict[str, Any]
) -> dict[str, Any]:
    """The stats file's content (format in the module docstring): ``flat`` is the oracle's flat
    evaluation under ``protocol`` on the forget set with these ids' sha256 and size."""
    return {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "protocol": protocol,
        "forget_ids_sha256": forget_ids_sha256,
        "forget_count": forget_count,
        "source": source,
        "metrics": flat,
    }


def write_stats(path: str | Path, setup: Any, flat: dict[str, Any], source: dict[str, Any]) -> None:
    """Write the stats file of an oracle evaluated under ``setup`` atomically (``unlearnkit.io``)."""
    sha, n = setup.split.forget_ids_sha256(), len(setup.split.forget)
    write_json(path, stats_document(flat, setup.protocol.name, sha, n, source))

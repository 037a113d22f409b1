"""Config-driven pipeline shared by the CLI, the API and the suites.

``Setup`` = family adapter + data + split + the original model recipe. ``original_model`` trains (or
loads from the cache / a safetensors file) the model to unlearn; ``run_method`` unlearns a copy of it
and measures wall time; ``evaluate_model`` computes the family's metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.config import build_dataclass, merge
from unlearnkit.data.base import LoadedData
from unlearnkit.data.splits import Split, make_split, validate_labels
from unlearnkit.engine.loop import (
    Engine,
    EngineConfig,
    FitResult,
    Phase,
    broadcast_object,
    is_main_process,
)
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.families.base import Family
from unlearnkit.io import load_weights, save_weights, write_json
from unlearnkit.methods.base import Method, Task
from unlearnkit.registry import get_family, get_method, supports

DEFAULTS: dict[str, Any] = {
    "family": "vision",
    "seed": 0,
    "data": {"name": "digits"},
    "split": {"kind": "random", "forget": 0.1},
    "model": {"name": "resnet-tiny", "path": None},
    "train": {
        "epochs": 30,
        "lr": 0.1,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "scheduler": "cosine",
    },
    "method": {"name": "salun"},
    "engine": {},
    "eval": {"mia_features": ["confidence"], "oracle": False},
    "out": None,
    "family_options": {},
}
TOP_KEYS = set(DEFAULTS) | {"suite", "methods", "description"}


def cache_root() -> Path:
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


@dataclass
class Setup:
    cfg: dict[str, Any]
    family: Family
    data: LoadedData
    split: Split
    engine_cfg: EngineConfig
    train_spec: OptimSpec
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    def engine(self, run_dir: str | Path | None = None, resume: bool = False) -> Engine:
        return Engine(copy.deepcopy(self.engine_cfg), run_dir, resume=resume)

    def new_model(self, seed: int | None = None) -> nn.Module:
        import torch

        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed if seed is None else seed)
        try:
            return self.family.build_model(self.cfg["model"], self.data)
        finally:
            torch.random.set_rng_state(state)


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        from unlearnkit.errors import did_you_mean

        k = sorted(unknown)[0]
        raise ConfigError(f"unknown config section {k!r}: {did_you_mean(k, sorted(TOP_KEYS))}")
    out = merge(DEFAULTS, cfg)
    for sec in ("data", "split", "model", "train", "method", "engine", "eval"):
        if not isinstance(out[sec], dict):
            raise ConfigError(f"config section {sec!r} must be a mapping, got {out[sec]!r}")
    return out


def make_setup(cfg: dict[str, Any]) -> Setup:
    cfg = resolve(cfg)
    seed = cfg["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
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
        from unlearnkit.models.lora import check_lora_spec

        check_lora_spec(cfg["model"]["lora"])
    train_spec = build_dataclass(OptimSpec, cfg["train"], "train")
    data = family.load_data(family.data_spec(cfg))
    if cfg["split"].get("kind") == "benchmark":
        split = benchmark_split(data, cfg["split"])
    elif cfg["split"].get("kind") == "concept":
        split = concept_split(data, cfg["split"], seed)
    elif cfg["split"].get("kind") == "ids" and cfg["family"] == "text":
        split, data = text_ids_split(data, cfg["split"])
    else:
        split = make_split(data.train, data.test, cfg["split"], seed)
    if data.num_classes:
        for name, s in (("forget set", split.forget), ("retain set", split.retain), ("test set", split.test)):
            validate_labels(s, data.num_classes, name)
    return Setup(cfg, family, data, split, engine_cfg, train_spec, seed)


def benchmark_split(data: LoadedData, spec: dict[str, Any]) -> Split:
    """A split the dataset defines itself (TOFU's forget10/retain90, MUSE's forget/retain): the ids come
    from ``data.meta["forget_ids"][name]`` and ``data.meta["retain_ids"][name]``; test = the holdout."""
    fids = data.meta.get("forget_ids") or {}
    rids = data.meta.get("retain_ids") or {}
    name = spec.get("forget") or data.meta.get("forget_split")
    if name not in fids:
        raise ConfigError(
            f"split.forget={name!r} is not a split of {data.name!r}; choose one of {sorted(fids)}"
        )
    retain_name = spec.get("retain") or data.meta.get("retain_split") or _complement(name, rids)
    if retain_name not in rids:
        raise ConfigError(f"split.retain={retain_name!r} is not a split of {data.name!r}: {sorted(rids)}")
    retain = data.train.subset(rids[retain_name])
    if data.meta.get("pretrain") is not None:  # general knowledge trained alongside (TOFU's real authors)
        from unlearnkit.data.examples import concat

        retain = concat(retain, data.meta["pretrain"])
    return Split(
        data.train.subset(fids[name]), retain, data.test, "benchmark", {"forget": name, "retain": retain_name}
    )


def text_ids_split(data: LoadedData, spec: dict[str, Any]) -> tuple[Split, LoadedData]:
    """TOFU-style text data: forget = the questions of ``full`` listed by ``split.ids_file`` (or inline
    ``split.ids``), e.g. a worst-case selection; retain = every other question plus the real-author and
    world-fact pairs (as in :func:`benchmark_split`), so the oracle is retrained on them; test = the holdout.

    Returns the split and the data with ``meta["eval"]`` rebuilt for it (:func:`unlearnkit.data.tofu.
    ids_eval_sets`): the forget evaluation set is those questions with their paraphrased and perturbed
    answers, the retain evaluation set loses any forgotten question (listed in ``split.info``).
    ``split.without_perturbed=partial`` accepts questions that have no perturbed answers (real TOFU).
    """
    from dataclasses import replace

    from unlearnkit.data.splits import ids_from_spec, ids_split
    from unlearnkit.data.tofu import ids_eval_sets

    if "perturbed" not in data.meta:
        raise ConfigError(
            f"split.kind=ids on the text dataset {data.name!r} is not supported: its forget metrics are tied "
            "to its own forget split (MUSE's forget corpus); use split.kind=benchmark, or a TOFU dataset "
            "(data.name=tofu or tofu-synthetic) for forget sets of any questions"
        )
    base = ids_split(data.train, data.test, ids_from_spec(spec))
    ev, info = ids_eval_sets(data.meta, base.forget_ids, spec.get("without_perturbed", "error"))
    retain = base.retain
    if data.meta.get("pretrain") is not None:
        from unlearnkit.data.examples import concat

        retain = concat(retain, data.meta["pretrain"])
    info = base.info | info | ({"ids_file": str(spec["ids_file"])} if spec.get("ids_file") else {})
    split = Split(base.forget, retain, data.test, "ids", info)
    meta = data.meta | {"eval": ev, "forget_split": "ids", "retain_split": None}
    return split, replace(data, meta=meta)


def concept_split(data: LoadedData, spec: dict[str, Any], seed: int = 0) -> Split:
    """Text-to-image: forget every training image captioned with ``split.concept`` (e.g. "a red circle", a
    list of captions, or ``by-seed``: caption ``seed mod K``); retain the other captions; test images of the
    other captions are the real images for FID. ``split.prompts_file`` (a prompt-wise worst-case selection's
    JSON) names the captions instead and wins over ``split.concept``."""
    from unlearnkit.metrics.t2i_suite import forget_captions

    names = list(data.class_names)
    concepts = forget_captions(spec, names, seed)
    for c in concepts:
        if c not in names:
            raise ConfigError(f"split.concept={c!r} is not a caption of {data.name!r}; choose one of {names}")
    from unlearnkit.data.splits import class_split

    return class_split(data.train, data.test, sorted({names.index(c) for c in concepts}))


def _complement(forget: str, retain_ids: dict) -> str | None:
    """TOFU's naming: forget10 pairs with retain90."""
    digits = "".join(c for c in forget if c.isdigit())
    if digits:
        cand = f"retain{100 - int(digits)}"
        if cand in retain_ids:
            return cand
    return next(iter(retain_ids), None)


def build_method(spec: dict[str, Any], family: str = "vision") -> Method:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ConfigError("method.name is missing: set method.name=<method> (see `unlearnkit list methods`)")
    cls = get_method(name)
    if not supports(cls, family):
        raise ConfigError(
            f"method {name!r} does not support the {family!r} family (it supports {cls.families})"
        )
    return cls(build_dataclass(cls.Config, spec, f"method({name})"))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_original(
    setup: Setup, model: nn.Module, run_dir: Path | None = None, resume: bool = False
) -> FitResult:
    """Train ``model`` on forget ∪ retain with the ``train:`` recipe (the model to be unlearned).

    With ``run_dir``, checkpoints (``engine.checkpoint_every``/``checkpoint_steps``) go there and
    ``resume`` continues from the last one."""
    engine = setup.engine(run_dir, resume)
    fam = setup.family

    def loss(b, ctx):
        return fam.mean_loss(model, b["train"]), {}

    bs = {"train": engine.cfg.batch_size}
    return engine.fit(
        model,
        {"train": setup.split.train},
        lambda e: [Phase("train", ("train",), loss)],
        setup.train_spec,
        batch_sizes=bs,
        desc="original",
        seed=setup.seed,
    )


def original_model(
    setup: Setup, use_cache: bool = True, resume: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to unlearn: loaded from ``model.path``, from the cache, or trained and cached.

    The original is trained on the full training set, so it does not depend on the forget split;
    the cache key covers data, model and recipe and the seed. When checkpoints are on (or ``resume``),
    its training checkpoints go to the cache folder, and ``resume`` continues a killed training.
    """
    mcfg = setup.cfg["model"]
    if setup.cfg["family"] == "diffusion":  # the shipped (or cached, or given) trained T2I model + judge
        from unlearnkit.models.t2i_world import load_original

        world = mcfg.get("world") or setup.data.meta.get("world", "shapes")
        model, judge = load_original(mcfg.get("path"), world=world)
        setup.info["judge"] = judge
        setup.info["original"] = model  # attacks target images drawn by the original
        setup.family.validate(model, setup.split.forget)
        _same_vocabulary(model, setup.data.meta.get("tokenizer"), mcfg.get("path"), world)
        _same_schema(judge, setup.data.meta.get("schema"), mcfg.get("path"), world)
        return model, {"source": str(mcfg.get("path") or f"world {world}")}
    model = setup.new_model()
    if mcfg.get("name") == "hf":  # a pretrained folder: the builder already loaded its weights
        setup.family.validate(model, setup.split.forget)
        return model, {"source": str(mcfg.get("path"))}
    if mcfg.get("path"):
        load_weights(model, mcfg["path"])
        setup.family.validate(model, setup.split.forget)
        return model, {"source": str(mcfg["path"])}
    key = _hash(
        {
            "family": setup.cfg["family"],
            "data": setup.cfg["data"],
            "model": {k: v for k, v in mcfg.items() if k != "lora"},
            "train": setup.cfg["train"],
            "seed": setup.seed,
        }
    )
    folder = cache_root() / "originals" / key
    weights = folder / "model.safetensors"
    if use_cache and weights.is_file():
        load_weights(model, weights)
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
        return model, meta | {"source": "cache", "cache": str(folder)}
    setup.family.validate(model, setup.split.forget)
    ecfg = setup.engine_cfg
    ckpt = use_cache and (resume or ecfg.checkpoint_every > 0 or ecfg.checkpoint_steps > 0)
    res = train_original(setup, model, folder if ckpt else None, resume=resume)
    meta = {
        "train_seconds": res.seconds,
        "steps": res.steps,
        "config": {k: setup.cfg[k] for k in ("family", "data", "model", "train", "seed")},
    }
    if use_cache:
        save_weights(model, weights)  # every rank: a sharded model is gathered collectively; rank 0 writes
        if is_main_process():
            write_json(folder / "meta.json", meta)
    return model, meta | {"source": "trained"}


def _same_vocabulary(model: nn.Module, data_tokenizer: Any, path: Any, world: str = "shapes") -> None:
    """The dataset's captions and the prompt attacks' vocabulary come from the dataset's tokenizer: a model
    trained with another vocabulary would read wrong words (or index past its embeddings)."""
    mine = getattr(model, "tokenizer", None)
    if mine is None or data_tokenizer is None:
        return
    want, have = data_tokenizer.get_vocab(), mine.get_vocab()
    differ = sorted(w for w in want if have.get(w) != want[w])
    if differ:
        raise DataError(
            f"model.path={str(path or 'shipped')!r} was trained with another vocabulary than the dataset's "
            f"tokenizer ({len(differ)} word(s) differ, e.g. {differ[:3]}): check model.world / data, or "
            f"retrain it with `python scripts/train_t2i_world.py --world {world} --out DIR` from this version"
        )


def _same_schema(judge: Any, data_schema: Any, path: Any, world: str) -> None:
    """The judge must predict the attributes the dataset's prompts name (same classes, same order)."""
    have = getattr(judge, "schema", None)
    if have is None or data_schema is None or have == data_schema:
        return
    raise DataError(
        f"the judge of model.path={str(path or 'world ' + world)!r} predicts {have.to_dict()} but the "
        f"dataset's prompts name {data_schema.to_dict()}: use the world trained on this dataset "
        f"(model.world) or retrain it with `python scripts/train_t2i_world.py --world {world} --out DIR`"
    )


def _warm_up_torch() -> None:
    """Pay torch's one-time lazy imports before a timed run: the first optimizer a process builds imports
    ``torch._dynamo`` (~1 s here), which used to be billed to whichever method ran first as RTE."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def run_method(
    setup: Setup, original: nn.Module, method: Method, run_dir: Path | None = None, resume: bool = False
) -> tuple[nn.Module, float, FitResult]:
    """Unlearn a deep copy of ``original`` (never the input itself); returns (model, seconds, fit).

    ``resume`` continues from the last checkpoint in ``run_dir`` (see ``Engine.fit``)."""
    from unlearnkit.engine.distributed import full_state_dict, is_sharded, load_full_state_dict

    if is_sharded(original):  # trained under FSDP/ZeRO-3 in this run; FSDP modules cannot be deep-copied
        model = setup.new_model()
        load_full_state_dict(model, full_state_dict(original, all_ranks=True))
    else:
        model = copy.deepcopy(original)
    lora = None if method.exact else setup.cfg["model"].get("lora")  # the oracle retrains fully
    if lora:
        from unlearnkit.models.lora import apply_lora

        model = apply_lora(model, dict(lora))
    task = Task(
        setup.family,
        model,
        setup.split,
        setup.engine(run_dir, resume),
        setup.seed,
        model_factory=lambda: setup.new_model(setup.seed + 10_007),
        train_spec=setup.train_spec,
    )
    _warm_up_torch()
    t0 = time.perf_counter()
    fit = method.run(task)
    if lora:
        from unlearnkit.models.lora import merge_lora

        task.model = merge_lora(task.model)
    seconds = time.perf_counter() - t0
    return task.model, seconds, fit


def oracle_model(
    setup: Setup, method: Method, original: nn.Module, use_cache: bool = True
) -> tuple[nn.Module, float]:
    """The retrained oracle for this split, cached by (data, model, recipe, split ids, seed).

    Returns the model and the wall seconds its training took (from the cache's record when reused),
    so a suite's RTE column stays the real cost of retraining.
    """
    key = _hash(
        {
            "family": setup.cfg["family"],
            "data": setup.cfg["data"],
            "model": setup.cfg["model"],
            "train": setup.cfg["train"],
            "seed": setup.seed,
            "method": vars(method.cfg),
            "forget": setup.split.forget_ids_sha256(),
            "n_retain": len(setup.split.retain),
        }
    )
    folder = cache_root() / "oracles" / key
    weights = folder / "model.safetensors"
    if use_cache and weights.is_file() and (folder / "meta.json").is_file():
        model = setup.new_model()
        load_weights(model, weights)
        return model, float(json.loads((folder / "meta.json").read_text())["seconds"])
    model, seconds, _ = run_method(setup, original, method)
    if use_cache:
        save_weights(model, weights)  # every rank: a sharded model is gathered collectively; rank 0 writes
        if is_main_process():
            write_json(folder / "meta.json", {"seconds": seconds})
    return model, seconds


def evaluate_model(
    setup: Setup, model: nn.Module, oracle: dict[str, Any] | str | None = None
) -> dict[str, Any]:
    """The family's metrics; with the oracle's metrics, also the comparisons to it (gap, forget quality).

    ``oracle="self"`` evaluates the oracle itself and compares it with its own values. Under several
    processes every rank evaluates the (identical) model on the whole split, so that collective forward
    passes (DeepSpeed ZeRO-3) stay in step, and every rank returns rank 0's metrics.
    """
    return broadcast_object(_evaluate_model(setup, model, oracle))


def _evaluate_model(setup: Setup, model: nn.Module, oracle: dict[str, Any] | str | None) -> dict[str, Any]:
    fam = setup.cfg["family"]
    if fam == "vision":
        from unlearnkit.metrics.vision import avg_gap, evaluate_classifier

        feats = setup.cfg["eval"].get("mia_features") or ["confidence"]
        out = evaluate_classifier(model, setup.split, setup.family, feats, setup.engine_cfg.eval_batch_size)
        if oracle is not None:
            out["gap"] = avg_gap(out, out if oracle == "self" else oracle)
        return out
    if fam == "text":
        from unlearnkit.metrics.text_suite import evaluate_text

        return evaluate_text(setup, model, oracle)
    if fam == "diffusion":
        from unlearnkit.metrics.t2i_suite import evaluate_t2i

        return evaluate_t2i(setup, model)
    raise UnlearnkitError(f"no evaluator for family {fam!r} yet")

"""MUSE's scalability and sustainability protocols (Shi et al., 2024, §2.5–2.6): suite ``kind: sequential``.

A suite config lists unlearning ``requests`` (forget sets the dataset defines, e.g. ``sust_forget_1..4``)
and a ``mode``:

- ``sustainability``: the requests arrive one after another; request k unlearns its own articles starting
  from the model request k−1 left (MUSE's ``unlearn_news_sust.sh`` chains ``model_path``). After each request
  the forget metrics are measured on the articles of requests 1..k (the cumulative forget set).
- ``scalability``: every request (forget sets of growing size, ``scal_forget_1..4``) is unlearned from the
  *original* model; the forget metrics are measured on that request's articles.

In both modes ``knowmem_r`` (and ``verbmem_r``, VerbMem on the retain articles: a utility signal for tiny
models, whose KnowMem sits at its floor) is measured on the retain set. The reference row ``retrain`` is the
oracle trained on the retain set only (the one the plain ``muse-synthetic`` suite uses, cached): it never saw
any forget article, so it is the retrained model for every request's articles, and each request's PrivLeak
compares the model's forget-vs-holdout Min-40% AUC with the oracle's AUC on the same articles.

Restricting MUSE's evaluation sets to a request's articles: PrivLeak takes the articles' texts (read from the
dataset's ``scal``/``sust`` tables); VerbMem takes the forget article's VerbMem record (the one whose prompt
starts the article), or else prompt = the first half of the article's tokens, ground truth = the rest; KnowMem
takes the forget QA of the matched articles, read as consecutive equal blocks per article (the layout of
``muse-synthetic``). A request with articles outside ``raw/forget`` and no QA is refused with a clear error.

``DIR/results.json`` rows: ``{"method", "seed", "request", "forget", "n_unlearned", "n_articles", "start",
"weights_before", "weights_after", "metrics"}`` (``request`` 1-based; the hashes are the receipts of the
chain: in sustainability mode ``weights_before`` of request k is ``weights_after`` of request k−1).
``results.md`` has one line per (method, request), mean ± std over seeds.

Each (method, seed, request) row is stored in ``DIR/runs.sqlite`` as it finishes and reused on a rerun
(``bench/loop.py``); its training curve goes to ``DIR/curves/<method>-seed<k>-request<r>.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

from unlearnkit.bench.kinds import SuiteRequest, register_kind
from unlearnkit.bench.loop import Lazy, Outcome, SuiteRunner, resolved
from unlearnkit.bench.results import (
    markdown_table,
    oracle_first,
    public,
    select_methods,
    suite_result,
    write_results,
)
from unlearnkit.bench.rows import ORACLE, RowRunner, receipt
from unlearnkit.data.muse import TableSource
from unlearnkit.data.splits import Split
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import DEFAULTS, Setup, build_method
from unlearnkit.io import weights_sha256
from unlearnkit.metrics.muse import verbmem

PROTOCOL = "muse"  # the only protocol whose datasets define sequential requests
MODES = ("sustainability", "scalability")
SEQ_KEYS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "verbmem_r", "RTE")
CAPTION = (
    "verbmem_f / knowmem_f / privleak on the {scope}; knowmem_r on the retain QA; verbmem_r = VerbMem on "
    "the retain articles (utility); ROUGE-L F1 x 100; PrivLeak in % of the oracle's AUC (0 = like the "
    "oracle, negative = under-unlearned); RTE in seconds per request. retrain = the retain-only oracle."
)
SCOPES = {
    "sustainability": "articles of requests 1..k (each request starts from the previous request's model)",
    "scalability": "request's articles (each request starts from the original model)",
}
SUITE_ONLY = ("suite", "kind", "mode", "requests", "keys", "caption", "attack")


def split_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict], dict[str, Any]]:
    """(pipeline config, method specs, suite options) from a loaded suite config (not modified)."""
    cfg = copy.deepcopy(cfg)
    specs = {k: dict(v or {}) for k, v in (cfg.pop("methods", None) or {}).items()}
    opts = {k: cfg.pop(k) for k in SUITE_ONLY if k in cfg}
    mode = opts.get("mode", "sustainability")
    if mode not in MODES:
        raise ConfigError(f"a sequential suite's mode must be one of {MODES}, got {mode!r}")
    requests = opts.get("requests")
    if not isinstance(requests, list) or not requests or not all(isinstance(r, str) for r in requests):
        raise ConfigError(
            f"a sequential suite needs 'requests:' (a list of forget-set names), got {requests!r}"
        )
    return cfg, specs, opts | {"mode": mode}


# -- evaluation sets restricted to some articles ------------------------------------------------------------
def request_texts(data: Any, name: str) -> list[str]:
    """The article texts of forget set ``name``: ``forget``, or ``<config>_<split>`` (e.g. sust_forget_2)."""
    ev = data.meta["eval"]
    if name == data.meta.get("forget_split", "forget"):
        return list(ev["forget_texts"])
    config, _, split = name.partition("_")
    rows = TableSource(data.meta["source"], "MUSE", "see data/synthetic_muse.py").rows(config, split) or []
    return [r["text"] for r in rows]


def continuation_record(tokenizer: Any, text: str) -> dict[str, str]:
    """A VerbMem record for a raw text: prompt = its first half of tokens, ground truth = the rest."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    half = max(1, len(ids) // 2)
    return {
        "prompt": tokenizer.decode(ids[:half], skip_special_tokens=True),
        "gt": tokenizer.decode(ids[half:], skip_special_tokens=True),
    }


def restrict_eval(data: Any, texts: list[str]) -> dict[str, Any]:
    """``data.meta["eval"]`` with the forget-side sets (VerbMem, KnowMem-f, PrivLeak) cut to ``texts``."""
    ev = data.meta["eval"]
    tok = data.meta["tokenizer"]
    forget = list(ev["forget_texts"])
    position = {t: i for i, t in enumerate(forget)}
    qa = list(ev["knowmem_forget"])
    per = len(qa) // len(forget) if forget and len(qa) % len(forget) == 0 else 0
    verb, know = [], []
    for text in texts:
        rec = next((r for r in ev["verbmem_forget"] if text.startswith(r["prompt"])), None)
        verb.append(rec or continuation_record(tok, text))
        if per and text in position:
            i = position[text]
            know.extend(qa[i * per : (i + 1) * per])
    if not know:
        raise ConfigError(
            "none of the request's articles has KnowMem QA (they are not among the forget articles, or the "
            "forget QA is not laid out per article): the sequential suite measures forget metrics on the "
            "requests' own articles; use a dataset whose scal/sust articles are forget articles "
            "(muse-synthetic)"
        )
    return ev | {"verbmem_forget": verb, "knowmem_forget": know, "forget_texts": list(texts)}


def verbmem_retain(setup: Any, model: Any) -> float:
    """VerbMem (ROUGE-L F1 × 100) on the retain articles (first-half prompts): verbmem_f's utility twin."""
    ev, tok = setup.data.meta["eval"], setup.data.meta["tokenizer"]
    recs = [continuation_record(tok, t) for t in ev["retain_texts"]]
    ecfg = setup.protocol.cfg
    return verbmem(model, tok, recs, ecfg.verbmem_max_new_tokens, ecfg.batch_size)


def scoped(setup: Any, forget_ids: list[int], texts: list[str] | None = None) -> Any:
    """A shallow copy of ``setup`` whose forget split is ``forget_ids`` and, with ``texts``, whose MUSE
    evaluation sets are restricted to those articles (what unlearning and evaluation then see)."""
    old = setup.split
    split = Split(
        setup.data.train.subset(forget_ids), old.retain, old.test, old.kind, {**old.info, "forget": "request"}
    )
    data = None
    if texts is not None:
        ev = restrict_eval(setup.data, texts)
        data = dataclasses.replace(setup.data, meta=setup.data.meta | {"eval": ev})
    return setup.with_split(split, data)


# -- the runner ---------------------------------------------------------------------------------------------
def _evaluate(
    runner: RowRunner, sub: Setup, model: Any, oracle: dict[str, Any] | str | None, attack: dict | None
) -> dict[str, Any]:
    """MUSE metrics on ``sub``'s articles (+ ``verbmem_r``, + the relearning attack for a method).

    ``oracle="self"`` evaluates the oracle: its PrivLeak is 0, or None when its own AUC is 0 (a request of
    few articles that all score below every holdout text), where PrivLeak is undefined for every model
    of that request: the methods' PrivLeak is then None too, not an error.
    """
    if isinstance(oracle, dict) and not oracle.get("_auc"):
        oracle = oracle | {"_auc": None}
    metrics = runner.evaluate(sub, model, None if oracle == "self" else oracle)
    if oracle == "self":
        metrics["privleak"] = 0.0 if metrics["_auc"] > 0 else None
    metrics["verbmem_r"] = verbmem_retain(sub, model)
    if attack and attack.get("relearn") is not None and oracle != "self":
        metrics |= sub.protocol.relearn(sub, model, oracle, dict(attack["relearn"] or {}))
    return metrics


@register_kind("sequential")
def run_sequential_suite(req: SuiteRequest) -> dict[str, Any]:
    """Run a loaded ``kind: sequential`` suite config; writes ``results.json`` and ``results.md``."""
    base, specs, opts = split_config(req.cfg)
    family = base.get("family", DEFAULTS["family"])
    specs = oracle_first(select_methods(specs, req.methods, req.name, family))
    suite_name = opts.get("suite", req.name)
    base.setdefault("engine", {})["progress"] = False
    rows: list[dict[str, Any]] = []
    seeds = req.n_seeds
    total = seeds * len(opts["requests"]) * len(specs)
    with SuiteRunner(req.out, suite_name, family, total, req.fresh, req.progress) as loop:
        for seed in range(seeds):
            rows += _SeedRun(loop, req.runner, base, seed, specs, opts).rows()
    mode, keys = opts["mode"], tuple(opts.get("keys") or SEQ_KEYS)
    caption = opts.get("caption") or CAPTION.format(scope=SCOPES[mode])
    result = suite_result(
        suite_name, "sequential", PROTOCOL, seeds, base, specs, keys, caption, rows,
        mode=mode, requests=list(opts["requests"]),
    )  # fmt: skip
    write_results(req.out, result, markdown_table(result))
    return result


def make_checked_setup(runner: RowRunner, cfg: dict[str, Any], requests: list[str]) -> Setup:
    """The experiment of ``cfg``, refusing a protocol other than MUSE's and a request that is not one of
    the dataset's forget sets."""
    setup = runner.make_setup(cfg)
    if setup.protocol.name != PROTOCOL:
        raise ConfigError(
            f"the sequential suites follow MUSE's protocols; {setup.data.name!r} is measured by the "
            f"{setup.protocol.name!r} protocol: use a MUSE dataset (e.g. muse-synthetic)"
        )
    fids = setup.data.meta.get("forget_ids") or {}
    missing = [r for r in requests if r not in fids]
    if missing:
        raise ConfigError(
            f"request {missing[0]!r} is not a forget set of {setup.data.name!r}: {sorted(fids)}"
        )
    return setup


def _scopes(setup: Setup, requests: list[str], k: int, mode: str) -> tuple[Setup, Setup, int]:
    """(evaluation setup, unlearning setup, number of articles evaluated) of request ``k`` (1-based)."""
    fids = setup.data.meta["forget_ids"]
    req = requests[k - 1]
    if mode == "sustainability":  # metrics on the articles of requests 1..k
        scope: list[str] = []
        for r in requests[:k]:
            scope += [t for t in request_texts(setup.data, r) if t not in scope]
        eval_ids = sorted({i for r in requests[:k] for i in fids[r]})
    else:
        scope, eval_ids = request_texts(setup.data, req), fids[req]
    return scoped(setup, eval_ids, list(scope)), scoped(setup, fids[req]), len(scope)


class _SeedRun:
    """Every request of one seed: the oracle's row, then each method's (chained or from the original).

    Rows found in the store are reused. In sustainability mode a method's request k starts from its model
    after request k-1: when that row was reused, the chain is replayed (training only, no evaluation) to
    rebuild the model, and its weight hash is checked against the stored ``weights_after``. The setup,
    the original and the oracle are built on first use.
    """

    def __init__(
        self,
        loop: SuiteRunner,
        runner: RowRunner,
        base: dict[str, Any],
        seed: int,
        specs: dict[str, dict],
        opts: dict[str, Any],
    ) -> None:
        self.loop, self.runner, self.seed, self.specs = loop, runner, seed, specs
        self.mode, self.requests, self.attack = opts["mode"], list(opts["requests"]), opts.get("attack")
        self.scfg = resolved(base, seed)
        self.setup = Lazy(lambda: make_checked_setup(runner, base | {"seed": seed}, self.requests))
        self.original = Lazy(self._original)
        self.oracle = Lazy(self._oracle)
        # per method: (model or None when its last row came from the store, weights hash after it)
        self.chained: dict[str, tuple[Any, str | None]] = {}
        self._scopes: dict[int, tuple[Setup, Setup, int]] = {}

    def _original(self) -> tuple[Any, str]:
        self.loop.say(f"seed {self.seed}: original model")
        model = self.runner.original_model(self.setup()).model
        return model, weights_sha256(model)

    def _oracle(self) -> tuple[Any, float]:
        self.loop.say(f"seed {self.seed}: oracle")
        setup = self.setup()
        method = build_method(self.specs[ORACLE], setup.family.name)
        return self.runner.oracle_model(setup, method, self.original()[0])

    def scopes(self, k: int) -> tuple[Setup, Setup, int]:
        if k not in self._scopes:
            self._scopes[k] = _scopes(self.setup(), self.requests, k, self.mode)
        return self._scopes[k]

    def chain_start(self, mname: str, spec: dict, k: int) -> tuple[Any, str]:
        """The model request ``k`` starts from, and its hash (replaying stored requests if needed)."""
        original, original_sha = self.original()
        if self.mode != "sustainability" or k == 1:
            return original, original_sha
        model, sha = self.chained[mname]
        if model is not None:
            return model, sha  # type: ignore[return-value]
        model = original
        for j in range(1, k):
            self.loop.say(f"seed {self.seed}: {mname} replays request {j}")
            unlearn = self.scopes(j)[1]
            model, _, _ = self.runner.run_method(unlearn, model, build_method(spec, unlearn.family.name))
        replayed = weights_sha256(model)
        if replayed != sha:
            warnings.warn(
                f"{mname} seed {self.seed}: replaying requests 1..{k - 1} gave weights {replayed[:12]} "
                f"but the stored row says {str(sha)[:12]} (non-deterministic training?); "
                f"request {k} continues from the replayed model",
                stacklevel=2,
            )
        return model, replayed

    def compute(self, mname: str, spec: dict, k: int, ref: dict[str, Any] | None) -> Outcome:
        """Row (``mname``, request ``k``): unlearn (or take the oracle), evaluate on the request's scope."""
        sub, unlearn, n_articles = self.scopes(k)
        fields: dict[str, Any] = {"request": k, "forget": self.requests[k - 1]}
        fields |= {"n_unlearned": len(unlearn.split.forget), "n_articles": n_articles}
        history = None
        if mname == ORACLE:
            oracle, oracle_seconds = self.oracle()
            metrics = _evaluate(self.runner, sub, oracle, "self", None) | {"RTE": oracle_seconds}
            sha = weights_sha256(oracle)
            fields |= {"start": "retain-only oracle", "weights_before": sha, "weights_after": sha}
        else:
            start, before = self.chain_start(mname, spec, k)
            method = build_method(spec, unlearn.family.name)
            model, seconds, fit = self.runner.run_method(unlearn, start, method)
            history, after = fit.history, weights_sha256(model)
            metrics = _evaluate(self.runner, sub, model, ref, self.attack) | {"RTE": seconds}
            if self.mode == "sustainability":
                self.chained[mname] = (model, after)
            origin = f"request {k - 1}" if self.mode == "sustainability" and k > 1 else "original"
            fields |= {"start": origin, "weights_before": before, "weights_after": after}
        rec = receipt(unlearn, fields["weights_before"], fields["weights_after"])
        return Outcome(metrics, fields=fields, receipt=rec, history=history)

    def identity(self, spec: dict, k: int, mname: str, ref_key: str | None) -> dict[str, Any]:
        req = self.requests[k - 1]
        return {
            "suite": self.loop.suite,
            "kind": "sequential",
            "mode": self.mode,
            "config": self.scfg,
            "method": spec,
            "request": k,
            "requests": self.requests[:k] if self.mode == "sustainability" else [req],
            "attack": None if mname == ORACLE else self.attack,
            "oracle": None if mname == ORACLE else ref_key,
        }

    def rows(self) -> list[dict[str, Any]]:
        """The seed's rows, request-major (every method's request k, the oracle first, then k+1)."""
        rows: list[dict[str, Any]] = []
        for k in range(1, len(self.requests) + 1):
            ref: dict[str, Any] | None = None
            ref_key: str | None = None
            for mname, spec in self.specs.items():

                def compute(mname: str = mname, spec: dict = spec, k: int = k, ref: Any = ref) -> Outcome:
                    return self.compute(mname, spec, k, ref)

                identity = self.identity(spec, k, mname, ref_key)
                res = self.loop.row(identity, mname, self.seed, compute, tag=f"request{k}")
                if mname == ORACLE:
                    ref, ref_key = res.metrics, res.key
                elif res.cached and self.mode == "sustainability":
                    self.chained[mname] = (None, res.fields.get("weights_after"))
                rows.append(
                    {"method": mname, "seed": self.seed} | res.fields | {"metrics": public(res.metrics)}
                )
        return rows

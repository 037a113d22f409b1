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
from pathlib import Path
from typing import Any

from unlearnkit.errors import ConfigError
from unlearnkit.io import weights_sha256, write_json, write_text

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
    from unlearnkit.data.muse import TableSource

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
    from unlearnkit.metrics.muse import verbmem

    ev, tok = setup.data.meta["eval"], setup.data.meta["tokenizer"]
    recs = [continuation_record(tok, t) for t in ev["retain_texts"]]
    ecfg = setup.cfg.get("eval", {})
    n_new = int(ecfg.get("verbmem_max_new_tokens", 128))  # as text_suite: MUSE generates 128 tokens
    return verbmem(model, tok, recs, n_new, int(ecfg.get("batch_size", 32)))


def scoped(setup: Any, forget_ids: list[int], texts: list[str] | None = None) -> Any:
    """A shallow copy of ``setup`` whose forget split is ``forget_ids`` and, with ``texts``, whose MUSE
    evaluation sets are restricted to those articles (what unlearning and evaluation then see)."""
    from unlearnkit.data.splits import Split

    sub = copy.copy(setup)
    old = setup.split
    sub.split = Split(
        setup.data.train.subset(forget_ids), old.retain, old.test, old.kind, {**old.info, "forget": "request"}
    )
    if texts is not None:
        sub.data = dataclasses.replace(
            setup.data, meta=setup.data.meta | {"eval": restrict_eval(setup.data, texts)}
        )
    return sub


# -- the runner ---------------------------------------------------------------------------------------------
def _evaluate(sub: Any, model: Any, oracle: dict[str, Any] | str | None, attack: dict | None) -> dict:
    """MUSE metrics on ``sub``'s articles (+ ``verbmem_r``, + the relearning attack for a method).

    ``oracle="self"`` evaluates the oracle: its PrivLeak is 0, or None when its own AUC is 0 (a request of
    few articles that all score below every holdout text), where PrivLeak is undefined for every model
    of that request: the methods' PrivLeak is then None too, not an error.
    """
    from unlearnkit.pipeline import evaluate_model

    if isinstance(oracle, dict) and not oracle.get("_auc"):
        oracle = oracle | {"_auc": None}
    metrics = evaluate_model(sub, model, None if oracle == "self" else oracle)
    if oracle == "self":
        metrics["privleak"] = 0.0 if metrics["_auc"] > 0 else None
    metrics["verbmem_r"] = verbmem_retain(sub, model)
    if attack and attack.get("relearn") is not None and oracle != "self":
        from unlearnkit.metrics.text_suite import relearn_and_evaluate

        metrics |= relearn_and_evaluate(sub, model, oracle, dict(attack["relearn"] or {}))
    return metrics


def run_sequential_suite(
    cfg: dict[str, Any],
    name: str,
    seeds: int,
    out: str | Path,
    methods: list[str] | None = None,
    progress: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run a loaded ``kind: sequential`` suite config; writes ``results.json`` and ``results.md``."""
    from unlearnkit.bench.loop import SuiteRunner
    from unlearnkit.bench.suite import select_methods

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    base, specs, opts = split_config(cfg)
    family = base.get("family", "text")
    if family != "text":
        raise ConfigError(f"the sequential (MUSE) protocols need the text family, got {family!r}")
    specs = select_methods(specs, methods, name, family)
    specs = dict(sorted(specs.items(), key=lambda kv: kv[0] != "retrain"))  # the oracle first
    suite_name = opts.get("suite", name)
    base.setdefault("engine", {})["progress"] = False
    rows: list[dict[str, Any]] = []
    out = Path(out)
    total = seeds * len(opts["requests"]) * len(specs)
    with SuiteRunner(out, suite_name, family, total, fresh, progress) as runner:
        for seed in range(seeds):
            rows += _run_seed(runner, base, seed, specs, opts)
    mode, keys = opts["mode"], tuple(opts.get("keys") or SEQ_KEYS)
    result = {
        "suite": suite_name,
        "kind": "sequential",
        "mode": mode,
        "requests": list(opts["requests"]),
        "seeds": seeds,
        "config": base,
        "methods": specs,
        "keys": list(keys),
        "caption": opts.get("caption") or CAPTION.format(scope=SCOPES[mode]),
        "rows": rows,
    }
    write_json(out / "results.json", result)
    write_text(out / "results.md", sequential_table(result))
    return result


class _SeedState:
    """What the rows of one seed share, built on first use: the setup (with its requests checked), the
    original and oracle models with their weight hashes."""

    def __init__(
        self, runner: Any, base: dict[str, Any], seed: int, specs: dict[str, dict], requests: list[str]
    ) -> None:
        from unlearnkit.bench.loop import Lazy

        self.runner, self.seed, self.specs = runner, seed, specs
        self.setup = Lazy(lambda: make_checked_setup(base | {"seed": seed}, requests))
        self.original = Lazy(self._original)
        self.oracle = Lazy(self._oracle)

    def _original(self) -> tuple[Any, str]:
        from unlearnkit.pipeline import original_model

        self.runner.say(f"seed {self.seed}: original model")
        model, _ = original_model(self.setup())
        return model, weights_sha256(model)

    def _oracle(self) -> tuple[Any, float]:
        from unlearnkit.pipeline import build_method, oracle_model

        self.runner.say(f"seed {self.seed}: oracle")
        setup = self.setup()
        return oracle_model(setup, build_method(self.specs["retrain"], "text"), self.original()[0])


def make_checked_setup(cfg: dict[str, Any], requests: list[str]) -> Any:
    """``make_setup(cfg)``, refusing a request that is not one of the dataset's forget sets."""
    from unlearnkit.pipeline import make_setup

    setup = make_setup(cfg)
    fids = setup.data.meta.get("forget_ids") or {}
    missing = [r for r in requests if r not in fids]
    if missing:
        raise ConfigError(
            f"request {missing[0]!r} is not a forget set of {setup.data.name!r}: {sorted(fids)}"
        )
    return setup


def _scopes(setup: Any, requests: list[str], k: int, mode: str) -> tuple[Any, Any, int]:
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


def _run_seed(
    runner: Any, base: dict[str, Any], seed: int, specs: dict[str, dict], opts: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every request of one seed: the oracle's row, then each method's (chained or from the original).

    Rows found in the store are reused. In sustainability mode a method's request k starts from its model
    after request k-1: when that row was reused, the chain is replayed (training only, no evaluation) to
    rebuild the model, and its weight hash is checked against the stored ``weights_after``.
    """
    import warnings

    from unlearnkit.bench.loop import Outcome, resolved
    from unlearnkit.pipeline import build_method, run_method

    mode, requests, attack = opts["mode"], list(opts["requests"]), opts.get("attack")
    state = _SeedState(runner, base, seed, specs, requests)
    scfg = resolved(base, seed)
    family = "text"
    # per method: (model or None when its last row came from the store, weights hash after the last request)
    chained: dict[str, tuple[Any, str | None]] = {}
    rows: list[dict[str, Any]] = []
    cache: dict[int, tuple[Any, Any, int]] = {}

    def scopes(k: int) -> tuple[Any, Any, int]:
        if k not in cache:
            cache[k] = _scopes(state.setup(), requests, k, mode)
        return cache[k]

    def chain_start(mname: str, spec: dict, k: int) -> tuple[Any, str]:
        """The model request ``k`` starts from, and its hash (replaying stored requests if needed)."""
        original, original_sha = state.original()
        if mode != "sustainability" or k == 1:
            return original, original_sha
        model, sha = chained[mname]
        if model is not None:
            return model, sha  # type: ignore[return-value]
        model = original
        for j in range(1, k):
            runner.say(f"seed {seed}: {mname} replays request {j}")
            unlearn = scopes(j)[1]
            model, _, _ = run_method(unlearn, model, build_method(spec, family))
        replayed = weights_sha256(model)
        if replayed != sha:
            warnings.warn(
                f"{mname} seed {seed}: replaying requests 1..{k - 1} gave weights {replayed[:12]} "
                f"but the stored row says {str(sha)[:12]} (non-deterministic training?); "
                f"request {k} continues from the replayed model",
                stacklevel=2,
            )
        return model, replayed

    for k, req in enumerate(requests, start=1):
        ref: dict[str, Any] | None = None
        ref_key: str | None = None
        for mname, spec in specs.items():
            identity = {
                "suite": runner.suite,
                "kind": "sequential",
                "mode": mode,
                "config": scfg,
                "method": spec,
                "request": k,
                "requests": requests[:k] if mode == "sustainability" else [req],
                "attack": None if mname == "retrain" else attack,
                "oracle": None if mname == "retrain" else ref_key,
            }

            def compute(mname=mname, spec=spec, k=k, req=req, ref=ref) -> Outcome:
                sub, unlearn, n_articles = scopes(k)
                fields: dict[str, Any] = {"request": k, "forget": req}
                fields |= {"n_unlearned": len(unlearn.split.forget), "n_articles": n_articles}
                history = None
                if mname == "retrain":
                    oracle, oracle_seconds = state.oracle()
                    metrics = _evaluate(sub, oracle, "self", None) | {"RTE": oracle_seconds}
                    sha = weights_sha256(oracle)
                    fields |= {"start": "retain-only oracle", "weights_before": sha, "weights_after": sha}
                else:
                    start, before = chain_start(mname, spec, k)
                    model, seconds, fit = run_method(unlearn, start, build_method(spec, family))
                    history, after = fit.history, weights_sha256(model)
                    metrics = _evaluate(sub, model, ref, attack) | {"RTE": seconds}
                    if mode == "sustainability":
                        chained[mname] = (model, after)
                    origin = f"request {k - 1}" if mode == "sustainability" and k > 1 else "original"
                    fields |= {"start": origin, "weights_before": before, "weights_after": after}
                receipt = {
                    "forget_ids_sha256": unlearn.split.forget_ids_sha256(),
                    "forget_count": len(unlearn.split.forget),
                    "weights_before_sha256": fields["weights_before"],
                    "weights_after_sha256": fields["weights_after"],
                }
                return Outcome(metrics, fields=fields, receipt=receipt, history=history)

            res = runner.row(identity, mname, seed, compute, tag=f"request{k}")
            if mname == "retrain":
                ref, ref_key = res.metrics, res.key
            elif res.cached and mode == "sustainability":
                chained[mname] = (None, res.fields.get("weights_after"))
            rows.append({"method": mname, "seed": seed} | res.fields | {"metrics": res.public})
    return rows


def sequential_table(result: dict[str, Any]) -> str:
    """Markdown: one line per (method, request), each metric as mean ± std over seeds."""
    from unlearnkit.bench.suite import summarize

    keys = tuple(result.get("keys") or SEQ_KEYS)
    seeds = result["seeds"]
    head = f"# {result['suite']}: {result['mode']} ({seeds} seed{'s' if seeds != 1 else ''})\n\n"
    head += f"{result['caption']}\n\n"
    lines = ["| method | request | forget | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    for m in methods:
        for k, req in enumerate(result["requests"], start=1):
            sel = [r for r in result["rows"] if r["method"] == m and r["request"] == k]
            if not sel:
                continue
            d = summarize(sel, keys).get(m, {})
            cells = [f"{d[x][0]:.2f} ± {d[x][1]:.2f}" if x in d else "" for x in keys]
            lines.append(f"| {m} | {k} | {req} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"

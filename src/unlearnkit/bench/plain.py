"""The plain suite kind (``unlearnkit bench vision-digits``): for each seed, train (or load) the original
model, retrain the oracle, run every method from the same original, and report each metric with its gap.

``DIR/results.json`` follows the common schema (``bench/results.py``); ``DIR/results.md`` holds mean ± std
per method and ``DIR/tradeoff.png`` the protocol's trade-off (``bench/plots.py``). Every row is indexed in
``DIR/runs.sqlite`` as it finishes and reused by a later run of the same configuration (``bench/loop.py``).
"""

from __future__ import annotations

import time
from typing import Any

from unlearnkit.bench.kinds import SuiteRequest, register_kind
from unlearnkit.bench.loop import Lazy, Outcome, RowResult, SuiteRunner, resolved
from unlearnkit.bench.plots import tradeoff_plot
from unlearnkit.bench.results import markdown_table, public, select_methods, suite_result, write_results
from unlearnkit.bench.rows import ORACLE, REFERENCE, RowRunner, receipt, seed_inputs
from unlearnkit.engine.loop import is_main_process
from unlearnkit.experiment import DEFAULTS, Setup
from unlearnkit.experiment.oracle_source import parse_section, stats_document
from unlearnkit.io import weights_sha256, write_json
from unlearnkit.protocols.base import check_relearnable
from unlearnkit.registry import get_protocol
from unlearnkit.tuning import check_tunable

SUITE_ONLY = ("suite", "keys", "caption", "note", "attack", "kind", "plot")


def protocol_name(loop: SuiteRunner, setup: Lazy[Setup]) -> str:
    """The suite's protocol: as its rows' receipts name it, else the (then built) setup's."""
    return loop.protocol or setup().protocol.name


@register_kind("plain")
def run_plain_suite(req: SuiteRequest) -> dict[str, Any]:
    """Run a loaded plain suite config; writes ``results.json``, ``results.md`` and ``tradeoff.png``."""
    cfg = dict(req.cfg)
    family = cfg.get("family", DEFAULTS["family"])
    specs = {k: dict(v or {}) for k, v in cfg.pop("methods").items()}
    specs = select_methods(specs, req.methods, req.name, family)
    opts = {k: cfg.pop(k) for k in SUITE_ONLY if k in cfg}
    suite_name = opts.get("suite", req.name)
    cfg["engine"] = dict(cfg.get("engine") or {}) | {"progress": False}
    relearn = (opts.get("attack") or {}).get("relearn") is not None
    first_setup = None  # seed 0's, when built up front for these checks (its rows reuse it)
    if req.tune or relearn:  # before any training: tune scores classifiers; not every protocol relearns
        first_setup = req.runner.make_setup(resolved(cfg, 0))
        if req.tune:
            check_tunable(first_setup)
        if relearn:
            check_relearnable(first_setup.protocol)
    seeds = req.n_seeds
    rows: list[dict[str, Any]] = []
    first: Lazy[Setup] | None = None
    total = seeds * len(specs)
    with SuiteRunner(req.out, suite_name, family, total, req.fresh, req.progress) as loop:
        for seed in range(seeds):
            ready = first_setup if seed == 0 else None
            seed_rows, setup = _plain_seed(
                loop, req.runner, cfg, seed, specs, opts.get("attack"), req.tune, ready
            )
            rows += seed_rows
            first = first or setup
        assert first is not None
        protocol = protocol_name(loop, first)
    keys = opts.get("keys") or get_protocol(protocol).headline
    caption = opts.get("caption")
    if opts.get("note"):  # appended to the suite's (or else the protocol's) caption
        caption = f"{caption or get_protocol(protocol).caption} {opts['note']}"
    extra = ({"plot": opts["plot"]} if opts.get("plot") else {}) | ({"tune": True} if req.tune else {})
    result = suite_result(suite_name, "plain", protocol, seeds, cfg, specs, keys, caption, rows, **extra)
    held = (cfg.get("split") or {}).get("heldout")
    write_results(req.out, result, markdown_table(result) + tuned_text(rows, held))
    tradeoff_plot(result, req.out / "tradeoff.png")
    return result


def _plain_seed(
    loop: SuiteRunner,
    runner: RowRunner,
    cfg: dict[str, Any],
    seed: int,
    specs: dict[str, dict],
    attack: dict[str, Any] | None,
    tune: bool = False,
    ready: Setup | None = None,
) -> tuple[list[dict[str, Any]], Lazy[Setup]]:
    """One seed of a plain suite: each method's row (the oracle first, as the suite lists it), reused from
    the store where finished; the setup and the original model are built only if some row must run. With
    ``tune``, each method runs with the options ``unlearnkit tune`` picks (no oracle), recorded in its row."""
    scfg, setup, original = seed_inputs(loop, runner, cfg, seed, ready)
    oracle: dict[str, Any] | None = None
    oracle_key: str | None = None
    rows = []
    for mname, spec in specs.items():
        tuned = tune and mname not in (ORACLE, REFERENCE)
        identity = {
            "suite": loop.suite,
            "kind": "plain",
            "config": scfg,
            "method": spec,
            "attack": None if mname == ORACLE else attack,
            "oracle": None if mname == ORACLE else oracle_key,
        } | ({"tune": True} if tuned else {})  # without --tune, the keys of earlier stores

        def compute(
            mname: str = mname, spec: dict = spec, oracle: dict | None = oracle, tuned: bool = tuned
        ) -> Outcome:
            orig, before = original()
            fields: dict[str, Any] = {}
            if tuned:  # calibrated on this seed's original and data, without the oracle
                loop.say(f"seed {seed}: tuning {mname}")
                t0 = time.perf_counter()
                fields["tuned"] = runner.tune(setup(), orig.model, spec)
                fields["tune_seconds"] = time.perf_counter() - t0  # not in RTE: the run's own time
                spec = spec | fields["tuned"]
            metrics, model, history = runner.run_row(setup(), orig, mname, spec, oracle, attack)
            after = None if model is None else weights_sha256(model)  # None: an oracle.stats oracle
            rec = receipt(setup(), None if mname == ORACLE else before, after)
            return Outcome(metrics, fields, receipt=rec, history=history)

        res = loop.row(identity, mname, seed, compute)
        if mname == ORACLE:
            oracle, oracle_key = res.metrics, res.key
            _export_oracle(loop, seed, res, scfg)
        row = {"method": mname, "seed": seed, "metrics": public(res.metrics)}
        rows.append(row | {k: res.fields[k] for k in ("tuned", "tune_seconds") if k in res.fields})
    return rows, setup


def tuned_text(rows: list[dict[str, Any]], heldout: Any = None) -> str:
    """Under the table of a ``--tune`` suite: the options each method ran with per seed, the time its
    tuning took (RTE is the unlearning run's alone), and which examples the trials were scored on
    (``split.heldout``, apart from the reported ones, or the reported test set itself)."""
    by: dict[str, list[str]] = {}
    secs: dict[str, list[float]] = {}
    for r in rows:
        if "tuned" in r:
            opts = " ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["tuned"].items()
            )
            by.setdefault(r["method"], []).append(f"seed {r['seed']}: {opts}")
            secs.setdefault(r["method"], []).append(float(r.get("tune_seconds", 0.0)))
    if not by:
        return ""
    lines = [
        f"- {m}: " + "; ".join(v) + f" (tuning {sum(secs[m]) / len(secs[m]):.1f} s per seed)"
        for m, v in by.items()
    ]
    head = "Options chosen by `unlearnkit tune` (no oracle) for each seed; RTE is the run's time alone:"
    scored = (
        f"The trials were scored on `split.heldout` ({heldout} of the test set); every metric above uses the "
        "rest of it."
        if heldout is not None
        else "The trials were scored on the same test set the table reports (TA, MIA): pass "
        "`split.heldout=0.5` to keep a validation part apart."
    )
    return f"\n{head}\n\n" + "\n".join(lines) + f"\n\n{scored}\n"


def _export_oracle(loop: SuiteRunner, seed: int, res: RowResult, scfg: dict[str, Any]) -> None:
    """``DIR/oracle_stats-seed<N>.json``: the seed's oracle values, reusable as ``oracle.stats=FILE``."""
    rec = res.receipt or {}
    if not is_main_process() or not rec.get("forget_ids_sha256"):
        return
    source = parse_section(scfg.get("oracle")).describe()
    doc = stats_document(res.metrics, rec["protocol"], rec["forget_ids_sha256"], rec["forget_count"], source)
    write_json(loop.out / f"oracle_stats-seed{seed}.json", doc)

"""The ``unlearnkit`` command line.

    unlearnkit list methods [--json]            registered methods and their families
    unlearnkit list presets|datasets|models
    unlearnkit unlearn --preset vision/salun [--out DIR] [--resume] [key=value ...]
    unlearnkit train   --preset vision/salun --out FILE.safetensors [--resume] [key=value ...]
    unlearnkit evaluate --preset vision/salun model.path=FILE [key=value ...]
    unlearnkit bench vision-digits --seeds 3 --out DIR [--methods a,b] [--fresh] [--tune] [key=value ...]
    unlearnkit runs list|show ID|compare ID ID... [--store PATH|DIR] [--json]   the run store
    unlearnkit select worstcase --suite vision-digits --size 10% --out FILE [key=value ...]
    unlearnkit report DIR [--out DIR2] [--title T]   report.md + self-contained report.html
    unlearnkit generate --model DIR --prompt P [--prompt P2] --out IMG_DIR [--seed S --steps N --guidance G]

User errors (bad config, bad data, unknown names, missing files) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from unlearnkit import registry
from unlearnkit.api import run_config
from unlearnkit.bench.suite import print_table, run_suite
from unlearnkit.calibration import MAX_SHADOW, TuneResult, print_trials, tune_config
from unlearnkit.config import apply_overrides, load_preset, preset_names
from unlearnkit.engine.devices import require_device
from unlearnkit.engine.loop import is_main_process
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.experiment import (
    attack_metrics,
    evaluate_model,
    make_setup,
    original_model,
    resolve_oracle,
    wants_oracle,
)
from unlearnkit.experiment.config import check_single_run
from unlearnkit.experiment.oracle_source import HOW
from unlearnkit.io import save_weights
from unlearnkit.models.generate import generate_folder
from unlearnkit.protocols.base import public
from unlearnkit.report import build_report, make_report
from unlearnkit.runs.cli_runs import add_parser as add_runs_parser
from unlearnkit.runs.cli_runs import run
from unlearnkit.runs.folder import check_out_file, check_out_folder
from unlearnkit.selection.runner import select_for_suite
from unlearnkit.tuning import ON_TEST
from unlearnkit.version import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearnkit", description="Machine unlearning, with the exact reference."
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list methods, presets, datasets or models")
    ls.add_argument("what", choices=["methods", "presets", "datasets", "models", "families"])
    ls.add_argument("--json", action="store_true", help="print JSON")

    for name, help_ in (
        ("unlearn", "run one unlearning job"),
        ("train", "train an original model"),
        ("evaluate", "evaluate a model on a split"),
        ("tune", "calibrate a method's lr and epochs without a retrained model"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument(
            "--preset", default="vision/salun", help="preset name or YAML file (default vision/salun)"
        )
        sp.add_argument("--config", help="a YAML config file (same as --preset FILE)")
        sp.add_argument("--out", help="output folder (unlearn) or .safetensors file (train)")
        sp.add_argument("--json", action="store_true", help="print the metrics as JSON")
        if name in ("unlearn", "train"):
            sp.add_argument(
                "--resume", action="store_true", help="continue a killed run from its last checkpoint"
            )
            sp.add_argument(
                "--overwrite", action="store_true", help="replace the run (or weights file) already in --out"
            )
        if name == "unlearn":
            sp.add_argument(
                "--resume-with-changes",
                action="store_true",
                help="resume although the config changed (both configs are recorded in the run folder)",
            )
            sp.add_argument(
                "--tune",
                action="store_true",
                help="calibrate the method's lr and epochs first (as `unlearnkit tune`), then run with them",
            )
        if name in ("tune", "unlearn"):
            sp.add_argument(
                "--max-trials", type=int, default=None, help="tune's budget of training runs (default 10)"
            )
            sp.add_argument(
                "--end-only",
                action="store_true",
                help="tune scores each run at its end only, not after every epoch (cheaper, fewer trials)",
            )
            sp.add_argument("--max-shadow", type=int, help="tune's MIA shadow sets at most (5000; 0: all)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method.lr=0.02 seed=1")

    b = sub.add_parser("bench", help="run a benchmark suite over seeds")
    b.add_argument("suite", help="suite name (vision-digits, vision-digits-class) or YAML file")
    b.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds (0..N-1; default 1, or each part's own for quick)",
    )
    b.add_argument("--out", required=True, help="output folder for results.json and results.md")
    b.add_argument("--methods", help="comma-separated subset of the suite's methods (retrain always runs)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument(
        "--fresh", action="store_true", help="recompute every row (ignore rows stored in DIR/runs.sqlite)"
    )
    b.add_argument(
        "--tune",
        action="store_true",
        help="run each method with the lr and epochs `unlearnkit tune` picks per seed, without the oracle",
    )
    b.add_argument(
        "overrides", nargs="*", help="key=value overrides of the suite config (a method: methods.ga.lr=0.01)"
    )

    rp = sub.add_parser("report", help="Markdown + self-contained HTML report of suite results")
    rp.add_argument("dir", help="a suite output folder (bench --out) or a folder of them")
    rp.add_argument("--out", help="where to write report.md, report_files/ and report.html (default: DIR)")
    rp.add_argument("--title", help="the report's title")

    add_runs_parser(sub)

    _add_generate_parser(sub)
    se = sub.add_parser("select", help="select a forget set (worst-case, by bi-level optimisation)")
    se.add_argument("selector", choices=["worstcase"], help="the selector")
    se.add_argument("--suite", default="vision-digits", help="suite (or YAML file) giving data and model")
    se.add_argument("--size", required=True, help="forget-set size: a count (144) or a percent (10%%)")
    se.add_argument("--out", required=True, help="JSON file for the ids (use with split.kind=ids)")
    se.add_argument(
        "--granularity", choices=["example", "class", "prompt"], default="example", help="unit to select"
    )
    se.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 select.lower=rl")
    return p


def _add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="write PNGs from a text-to-image model folder (before/after)")
    g.add_argument("--model", required=True, help="a Stable Diffusion folder (or a run's hf_model/), a world")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    g.add_argument("--out", required=True, help="the folder the PNGs go to")
    g.add_argument("--seed", type=int, default=0, help="image j of each prompt uses seed S+j (default 0)")
    g.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance (default 7.5 SD, 3 worlds)")
    g.add_argument("-n", type=int, default=1, help="images per prompt (default 1)")
    g.add_argument("--attention-slicing", action="store_true", help="less memory, a little slower")
    g.add_argument("--single-file-config", help="a single .safetensors file's base model (diffusers folder)")


def _cmd_generate(args) -> int:
    opts = {"seed": args.seed, "steps": args.steps, "guidance": args.guidance, "per_prompt": args.n}
    opts |= {"attention_slicing": args.attention_slicing, "single_file_config": args.single_file_config}
    written = generate_folder(args.model, args.prompt, args.out, **opts)
    print(f"{len(written)} image(s) written to {args.out}")
    return 0


def _version() -> str:
    return f"unlearnkit {__version__}"


def _load_cfg(args) -> dict:
    """A single run's config: the preset (or ``--config`` file) with the overrides; suite keys refused."""
    source = args.config or args.preset
    cfg = load_preset(source)
    check_single_run(cfg, f"--{'config' if args.config else 'preset'} {source}")
    cfg = apply_overrides(cfg, args.overrides)
    check_single_run(cfg, None)
    return cfg


def _print_metrics(metrics: dict, as_json: bool) -> None:
    """``--json``: every value as strict JSON (a non-finite number is null); else a table of the public
    metrics (the ``_`` per-item lists, e.g. TOFU's 400 truth ratios, stay out of it)."""
    if as_json:
        print(json.dumps(_finite(metrics), indent=2, default=_jsonable, allow_nan=False))
        return
    metrics = public(metrics)
    from rich.console import Console
    from rich.table import Table

    t = Table()
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(t)


def _jsonable(o):
    if hasattr(o, "tolist"):  # numpy / torch values
        return o.tolist()
    raise TypeError(f"cannot print {type(o).__name__} as JSON")


def _finite(obj):
    """``obj`` with NaN and ±inf replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _cmd_list(args) -> int:
    if args.what == "methods":
        rows = registry.list_methods()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<18} {','.join(r['families']):<24} {r['summary']}")
        return 0
    names = preset_names() if args.what == "presets" else registry.list_names(args.what.rstrip("s"))
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0


def _cmd_unlearn(args) -> int:
    cfg = _load_cfg(args)
    tuned = None
    if args.tune:
        cfg, tuned = _tuned(cfg, args)
    elif args.max_trials is not None or args.end_only or args.max_shadow is not None:
        flag = "--max-trials is tune's budget" if args.max_trials is not None else "--end-only is tune's"
        flag = "--max-shadow is tune's" if args.max_shadow is not None else flag
        raise ConfigError(f"{flag}: add --tune")
    res = run_config(
        cfg,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        resume_with_changes=args.resume_with_changes,
        tuned=tuned,
    )
    if not is_main_process():  # under several processes, rank 0 reports
        return 0
    _print_metrics(res["metrics"], args.json)
    if args.out and not args.json:
        print(f"run written to {args.out}")
    return 0


def _tuned(cfg: dict, args) -> tuple[dict, TuneResult]:
    """``unlearn --tune``: the config with the options ``tune`` chose (the run folder records them), and
    the calibration (published with the run)."""
    if args.resume or args.resume_with_changes:
        raise ConfigError(
            "--tune with --resume would tune again; resume with the options the first run chose, "
            "without --tune: --config OUT/config.yaml --resume --out OUT"
        )
    if args.out:  # before minutes of trials: an --out the run could not be written to
        check_out_folder(args.out, overwrite=args.overwrite)
    trials = 10 if args.max_trials is None else args.max_trials
    opts = {"every_epoch": not args.end_only, "max_shadow": _max_shadow(args), "progress": is_main_process()}
    res = tune_config(cfg, trials, **opts)  # progress: a line per run on stderr (stdout keeps the metrics)
    if is_main_process():  # the trials to stderr: stdout keeps the run's metrics (and --json clean)
        with contextlib.redirect_stdout(sys.stderr):
            print_trials(res)
            if (cfg.get("split") or {}).get("heldout") is None:
                fix = "split.heldout=0.5 keeps half of it apart for the trials"
                print("note: " + ON_TEST.format(fix=fix))
    return cfg | {"method": dict(cfg["method"]) | res.best}, res


def _max_shadow(args) -> int | None:
    """``--max-shadow``: the default when absent, 0 for every example."""
    if args.max_shadow is None:
        return MAX_SHADOW
    if args.max_shadow < 0:
        raise ConfigError(f"--max-shadow must be >= 0 (0: every example), got {args.max_shadow}")
    return None if args.max_shadow == 0 else args.max_shadow


def _cmd_tune(args) -> int:
    trials = 10 if args.max_trials is None else args.max_trials
    opts = {"every_epoch": not args.end_only, "max_shadow": _max_shadow(args), "progress": True}
    res = tune_config(_load_cfg(args), trials, args.out, **opts)  # progress: a line per run on stderr
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=float))
    else:
        print_trials(res)
        if args.out:
            names = [n for n in ("tune.json", "tune.md", "tune.png") if (Path(args.out) / n).exists()]
            print(f"written to {args.out}: {', '.join(names)}")
    return 0


def _cmd_train(args) -> int:
    if not args.out or not args.out.endswith(".safetensors"):
        raise UnlearnkitError("train needs --out FILE.safetensors")
    check_out_file(args.out, overwrite=args.overwrite or args.resume)
    cfg = _load_cfg(args)
    cfg.setdefault("model", {})["path"] = None
    require_device((cfg.get("engine") or {}).get("device"))
    setup = make_setup(cfg)
    original = original_model(setup, resume=args.resume)
    save_weights(original.model, args.out)  # every rank (a sharded model is gathered collectively)
    metrics = evaluate_model(setup, original.model, original=original)
    if is_main_process():
        _print_metrics(metrics, args.json)
    return 0


def _cmd_evaluate(args) -> int:
    """Evaluate ``model.path``; with an oracle (``oracle.stats``/``oracle.model.path``/``oracle.base``, or
    ``eval.oracle=true`` for a model trained here from scratch) also the comparisons with it (forget
    quality, PrivLeak), else a note on stderr that says how to give one."""
    cfg = _load_cfg(args)
    if not cfg.get("model", {}).get("path"):
        raise UnlearnkitError("evaluate needs model.path=FILE.safetensors")
    setup = make_setup(cfg)
    original = original_model(setup)
    oracle = resolve_oracle(setup, original) if wants_oracle(setup) else None
    metrics = evaluate_model(setup, original.model, oracle.flat if oracle else None, original=original)
    metrics |= attack_metrics(setup, original.model, oracle.flat if oracle else None)  # attack.relearn
    if is_main_process():
        _print_metrics(metrics, args.json)
        gap = setup.protocol.gap_key
        if oracle is None and gap:
            print(f"note: {gap} needs an oracle: give {HOW}", file=sys.stderr)
    return 0


def _quiet_libraries() -> None:
    """--quiet also silences the loading bars of transformers / huggingface_hub (when installed)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def _cmd_bench(args) -> int:
    if args.quiet:
        _quiet_libraries()
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    res = run_suite(
        args.suite,
        args.seeds,
        Path(args.out),
        methods,
        args.overrides,
        progress=not args.quiet,
        fresh=args.fresh,
        report=build_report,
        tune=args.tune,
    )
    out = Path(args.out)
    if res.get("kind") == "composite":  # several suites: each part's table, then where the report is
        for part, info in res["parts"].items():
            print(f"\n== {part}: {info['suite']} ({info['seconds']:.0f} s)")
            print_table(json.loads((out / info["folder"] / "results.json").read_text()))
        rep = res.get("report") or {}
        print(f"report written to {rep.get('html', out / 'report.html')} and {rep.get('markdown', '')}")
        return 0
    print_table(res)
    if res.get("tune"):  # the options each method ran with are listed in results.md
        print("each method ran with the options `unlearnkit tune` chose per seed: listed in results.md")
    print(f"results written to {out / 'results.json'} and results.md")
    return 0


def _cmd_runs(args) -> int:
    return run(args)


def _cmd_select(args) -> int:
    obj = select_for_suite(args.suite, args.size, args.out, args.overrides, args.granularity)
    what = f"{len(obj['classes'])} class(es), " if args.granularity == "class" else ""
    if args.granularity == "prompt":
        what = f"{len(obj['prompts'])} prompt(s) {obj['prompts']}, "
    print(
        f"selected {what}{obj['size']} of {obj['pool_size']} examples in {obj['seconds']:.2f}s "
        f"(upper objective {obj['trajectory'][0]:.4g} -> {obj['trajectory'][-1]:.4g}); written to {args.out}"
    )
    return 0


def _cmd_report(args) -> int:
    res = make_report(args.dir, args.out, args.title)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    n, k = len(res.suites), len(res.figures)
    print(f"report of {n} suite(s), {k} figure(s): {res.markdown} and {res.html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options too (argparse stops filling positionals at an option).
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    handler = {
        "list": _cmd_list,
        "unlearn": _cmd_unlearn,
        "tune": _cmd_tune,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "bench": _cmd_bench,
        "select": _cmd_select,
        "runs": _cmd_runs,
        "report": _cmd_report,
        "generate": _cmd_generate,
    }[args.command]
    try:
        return handler(args)
    except UnlearnkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

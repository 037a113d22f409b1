"""Grid-search the text-to-image erasure methods on a world, without the attack, for the suites' settings.

Each (configuration, tuning seed) trial unlearns the seed's concept from the world's original and measures
UA and utility (judge-based, ``eval.per_prompt`` samples per prompt); trials stream to ``OUT/trials.jsonl``
(an interrupted search resumes) and ``OUT/best.json`` holds each method's choice by one rule: the largest
mean utility among configurations whose mean UA reaches ``--min-ua`` (default 90%), else the largest mean
UA. With ``split.concept=by-seed`` the tuning seeds pick the tuning classes: the default seed 7 tunes the
digits world on "a seven", a class the reported seeds 0-2 ("a zero", "a one", "a two") do not erase.

    python benchmarks/tune_t2i.py [--preset diffusion/digits] [--seeds 7] [--methods esd,uce] [--out DIR]

About 15 minutes on one core for the whole grid (AdvUnlearn dominates); run method subsets in parallel.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def grid() -> list[dict[str, Any]]:
    """Each method's search space around its shapes-world preset (lr, length, strength)."""
    prod = itertools.product
    g: list[dict[str, Any]] = []
    for lr, ep, eta in prod([5e-4, 1e-3, 2e-3], [3, 6], [1.0, 2.0]):
        g.append({"name": "esd", "variant": "x", "lr": lr, "epochs": ep, "eta": eta})
    for lr, ep in prod([3e-4, 5e-4, 1e-3], [3, 6]):
        g.append({"name": "salun", "optimizer": "adam", "lr": lr, "epochs": ep, "schedule": "joint",
                  "mask_ratio": 0.5})  # fmt: skip
    for scale, lamb, token in prod([1.0, 3.0, 10.0], [0.1, 0.5], ["last", "all"]):
        g.append({"name": "uce", "erase_scale": scale, "lamb": lamb, "guide": "", "token": token})
    for lr, ep in prod([1e-3, 3e-3], [3, 6]):
        g.append({"name": "fmn", "optimizer": "adamw", "lr": lr, "epochs": ep, "only_optimize_ca": True,
                  "use_pooler": False})  # fmt: skip
    for name, lr, ep in prod(["advunlearn", "advunlearn_fast"], [5e-3, 1e-2], [6, 12]):
        g.append({"name": name, "lr": lr, "epochs": ep, "eta": 3.0, "retain_batch_size": 5,
                  "retain_weight": 0.5, "attack_tokens": 5, "attack_length": "uniform",
                  "text_anchor": 16})  # fmt: skip
    return g


def _key(spec: dict[str, Any], seed: int) -> str:
    return json.dumps([spec, seed], sort_keys=True)


def run(
    preset: str,
    seeds: list[int],
    specs: list[dict[str, Any]],
    trials: Path,
    per_prompt: int,
    overrides: list[str] | None = None,
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from unlearnkit.bench.rows import RowRunner
    from unlearnkit.config import apply_overrides, load_preset
    from unlearnkit.experiment import make_setup, original_model

    torch.set_num_threads(1)
    done = set()
    if trials.exists():
        done = {_key(r["spec"], r["seed"]) for r in map(json.loads, trials.read_text().splitlines())}
    base = apply_overrides(load_preset(preset), list(overrides or []))
    base.setdefault("engine", {})["progress"] = False
    base["eval"] = dict(base.get("eval", {})) | {"per_prompt": per_prompt, "attack": None}
    with trials.open("a") as out:
        for seed in seeds:
            todo = [s for s in specs if _key(s, seed) not in done]
            if not todo:
                continue
            setup = make_setup(base | {"seed": seed})
            orig = original_model(setup)
            for spec in todo:
                t0 = time.perf_counter()
                m, _, _ = RowRunner().run_row(setup, orig, spec["name"], dict(spec), None, None)
                row = {
                    "spec": spec,
                    "seed": seed,
                    "metrics": {k: m[k] for k in ("UA", "utility", "kid", "RTE")},
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"seed {seed} {spec}: UA {m['UA']:.1f} utility {m['utility']:.1f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip


def best_per_method(rows: list[dict[str, Any]], seeds: list[int], min_ua: float) -> dict[str, Any]:
    """The rule of the module docstring, over the configurations tried on every one of ``seeds``."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["seed"] in seeds:
            by[json.dumps(r["spec"], sort_keys=True)].append(r)
    best: dict[str, Any] = {}
    for key, rs in by.items():
        if len(rs) < len(seeds):
            continue
        spec = json.loads(key)
        means = {k: statistics.fmean(r["metrics"][k] for r in rs) for k in ("UA", "utility", "kid")}
        score = (means["UA"] >= min_ua, means["utility"] if means["UA"] >= min_ua else means["UA"])
        if spec["name"] not in best or score > best[spec["name"]]["score"]:
            best[spec["name"]] = {"spec": spec, "means": means, "score": score}
    return {k: {"spec": v["spec"], "means": v["means"]} for k, v in sorted(best.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="diffusion/digits")
    ap.add_argument("--seeds", default="7", help="comma-separated tuning seeds")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the grid's methods")
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--min-ua", type=float, default=90.0)
    ap.add_argument("--out", type=Path, default=Path("tune-t2i-out"))
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.path=DIR")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = grid()
    if args.methods:
        keep = set(args.methods.split(","))
        specs = [s for s in specs if s["name"] in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    trials = args.out / "trials.jsonl"
    run(args.preset, seeds, specs, trials, args.per_prompt, args.overrides)
    rows = [json.loads(line) for line in trials.read_text().splitlines()]
    best = best_per_method(rows, seeds, args.min_ua)
    (args.out / "best.json").write_text(json.dumps(best, indent=2))
    for name, b in best.items():
        m = b["means"]
        print(f"{name:16s} UA {m['UA']:5.1f} utility {m['utility']:5.1f} kid {m['kid']:7.0f}  {b['spec']}")


if __name__ == "__main__":
    main()

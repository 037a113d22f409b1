"""Grid-search every approximate classifier method on digits (random 10%) by its mean Avg. Gap to retrain.

The protocol the SalUn / WorstCase authors describe (WorstCase issue #4): pick each method's hyperparameters
by the smallest average gap to the retrained model on the random forget set, then report other seeds.
Here the tuning seeds default to 100-109, disjoint from the seeds ``unlearnkit bench vision-digits``
reports (0..N-1). Every (configuration, seed) trial is appended to ``OUT/trials.jsonl`` as it finishes, so
an interrupted search continues where it stopped; ``OUT/best.json`` holds each method's winner.

    python benchmarks/tune_digits.py [--seeds 100-109] [--methods salun,l1_sparse] [--out tune-out]

The whole grid (301 configurations × 10 seeds) takes about 8 minutes on one core: the MLP is small.
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

LRS_RL = [3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3]


def grid() -> list[dict[str, Any]]:
    """Each method's search space (lr ranges as in the papers' appendices, scaled to this MLP)."""
    prod = itertools.product
    g: list[dict[str, Any]] = []
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    for lr, ep, ratio, sched in prod(LRS_RL, [5, 10, 15], ratios, ["sequential", "concat"]):
        g.append({"name": "salun", "lr": lr, "epochs": ep, "mask_ratio": ratio, "schedule": sched})
    for lr, ep, sched in prod(LRS_RL, [5, 10, 15], ["sequential", "concat"]):
        g.append({"name": "rl", "lr": lr, "epochs": ep, "schedule": sched})
    for lr, ep, alpha in prod([0.01, 0.02, 0.03, 0.05], [5, 10], [1e-4, 3e-4, 1e-3, 3e-3]):
        g.append({"name": "l1_sparse", "lr": lr, "epochs": ep, "alpha": alpha})
    for lr, ep in prod([0.01, 0.02, 0.03, 0.05, 0.1], [5, 10]):
        g.append({"name": "ft", "lr": lr, "epochs": ep})
    for lr, ep in prod([1e-3, 3e-3, 1e-2, 3e-2], [1, 3, 5]):
        g.append({"name": "ga", "lr": lr, "epochs": ep})
    for alpha in [1.0, 3.0, 5.0, 10.0, 20.0, 40.0]:
        g.append({"name": "iu", "alpha": alpha, "num_samples": 256})
    for name, lr, ep in prod(["boundary_shrink", "boundary_expand"], [1e-4, 2e-4, 3e-4, 5e-4, 1e-3], [5, 10]):
        g.append({"name": name, "lr": lr, "epochs": ep})
    for lr in [1e-4, 2e-4, 5e-4, 1e-3, 2e-3]:
        g.append({"name": "scrub", "lr": lr})
    return g


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def _key(spec: dict[str, Any], seed: int) -> str:
    return json.dumps([spec, seed], sort_keys=True)


def run(seeds: list[int], specs: list[dict[str, Any]], trials: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from unlearnkit.bench.rows import RowRunner
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import make_setup, original_model

    torch.set_num_threads(1)
    done = set()
    if trials.exists():
        done = {_key(r["spec"], r["seed"]) for r in map(json.loads, trials.read_text().splitlines())}
    base = load_preset("vision/base")
    base.setdefault("engine", {})["progress"] = False
    with trials.open("a") as out:
        for seed in seeds:
            todo = [s for s in specs if _key(s, seed) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            setup = make_setup(base | {"seed": seed})
            orig = original_model(setup)
            oracle, _, _ = RowRunner().run_row(setup, orig, "retrain", {"name": "retrain"}, None, None)
            for spec in todo:
                m, _, _ = RowRunner().run_row(setup, orig, spec["name"], dict(spec), oracle, None)
                kept = {k: m[k] for k in ("UA", "RA", "TA", "MIA", "gap")}
                ref = {k: oracle[k] for k in ("UA", "RA", "TA", "MIA")}
                row = {"spec": spec, "seed": seed, "metrics": kept, "oracle": ref}
                out.write(json.dumps(row) + "\n")
                out.flush()
            print(f"seed {seed}: {len(todo)} trials in {time.perf_counter() - t0:.0f} s", flush=True)


def best_per_method(
    rows: list[dict[str, Any]], seeds: list[int], min_ua_frac: float = 0.2
) -> dict[str, dict[str, Any]]:
    """Each method's configuration with the smallest mean gap over ``seeds`` among those that forget.

    "Forget" = the mean UA over the tuning seeds is at least ``min_ua_frac`` of the oracle's mean UA (the
    original model's UA is 0 here: it fits its training set). Without this constraint the gap alone can
    prefer a configuration that leaves UA at 0 and buys its gap on RA/TA (boundary expanding did), and the
    issue asks that every preset actually forget.
    """
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    oracle_ua: dict[int, float] = {}
    for r in rows:
        if r["seed"] in seeds:
            by[json.dumps(r["spec"], sort_keys=True)].append(r)
            oracle_ua[r["seed"]] = r["oracle"]["UA"]
    floor = min_ua_frac * statistics.fmean(oracle_ua.values()) if oracle_ua else 0.0
    best: dict[str, dict[str, Any]] = {}
    for key, rs in by.items():
        if len(rs) < len(seeds) or statistics.fmean(r["metrics"]["UA"] for r in rs) < floor:
            continue
        gaps = [r["metrics"]["gap"] for r in rs]
        spec = json.loads(key)
        entry = {
            "spec": spec,
            "gap_mean": statistics.fmean(gaps),
            "gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
            "means": {k: statistics.fmean(r["metrics"][k] for r in rs) for k in ("UA", "RA", "TA", "MIA")},
        }
        if spec["name"] not in best or entry["gap_mean"] < best[spec["name"]]["gap_mean"]:
            best[spec["name"]] = entry
    return dict(sorted(best.items(), key=lambda kv: kv[1]["gap_mean"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="100-109", help="tuning seeds: 100-109 or 100,101,...")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the grid's methods")
    ap.add_argument("--out", type=Path, default=Path("tune-out"))
    ap.add_argument("--min-ua-frac", type=float, default=0.2, help="forgetting floor (see best_per_method)")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    specs = grid()
    if args.methods:
        wanted = set(args.methods.split(","))
        unknown = wanted - {s["name"] for s in specs}
        if unknown:
            ap.error(f"no grid for {sorted(unknown)}")
        specs = [s for s in specs if s["name"] in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    trials = args.out / "trials.jsonl"
    run(seeds, specs, trials)
    rows = [json.loads(line) for line in trials.read_text().splitlines()]
    best = best_per_method(rows, seeds, args.min_ua_frac)
    tmp = args.out / "best.json.tmp"
    tmp.write_text(json.dumps(best, indent=1))
    tmp.replace(args.out / "best.json")
    print(f"\nbest configuration per method over seeds {args.seeds} (mean ± std Avg. Gap):")
    for name, b in best.items():
        means = " ".join(f"{k} {v:.2f}" for k, v in b["means"].items())
        cfg = {k: v for k, v in b["spec"].items() if k != "name"}
        print(f"  {name:16s} {b['gap_mean']:.2f} ± {b['gap_std']:.2f}   {means}   {cfg}")


if __name__ == "__main__":
    main()

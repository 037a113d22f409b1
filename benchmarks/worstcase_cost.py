"""Cost of a worst-case selection, in unlearning runs (issue #5: at most about 3).

Times, on the worstcase-digits suite (its original model and ``select:`` settings), the selection of a
10% worst-case set, one SalUn run with the vision/salun preset and one retrain (the oracle), each
``--repeats`` times after a warm-up, and prints the median ratios selection / SalUn and selection / retrain.

    python benchmarks/worstcase_cost.py [--repeats 5] [--lower retrain] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unlearnkit.bench.suite import load_suite
from unlearnkit.data.splits import random_split
from unlearnkit.experiment import build_method, make_setup, original_model, run_method
from unlearnkit.selection.runner import run_selection, split_suite_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lower", default=None, help="override select.lower (default: the suite's)")
    ap.add_argument("--size", default="10%")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    over = [f"select.lower={args.lower}"] if args.lower else []
    cfg, specs, sel = split_suite_config(load_suite("worstcase-digits", over))
    cfg["engine"]["progress"] = False
    setup = make_setup(cfg | {"seed": args.seed})
    original = original_model(setup).model

    def select() -> tuple[float, int]:
        t0 = time.perf_counter()
        res = run_selection(setup, original, args.size, sel, specs)
        return time.perf_counter() - t0, res.lower_steps

    def unlearn(name: str) -> tuple[float, int]:
        setup.split = random_split(setup.data.train, setup.data.test, len(res_ids), args.seed)
        t0 = time.perf_counter()
        _, _, fit = run_method(setup, original, build_method(specs[name]))
        return time.perf_counter() - t0, fit.steps

    res_ids = run_selection(setup, original, args.size, sel, specs).ids  # warm-up (imports, accelerate)
    unlearn("salun")
    runs: dict[str, list[tuple[float, int]]] = {"selection": [], "salun": [], "retrain": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all three alike
        runs["selection"].append(select())
        runs["salun"].append(unlearn("salun"))
        runs["retrain"].append(unlearn("retrain"))
    med = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    steps = {k: v[0][1] for k, v in runs.items()}
    print(f"worst-case selection of {len(res_ids)} / {len(setup.data.train)} (lower level: {sel.lower})")
    for k in runs:
        print(f"  {k:<10} {med[k]:7.3f} s  ({steps[k]} optimizer steps)")
    print(f"selection / SalUn run   = {med['selection'] / med['salun']:.2f}  (goal: <= ~3)")
    print(f"selection / retrain     = {med['selection'] / med['retrain']:.2f}")


if __name__ == "__main__":
    main()

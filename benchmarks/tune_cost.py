"""What ``tune`` costs, and how much of it is scoring: wall time of one tuning per method and world.

For each world (the generated worlds of ``tune_validate.py``, seed 0, random 10% forgetting or
``--classwise``) the original is trained once; then each method is tuned three ways in this one process:

- ``end``: ``every_epoch=False``, each run scored at its end (the plan before epoch scoring);
- ``every``: the default, methods that allow it scored after every epoch;
- ``every, old scoring``: the same, with each trial also computing the held-out MIA verdict (two more SVC
  fits per scoring), as tune did before it read that verdict from the original model only.

Printed per method and world: the three times, ``every / end``, ``every / old`` and the share of the
``every`` time spent in scoring (``tuning.signals``). ``every`` and ``old`` must choose the same
options with the same scores (a trial's own held-out verdict is never scored); the script checks it.

    python benchmarks/tune_cost.py [--worlds tabular,signals,gratings] [--methods ga,ft,rl,salun,...]
                                   [--classwise] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tune_validate import train, world  # noqa: E402

METHODS = "ga,ft,rl,salun,boundary_shrink,l1_sparse,scrub,boundary_expand,iu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="tabular,signals,gratings")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--classwise", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="time each setting this many times (median)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import unlearnkit.tuning as cal
    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.splits import class_split, random_split

    real_signals = cal.signals
    spent = {"signals": 0.0}

    def timed(*a, old: bool = False, **kw):
        if old:
            kw["targets"] = True
        t0 = time.perf_counter()
        try:
            return real_signals(*a, **kw)
        finally:
            spent["signals"] += time.perf_counter() - t0

    def once(original, m, split, k, every, old):
        cal.signals = lambda *a, **kw: timed(*a, old=old, **kw)
        spent["signals"] = 0.0
        t0 = time.perf_counter()
        res = cal.tune_split(original, {"name": m}, split, k, {"batch_size": 64}, 0, every_epoch=every)
        cal.signals = real_signals
        return res, time.perf_counter() - t0, spent["signals"]

    print(
        "| world | method | end (s) | every (s) | every, old scoring (s) | every / end | every / old |"
        " scoring share of every |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for wname in args.worlds.split(","):
        build, x, y, xt, yt, k = world(wname, 0)
        train_set, test_set = ExampleSet({"x": x, "y": y}), ExampleSet({"x": xt, "y": yt})
        split = (
            class_split(train_set, test_set, 0)
            if args.classwise
            else random_split(train_set, test_set, 0.1, 0)
        )
        original = train(build, split.train.columns["x"], split.train.columns["y"], 0)
        for m in args.methods.split(","):
            times: dict[str, list[float]] = {"end": [], "every": [], "old": []}
            share = []
            for _ in range(args.repeats):
                _, t_end, _ = once(original, m, split, k, False, False)
                new, t_every, t_sig = once(original, m, split, k, True, False)
                old, t_old, _ = once(original, m, split, k, True, True)
                times["end"].append(t_end)
                times["every"].append(t_every)
                times["old"].append(t_old)
                share.append(t_sig / t_every)
                if new.best != old.best or [t.score for t in new.trials] != [t.score for t in old.trials]:
                    raise SystemExit(f"{wname} {m}: the old scoring chose differently; it must not")
            e, v, o = (statistics.median(times[s]) for s in ("end", "every", "old"))
            print(
                f"| {wname} | {m} | {e:.1f} | {v:.1f} | {o:.1f} | {v / e:.2f} | {v / o:.2f} |"
                f" {statistics.median(share):.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

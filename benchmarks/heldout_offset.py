"""How far a world's test set is from unseen data of its training pool: the premise of ``tune``.

``tune`` (random forgetting) aims the forget set at what the test set shows, as a retrained model would see
the forget set like any unseen data. This trains the original's recipe on 90% of a world's training pool,
``--seeds`` times with a different 10% held out, and prints the accuracy on the held-out 10% minus the
accuracy on the test set (mean ± standard error). Zero means the test set stands in for unseen training data;
a fixed test set of a few hundred examples is off by a few points by chance alone. ``--draws`` lists the
generator draws of a generated world (``fixed`` is the one ``tune_validate.py`` uses by default; an integer
``s`` is its ``--fresh-data`` draw for seed ``s``).

    python benchmarks/heldout_offset.py [--worlds signals] [--draws fixed,0,1] [--seeds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tune_validate import train, world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="digits,tabular,signals,gratings")
    ap.add_argument("--draws", default="fixed")
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| world | draw | held-out − test accuracy (pp, ± s.e.) | test accuracy |")
    print("|---|---|---|---|")
    for name in args.worlds.split(","):
        for draw in args.draws.split(",") if name != "digits" else ["fixed"]:  # digits: one dataset
            fresh = draw != "fixed"
            build, x, y, xt, yt, _ = world(name, int(draw) if fresh else 0, fresh)
            offsets, tests = [], []
            for s in range(args.seeds):
                perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 + s))
                held, kept = perm[: len(y) // 10], perm[len(y) // 10 :]
                model = train(build, x[kept], y[kept], s)
                with torch.no_grad():
                    acc_held = 100.0 * (model(x[held]).argmax(1) == y[held]).float().mean().item()
                    acc_test = 100.0 * (model(xt).argmax(1) == yt).float().mean().item()
                offsets.append(acc_held - acc_test)
                tests.append(acc_test)
            mean, se = statistics.mean(offsets), statistics.stdev(offsets) / len(offsets) ** 0.5
            print(f"| {name} | {draw} | {mean:+.2f} ± {se:.2f} | {statistics.mean(tests):.1f} |", flush=True)


if __name__ == "__main__":
    main()

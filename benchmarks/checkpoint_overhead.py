"""What resumability costs, as ratios measured in one run (no absolute timings are asserted anywhere).

Unlearning wall time with step checkpoints (model, optimizer, schedule, RNG states, data order, mask)
every N steps over the same run without checkpoints, for a few N. The runs are interleaved and repeated;
the median of each setting is compared. The default is a SalUn run (mask included) on the digits preset
with the ResNet-tiny model, a checkpoint of about 0.3 MB; pass ``--model mlp`` for the preset's MLP.

    python benchmarks/checkpoint_overhead.py [--preset vision/salun] [--model resnet-tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unlearnkit.config import load_preset
from unlearnkit.experiment import build_method, make_setup, original_model, run_method


def timed_run(cfg: dict, every: int, folder: Path) -> tuple[float, int]:
    cfg = cfg | {"engine": cfg["engine"] | {"checkpoint_steps": every, "progress": False}}
    setup = make_setup(cfg)
    original = original_model(setup).model
    method = build_method(cfg["method"], cfg.get("family", "vision"))
    t0 = time.perf_counter()
    _, _, fit = run_method(setup, original, method, run_dir=folder if every else None)
    return time.perf_counter() - t0, fit.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vision/salun")
    ap.add_argument("--model", default="resnet-tiny")
    ap.add_argument("--every", default="1,10,50", help="checkpoint intervals in steps")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_preset(args.preset)
    cfg["model"] = {"name": args.model}
    intervals = [0] + [int(x) for x in args.every.split(",")]
    times: dict[int, list[float]] = {n: [] for n in intervals}
    steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in intervals:
                seconds, steps = timed_run(cfg, n, Path(tmp) / f"every-{n}")
                times[n].append(seconds)
    base = statistics.median(times[0])
    print(f"{args.preset} on {args.model}: {steps} steps, median of {args.repeats} runs each")
    for n in intervals[1:]:
        ratio = statistics.median(times[n]) / base
        print(f"  checkpoint every {n:>3} step(s) / no checkpoints: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Speed ratios measured in one run (no absolute timings are asserted anywhere).

1. Engine step time / bare PyTorch loop step time, same model, data, batch size and optimizer
   (goal <= 1.15). Both loops run interleaved several times; the median of each is compared.
2. SalUn wall time / retrain wall time on the vision-digits preset (the RTE ratio of SalUn Table 1).

    python benchmarks/engine_overhead.py [--model resnet-tiny] [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from unlearnkit.config import load_preset
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.experiment import build_method, make_setup, original_model, run_method


def bare_loop(model, x, y, batch_size, epochs, lr, seed) -> tuple[float, int]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return time.perf_counter() - t0, steps


def engine_loop(model, data, batch_size, epochs, lr, seed) -> tuple[float, int]:
    engine = Engine(EngineConfig(batch_size=batch_size, progress=False, threads=None, seed=seed))

    def loss(b, ctx):
        return F.cross_entropy(model(b["train"]["x"]), b["train"]["y"]), {}

    spec = OptimSpec(epochs=epochs, lr=lr, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    res = engine.fit(model, {"train": data}, lambda e: [Phase("train", ("train",), loss)], spec)
    return time.perf_counter() - t0, res.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet-tiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_preset("vision/salun") | {"model": {"name": args.model}}
    setup = make_setup(cfg)
    data = setup.split.train
    batch = data.all()
    x, y = batch["x"], batch["y"]
    init = setup.new_model().state_dict()

    bare, eng = [], []
    for r in range(args.repeats):
        for which in ("bare", "engine"):
            model = setup.new_model()
            model.load_state_dict(init)
            if which == "bare":
                sec, steps = bare_loop(model, x, y, args.batch_size, args.epochs, 0.05, r)
                bare.append(sec / steps)
            else:
                sec, steps = engine_loop(model, data, args.batch_size, args.epochs, 0.05, r)
                eng.append(sec / steps)
    b, e = statistics.median(bare), statistics.median(eng)
    print(f"model={args.model} batch={args.batch_size} steps/run={steps} threads={args.threads}")
    print(f"bare PyTorch step  {b * 1e3:8.3f} ms (median of {args.repeats})")
    print(f"engine step        {e * 1e3:8.3f} ms (median of {args.repeats})")
    print(f"engine / bare      {e / b:8.3f}   (goal <= 1.15)")

    suite = load_preset("vision/salun") | {"engine": {"progress": False}}
    setup = make_setup(suite)
    original = original_model(setup).model
    _, t_retrain, _ = run_method(setup, original, build_method(load_preset("vision/retrain")["method"]))
    _, t_salun, _ = run_method(setup, original, build_method(load_preset("vision/salun")["method"]))
    print(f"retrain {t_retrain:.3f} s, salun {t_salun:.3f} s on vision-digits ({suite['model']['name']})")
    print(f"salun / retrain    {t_salun / t_retrain:8.3f}")


if __name__ == "__main__":
    main()

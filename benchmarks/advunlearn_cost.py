"""AdvUnlearn's cost over ESD's on the shipped t2i-shapes model (issue #4 goals: time ≤ 5×, memory ≤ 1.3×).

Each measurement runs in a fresh child process (so peak RSS is its own): load the original model, erase
"a red circle" with the method's defaults for ``--steps`` optimizer steps (after 2 warm-up steps), and report

- seconds per iteration (one optimizer step, including the inner attack for AdvUnlearn),
- peak RSS growth during the run (``resource.getrusage(...).ru_maxrss`` after minus before training: the
  activations, gradients, optimizer state and teacher copies/caches the method adds),
- training-state bytes (analytic): trainable parameters × 4 (weights, grads, Adam m and v) + what the method
  keeps of the teacher (ESD: a copy of its trained tensors; AdvUnlearn: the cached teacher text states).

Methods are interleaved over ``--repeats`` so machine-load drift hits all alike; medians are printed.

    python benchmarks/advunlearn_cost.py [--repeats 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

METHODS = ("esd", "advunlearn", "advunlearn_fast")


def child(name: str, steps: int) -> dict[str, float]:
    import gc
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    from unlearnkit.data.shapes import load_shapes
    from unlearnkit.data.splits import Split
    from unlearnkit.engine.loop import Engine, EngineConfig
    from unlearnkit.families.diffusion import DiffusionFamily
    from unlearnkit.methods.base import Task
    from unlearnkit.models.t2i_world import load_original
    from unlearnkit.registry import get_method

    model, _ = load_original()
    data = load_shapes()
    tr = data.train
    fm = tr.columns["y"] == 0
    cls = get_method(name)
    cfg = cls.Config(epochs=1)
    bs = cfg.batch_size
    forget = tr.take(fm.nonzero().squeeze(1)[: bs * (steps + 2)])
    split = Split(forget, tr.take((~fm).nonzero().squeeze(1)), data.test)
    engine = Engine(EngineConfig(batch_size=bs, progress=False))
    method = cls(cfg)
    task = Task(DiffusionFamily(tokenizer=data.meta["tokenizer"]), model, split, engine)
    times: list[float] = []
    orig_loss = method.loss if hasattr(method, "loss") else None

    def timed(b, ctx):  # time loss + backward + step: from one loss call to the next
        times.append(time.perf_counter())
        return orig_loss(b, ctx)

    method.loss = timed
    gc.collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method.run(task)
    t_end = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times.append(t_end)
    per_it = statistics.median(b - a for a, b in zip(times[2:-1], times[3:], strict=True))
    trainable = sum(p.numel() for n, p in model.named_parameters() if n in _trained(method, model))
    extra = sum(v.numel() for v in getattr(method, "_orig", {}).values())
    extra += sum(v.numel() for v in getattr(method, "_cache", {}).values())
    return {
        "s_per_it": per_it,
        "rss_growth_mb": (rss1 - rss0) / 1024,
        "state_mb": (4 * trainable + extra) * 4 / 2**20,
        "trainable": trainable,
    }


def _trained(method, model) -> set[str]:
    if hasattr(method, "_orig"):
        return set(method._orig)
    from unlearnkit.methods.advunlearn import text_encoder_param_names

    return set(text_encoder_param_names(model, method.cfg.train_layers))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m in METHODS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", m, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    print(
        f"t2i-shapes, erase 'a red circle', method defaults, {args.steps} timed steps, {args.repeats} repeats"
    )
    print(f"{'method':<16}{'s/iter':>9}{'RSS growth MB':>15}{'state MB':>10}{'trainable':>11}")
    for m in METHODS:
        r = med[m]
        print(
            f"{m:<16}{r['s_per_it']:>9.3f}{r['rss_growth_mb']:>15.1f}{r['state_mb']:>10.2f}{r['trainable']:>11.0f}"
        )
    e = med["esd"]
    for m in METHODS[1:]:
        r = med[m]
        print(
            f"{m} / esd: time {r['s_per_it'] / e['s_per_it']:.2f} (goal <= 5), "
            f"peak RSS growth {r['rss_growth_mb'] / max(e['rss_growth_mb'], 1e-9):.2f} (goal <= 1.3), "
            f"training state {r['state_mb'] / e['state_mb']:.2f}"
        )


if __name__ == "__main__":
    main()

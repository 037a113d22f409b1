"""Train the original tiny text-to-image model and the judge of a world (CPU, ~15 min on one core).

    .venv/bin/python scripts/train_t2i_world.py --world shapes|digits|cifar10 [--steps 2200] [--out DIR]
        [--data-options JSON] [--assets]

The recipe is :func:`unlearnkit.models.t2i_world.train_world` (Ho et al. 2020, Eq. 14; AdamW lr 1e-3, batch
32, gradient clip 1, EMA 0.995, 10% empty captions). Writes ``DIR/model`` (save_pretrained components),
``DIR/judge.safetensors``, ``DIR/world.json`` (dataset spec and judge schema) and ``DIR/train.json`` (time,
judge accuracy on real test images and on generated samples). ``DIR`` defaults to
``$UNLEARNKIT_CACHE/t2i-<world>``; ``--assets`` also copies the result into
``src/unlearnkit/assets/t2i_<world>``. The cifar10 world reads CIFAR-10 through the cifar10 loader: pass
``--data-options '{"base_options": {"source": "/path/to/local/copy"}}'`` on a machine without the hub.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch


def main(default_world: str | None = None) -> None:
    from unlearnkit.models.t2i_world import WORLDS, train_world

    ap = argparse.ArgumentParser()
    ap.add_argument("--world", choices=sorted(WORLDS), default=default_world, required=default_world is None)
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-options", type=json.loads, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--assets", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from unlearnkit.models.t2i_world import cache_root

    out = args.out or cache_root() / f"t2i-{args.world}"
    report = train_world(
        args.world,
        out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema=args.ema,
        p_uncond=args.p_uncond,
        seed=args.seed,
        data_options=args.data_options,
    )
    print(report, flush=True)
    if args.assets:
        dst = Path(__file__).resolve().parents[1] / "src" / "unlearnkit" / "assets" / f"t2i_{args.world}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(out, dst)


if __name__ == "__main__":
    main()

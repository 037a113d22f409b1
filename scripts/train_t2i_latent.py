"""Train the latent shapes world: a tiny Stable Diffusion folder (VAE, CLIP tokenizer and text encoder, latent
UNet) on the shapes images, with the shapes judge beside it (CPU, ~15 min on one core).

    .venv/bin/python scripts/train_t2i_latent.py [--steps 2200] [--vae-steps 1500] [--out DIR] [--assets]

The recipe is :func:`unlearnkit.models.latent_world.train_latent_world`. ``DIR`` defaults to
``$UNLEARNKIT_CACHE/t2i-latent-shapes``; ``--assets`` also copies the result into
``src/unlearnkit/assets/t2i_latent_shapes``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch


def main() -> None:
    from unlearnkit.models.latent_world import train_latent_world
    from unlearnkit.paths import cache_root

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--assets", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or cache_root() / "t2i-latent-shapes"
    report = train_latent_world(
        out, steps=args.steps, vae_steps=args.vae_steps, seed=args.seed, batch_size=args.batch_size,
        lr=args.lr, ema=args.ema, p_uncond=args.p_uncond,
    )  # fmt: skip
    print(report, flush=True)
    if args.assets:
        dst = Path(__file__).resolve().parents[1] / "src" / "unlearnkit" / "assets" / "t2i_latent_shapes"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(out, dst)


if __name__ == "__main__":
    main()

"""Train the original tiny text-to-image model and the judge on the ``shapes`` world (CPU, ~15 min).

    .venv/bin/python scripts/train_t2i_shapes.py [--steps 2200] [--out DIR] [--assets]

Denoising objective ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, c, t)‖² (Ho et al. 2020, Eq. 14), AdamW lr 1e-3,
batch 32, gradient clip 1, EMA 0.995 (the saved weights are the EMA), 10% empty captions so that
classifier-free guidance works. Writes ``DIR/model`` (save_pretrained components), ``DIR/judge.safetensors``
and ``DIR/train.json`` (time, judge accuracy on real test images, judge accuracy on generated samples).
``DIR`` defaults to ``$UNLEARNKIT_CACHE/t2i-shapes``; ``--assets`` also copies the result into
``src/unlearnkit/assets/t2i_shapes``.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def cache_dir() -> Path:
    root = Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit")).expanduser()
    return root / "t2i-shapes"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2200)
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
    out = args.out or cache_dir()

    from unlearnkit.data.shapes import load_shapes
    from unlearnkit.io import save_weights, write_json
    from unlearnkit.metrics.diffusion import generate_for_prompts
    from unlearnkit.models.t2i import build_t2i, encode_prompts, judge_accuracy, save_t2i, train_judge

    data = load_shapes(seed=args.seed)
    t0 = time.perf_counter()
    judge = train_judge(data, seed=args.seed)
    judge_s = time.perf_counter() - t0
    tb = data.test.all()
    real_acc = judge_accuracy(judge, tb["x"], tb["shape"], tb["color"])
    print(f"judge: {judge_s:.1f}s, real test accuracy shape/colour/both = {real_acc}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(judge, out / "judge.safetensors")

    model = build_t2i(data, preset="small", seed=args.seed)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    empty = encode_prompts(model, [""])[0]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    n = len(data.train)
    t0 = time.perf_counter()
    step = 0
    model.train()
    while step < args.steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            b = data.train.__getitems__(perm[i : i + args.batch_size].tolist())
            x0 = b["x"] * 2 - 1
            ids = b["input_ids"].clone()
            drop = torch.rand(len(ids), generator=gen) < args.p_uncond
            ids[drop] = empty
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, model.num_train_timesteps, (len(ids),), generator=gen)
            loss = F.mse_loss(model(model.add_noise(x0, noise, t), t, ids), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - args.ema)
            step += 1
            if step % 100 == 0:
                print(f"step {step} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", flush=True)
            if step >= args.steps:
                break
    train_s = time.perf_counter() - t0
    save_t2i(ema, out / "model")

    caps = data.meta["captions"]
    t0 = time.perf_counter()
    imgs, ys = generate_for_prompts(ema, caps, per_prompt=16, seed=1234)
    sample_s = time.perf_counter() - t0
    gen_acc = judge_accuracy(judge, imgs, ys // 3, ys % 3)
    report = {
        "steps": args.steps,
        "train_seconds": round(train_s, 1),
        "judge_seconds": round(judge_s, 1),
        "judge_real_acc_shape_color_both": real_acc,
        "judge_on_samples_shape_color_both": gen_acc,
        "sample_seconds_144": round(sample_s, 1),
        "command": f"python scripts/train_t2i_shapes.py --steps {args.steps} --seed {args.seed}",
    }
    write_json(out / "train.json", report)
    print(report, flush=True)
    if args.assets:
        dst = Path(__file__).resolve().parents[1] / "src" / "unlearnkit" / "assets" / "t2i_shapes"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(out, dst)


if __name__ == "__main__":
    main()

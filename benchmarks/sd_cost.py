"""Cost of the concept-erasure methods on a Stable Diffusion model, relative to ESD-x (issue #14 goals for
AdvUnlearn at the SD v1.4 size: time ≤ 5×, memory ≤ 1.3×), with and without gradient checkpointing.

The model is built with random weights (nothing is downloaded; the configurations are public numbers):

- ``--size sd14``: the SD v1.4 UNet (sample 64, 4 latent channels, blocks 320/640/1280/1280, 2 layers per
  block, attention head dim 8, cross-attention dim 768; 859.5M parameters) and the CLIP ViT-L/14 text tower
  (width 768, 12 layers, 12 heads, MLP 3072, vocabulary 49,408, 77 positions; 123.1M parameters);
- ``--size small`` (the default, for a CPU): the same layout scaled down (blocks 32/64/128/128, sample 16,
  cross-attention 128; a 4-layer, width-128 text tower with the full 49,408-token vocabulary).

The VAE is a small random one (frozen and outside every optimizer, unused by the timed steps: the methods
that need images, SalUn, get random latents as their "own generations"). The tokenizer is a byte-level CLIP
BPE without merges (every character a token). Each measurement runs in a fresh child process: the method
with its defaults at batch ``--batch`` (the papers' batch 1 by default; AdvUnlearn's retain batch 5) for
``--steps`` timed optimizer steps after 2 warm-up steps, and reports

- seconds per iteration: the median time between consecutive optimizer steps (for UCE, a closed-form edit
  with no optimizer, the whole edit);
- memory growth during the run: on a GPU the peak allocated bytes minus those allocated before the run, on a
  CPU the growth of the peak RSS (activations, gradients, optimizer state, the method's caches); and the
  peak itself (the model included: what decides whether a run fits on a device).

An "iteration" is one optimizer step: for SalUn a step on a forget or on a retain batch (its RL phases
alternate), for the others one step of the method's loss (ESD and AdvUnlearn include the partial DDIM
sampling of x_t, AdvUnlearn its inner attack).

Methods and the checkpointing setting are interleaved over ``--repeats`` (load drift hits all alike); medians
are printed, and each method's ratios to ESD-x under the same setting.

    python benchmarks/sd_cost.py [--size small|sd14] [--repeats 2] [--steps 4] [--device auto|cpu|cuda]
                                 [--sample 16]   # a smaller latent: the sd14 weights at 128 px, for a CPU
                                 [--methods esd,advunlearn,advunlearn@retain_chunk=null]   # name@option=value
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = ("esd", "uce", "fmn", "advunlearn", "advunlearn@retain_chunk=null", "advunlearn_fast", "salun")
CONCEPT, ANCHOR = "a photo of a cat", "a photo of a dog"
RETAIN = ("a photo of a dog", "a photo of a car", "a church", "a red apple", "a landscape painting")

UNET = {  # UNet2DConditionModel's defaults are SD 1.x's block types
    "sd14": {"sample_size": 64, "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768},
    "small": {"sample_size": 16, "block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 128},
}
TEXT = {
    "sd14": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
}


def byte_tokenizer(folder: Path):
    """A CLIP tokenizer (``vocab.json`` + ``merges.txt``) over single bytes: no merges, every character a
    token (the ids stay far below the text encoder's 49,408)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {
        t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def build_model(size: str, tok, seed: int = 0, sample: int | None = None):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearnkit.models.sd import LatentT2IModel

    torch.manual_seed(seed)
    u = UNET[size] | ({"sample_size": sample} if sample else {})
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=8, **u)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, projection_dim=768, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TEXT[size],
        )
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
        sample_size=8 * u["sample_size"],
    )  # fmt: skip
    sched = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return LatentT2IModel(unet, te, vae, sched, tok)


def child(
    name: str, size: str, steps: int, batch: int, ckpt: bool, device: str, sample: int | None = None
) -> dict[str, float]:
    import gc
    import resource
    import time

    import torch

    import unlearnkit.engine.loop as loop
    from unlearnkit.data.prompt_sets import load_prompt_set
    from unlearnkit.engine.loop import Engine, EngineConfig
    from unlearnkit.families.base import Task
    from unlearnkit.families.diffusion import DiffusionFamily
    from unlearnkit.models.sd import apply_memory_options
    from unlearnkit.registry import get_method

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    tmp = Path(tempfile.mkdtemp())
    tok = byte_tokenizer(tmp / "tokenizer")
    model = apply_memory_options(build_model(size, tok, sample=sample), gradient_checkpointing=ckpt).to(dev)
    name, *options = name.split("@")  # e.g. advunlearn@retain_chunk=1: a method option
    cls = get_method(name)
    cfg = cls.Config(
        epochs=1, batch_size=batch, **{k: json.loads(v) for k, v in (o.split("=") for o in options)}
    )
    n = batch * (steps + 2)
    data = load_prompt_set([CONCEPT] * n, retain_prompts=list(RETAIN) * n, tokenizer=str(tmp / "tokenizer"))
    family = DiffusionFamily(relabel_map={CONCEPT: ANCHOR}, tokenizer=tok, max_length=77)
    split, data = family.make_split(data, {"kind": "concept", "concept": CONCEPT}, 0)
    if name == "salun":  # SalUn-SD trains on images: the model's own generations, here random latents
        sets = [split.forget, split.retain, split.test]
        gen = torch.Generator().manual_seed(1)
        sets = [s.with_column("z0", torch.randn(len(s), *model.sample_shape, generator=gen)) for s in sets]
        split = type(split)(*sets)
    stamps: list[float] = []
    real_build = loop.build_optimizer

    def stamp(*_):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    def timed_build(params, spec):
        opt = real_build(params, spec)
        opt.register_step_post_hook(stamp)
        return opt

    loop.build_optimizer = timed_build
    engine = Engine(EngineConfig(batch_size=batch, progress=False, device=dev.type))
    task = Task(family, model, split, engine)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    cls(cfg).run(task)
    total = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        growth, peak = torch.cuda.max_memory_allocated() - before, torch.cuda.max_memory_allocated()
    else:
        growth, peak = (rss1 - rss0) * 1024, rss1 * 1024
    gaps = [b - a for a, b in zip(stamps[2:-1], stamps[3:], strict=True)]
    return {
        "s_per_it": statistics.median(gaps) if gaps else total,
        "growth_mb": growth / 2**20,
        "peak_mb": peak / 2**20,
        "steps": len(stamps),
        "device": dev.type,
    }


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _run(args, m: str, ckpt: bool) -> dict[str, float] | None:
    """One measurement in a fresh process; None (and its error on stderr) if it failed, e.g. out of memory."""
    cmd = [sys.executable, __file__, "--child", m, "--size", args.size, "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--device", args.device] + (["--ckpt"] if ckpt else [])
    cmd += ["--threads", str(args.threads)] + (["--sample", str(args.sample)] if args.sample else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(
            f"{m} (checkpointing {ckpt}) failed, exit {out.returncode}:\n{out.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(UNET), default="small")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sample", type=int, default=None, help="latent side (default: the size's; 64 for sd14)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each measurement")
    ap.add_argument("--ckpt-settings", choices=("both", "off", "on"), default="both")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        torch_threads(args.threads)
        res = child(args.child, args.size, args.steps, args.batch, args.ckpt, args.device, args.sample)
        print(json.dumps(res))
        return
    methods = [m for m in args.methods.split(",") if m]
    # UCE has no backward pass; FMN's attention recording refuses gradient checkpointing
    ckpts = {"both": (False, True), "off": (False,), "on": (True,)}[args.ckpt_settings]
    settings = [(m, c) for c in ckpts for m in methods if not (c and m.split("@")[0] in ("uce", "fmn"))]
    runs: dict[tuple[str, bool], list[dict]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            res = _run(args, *s)
            if res is not None:
                runs[s].append(res)
            print(f"  {s[0]:<28} ckpt={s[1]!s:<5} {json.dumps(res)}", file=sys.stderr, flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("s_per_it", "growth_mb", "peak_mb")}
           for s, rs in runs.items() if rs}  # fmt: skip
    dev = next((rs[0]["device"] for rs in runs.values() if rs), args.device)
    side = args.sample or UNET[args.size]["sample_size"]
    print(f"SD cost, size {args.size}, latent {side}x{side}, {dev}, batch {args.batch}, ", end="")
    print(f"{args.steps} timed steps, {args.repeats} repeats")
    print(f"{'method':<28}{'ckpt':>5}{'s/iter':>9}{'mem MB':>9}{'peak MB':>9}", end="")
    print(f"{'time/ESD':>10}{'mem/ESD':>9}{'peak/ESD':>10}")
    for m, c in settings:
        if (m, c) not in med or ("esd", c) not in med:
            print(
                f"{m:<28}{'on' if c else 'off':>5}  failed (see above)"
                if (m, c) not in med
                else f"{m}: no ESD-x"
            )
            continue
        r, e = med[(m, c)], med[("esd", c)]
        t, g = r["s_per_it"] / e["s_per_it"], r["growth_mb"] / max(e["growth_mb"], 1e-9)
        row = f"{m:<28}{'on' if c else 'off':>5}{r['s_per_it']:>9.3f}{r['growth_mb']:>9.0f}"
        print(f"{row}{r['peak_mb']:>9.0f}{t:>10.2f}{g:>9.2f}{r['peak_mb'] / e['peak_mb']:>10.2f}")
    for m in methods:
        if (m, True) in med and (m, False) in med:
            on, off = med[(m, True)], med[(m, False)]
            print(f"checkpointing, {m}: time {on['s_per_it'] / off['s_per_it']:.2f}x, memory growth "
                  f"{on['growth_mb'] / max(off['growth_mb'], 1e-9):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

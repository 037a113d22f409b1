"""LM unlearning at real sizes (issue #15): step time and peak memory of NPO and SimNPO relative to GA, in
fp32 and bf16, with and without gradient checkpointing, all through the engine, measured in one run.

No timing is asserted; every figure is a ratio of two variants measured interleaved in the same run.
Each variant is one ``Method.run`` (the method's defaults: NPO and SimNPO with their retain NLL term, GA
without one) for ``--steps`` optimizer steps of ``--batch-size`` random token sequences of ``--seq`` tokens
(a 16-token prompt, the rest the answer), on a random Llama with:

- ``--size 1b``: Llama-3.2-1B's public config (hidden 2048, 16 layers, 32 heads, 8 KV heads,
  intermediate 8192, vocabulary 128,256, tied embeddings): the default on a GPU;
- ``--size small``: the same shape reduced to hidden 256, 4 layers, 8 heads, 2 KV heads, intermediate
  1024, vocabulary 32,000: the default on the CPU.

Step time: the engine's training-loop seconds over its steps (NPO's reference NLLs are computed before
the loop, once), the median over ``--rounds`` interleaved rounds after a warm-up. Peak memory: CUDA, the
peak allocated bytes of a run; CPU, the growth of the peak resident set of a forked child that runs it
(``benchmarks/lm_speed.py``'s ``peak_bytes``), one run each.

    python benchmarks/lm_scale.py [--size small|1b] [--rounds 3 --steps 4 --batch-size 4 --seq 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_speed import LLAMA_1B, peak_bytes  # noqa: E402

from unlearnkit.data.examples import ExampleSet  # noqa: E402
from unlearnkit.data.splits import Split  # noqa: E402
from unlearnkit.engine.loop import Engine, EngineConfig  # noqa: E402
from unlearnkit.experiment import build_method  # noqa: E402
from unlearnkit.families.text import TextFamily, enable_gradient_checkpointing  # noqa: E402
from unlearnkit.methods.base import Task  # noqa: E402

SMALL = LLAMA_1B | dict(
    vocab_size=32000,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
)
METHODS = ("ga", "npo", "simnpo")
PROMPT = 16


def build_model(size: str, device: str, checkpointing: bool) -> torch.nn.Module:
    """A random Llama of ``size`` (float32 weights: the engine's mixed precision autocasts them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**(LLAMA_1B if size == "1b" else SMALL)))
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def qa_set(n: int, seq: int, vocab: int, start: int, gen: torch.Generator) -> ExampleSet:
    ids = torch.randint(3, vocab, (n, seq), generator=gen)
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    cols = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return ExampleSet(cols, ids=list(range(start, start + n)))


def run_variant(model, split: Split, method: str, precision: str, args) -> float:
    """One method run on ``model`` (in place; a tiny learning rate); returns seconds per optimizer step."""
    engine = Engine(
        EngineConfig(
            progress=False, device=args.device, batch_size=args.batch_size, precision=precision, threads=None
        )
    )
    m = build_method({"name": method, "epochs": 1, "lr": 1e-9, "weight_decay": 0.0}, "text")
    fit = m.run(Task(TextFamily(), model, split, engine, seed=0))
    return fit.seconds / fit.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("small", "1b"), default=None, help="default: 1b on a GPU, else small")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (after a warm-up)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size or ("1b" if args.device == "cuda" else "small")
    vocab = (LLAMA_1B if size == "1b" else SMALL)["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    n = args.steps * args.batch_size
    split = Split(
        qa_set(n, args.seq, vocab, 0, gen),
        qa_set(n, args.seq, vocab, n, gen),
        qa_set(1, 8, vocab, 2 * n, gen),
    )
    models = {gc: build_model(size, args.device, gc) for gc in (False, True)}
    params = sum(p.numel() for p in models[False].parameters())
    card = f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", threads {args.threads}"
    print(
        f"random Llama ({size}) {params / 1e6:.1f}M params, device {args.device}{card}; "
        f"{args.steps} steps of batch {args.batch_size} x {args.seq} tokens per run, {args.rounds} rounds"
    )
    variants = [(p, gc, m) for p in args.precisions.split(",") for gc in (False, True) for m in METHODS]
    mem = {
        v: peak_bytes(lambda v=v: run_variant(models[v[1]], split, v[2], v[0], args), args.device)
        for v in variants
    }
    for v in variants:  # warm-up
        run_variant(models[v[1]], split, v[2], v[0], args)
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v].append(run_variant(models[v[1]], split, v[2], v[0], args))
    report(variants, times, mem)


def report(variants, times, mem) -> None:
    med = {v: statistics.median(t) for v, t in times.items()}
    for p, gc in dict.fromkeys((v[0], v[1]) for v in variants):
        ga = (p, gc, "ga")
        parts = [f"GA {med[ga] * 1e3:8.1f} ms/step {mem[ga] / 2**20:8.0f} MiB"]
        for m in METHODS[1:]:
            v = (p, gc, m)
            ratio = statistics.median(a / b for a, b in zip(times[v], times[ga], strict=True))
            parts.append(f"{m.upper()}/GA time {ratio:.2f} memory {mem[v] / max(mem[ga], 1):.2f}")
        print(f"{p} checkpointing {'on ' if gc else 'off'}: " + "  ".join(parts))
    for m in METHODS:
        base = (variants[0][0], False, m)
        line = []
        for p, gc in dict.fromkeys((v[0], v[1]) for v in variants):
            if (p, gc) != base[:2]:
                v = (p, gc, m)
                name = f"{p}{'+ckpt' if gc else ''}"
                line.append(f"{name} time {med[v] / med[base]:.2f} memory {mem[v] / max(mem[base], 1):.2f}")
        print(f"{m.upper()} vs {base[0]} without checkpointing: " + "  ".join(line))


if __name__ == "__main__":
    main()

"""Language-model speed (issue #19): our steps and TOFU evaluation against plain baselines, in one run.

No timing is asserted; every figure is a ratio of two variants measured interleaved in the same run.

1. Training step, per method (GA, GradDiff, NPO, SimNPO with their default settings, retain NLL included):
   our ``Method.loss`` + backward + AdamW step over a plain transformers loop computing the same loss on the
   same batches (``outputs.loss`` for token-mean NLLs; a contiguous cross-entropy on ``outputs.logits`` for
   NPO's and SimNPO's per-example NLLs; NPO's reference NLLs are the same cached values). The losses are
   checked equal first. Goal: ours / plain <= 1.05 for every method. Also tokens per second (real tokens).
2. Truth-ratio scoring (every answer, paraphrase and perturbed answer of every TOFU item): our
   shared-prompt scorer over a straightforward scorer that runs one item at a time (its answers in one
   forward pass, float32 log-softmax over the vocabulary). Goal >= 2x in items/s.
3. The whole TOFU evaluation (scoring + greedy generation + ROUGE on forget, retain, real authors, world
   facts): ``evaluate_tofu`` over the same evaluation done one item at a time. Goal >= 3x; the metrics of
   both are printed side by side. Peak memory of the evaluation over the one-item evaluation's (CUDA: peak
   allocated bytes; CPU: the growth of the peak resident set in a forked child). Goal <= 1.1.

Default: CPU, the suite's tiny Llama on tofu-synthetic forget10. ``--real`` builds a random Llama-3.2-1B
configuration (vocabulary 128,256) in bf16 on the GPU when there is one (the data's token ids are a subset
of its vocabulary; step times do not depend on the weights).

    python benchmarks/lm_speed.py [--rounds 7 --steps 10 --batch-size 8 --items 0 --eval-rounds 3] [--real]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from unlearnkit.config import load_preset
from unlearnkit.data.text import encode_pairs, prompt_ids
from unlearnkit.experiment import build_method, make_setup
from unlearnkit.methods.base import Method, Task
from unlearnkit.metrics import tofu
from unlearnkit.metrics.generation import generate_greedy
from unlearnkit.metrics.scoring import score_answer_sets

METHODS = ("ga", "graddiff", "npo", "simnpo")
LLAMA_1B = dict(  # meta-llama/Llama-3.2-1B's config.json
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


# -- the plain transformers loop (the floor) ------------------------------------------------------------
def _inputs(b: dict) -> dict:
    return {k: b[k] for k in ("input_ids", "attention_mask")}


def plain_nll(model, b: dict) -> torch.Tensor:
    logits = model(**_inputs(b)).logits[:, :-1]
    target = b["labels"][:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none")
    return nll.view(target.shape).sum(-1)


def plain_loss(name: str, method: Method, model, fb: dict, rb: dict) -> torch.Tensor:
    cfg = method.cfg
    if name == "ga":
        return -model(**_inputs(fb), labels=fb["labels"]).loss
    retain = model(**_inputs(rb), labels=rb["labels"]).loss
    if name == "graddiff":
        forget = -model(**_inputs(fb), labels=fb["labels"]).loss
    elif name == "npo":
        ref = method.reference.get(fb["id"]).to(model.device)
        forget = -(2 / cfg.beta) * F.logsigmoid(cfg.beta * (plain_nll(model, fb) - ref)).mean()
    else:
        units = (fb["labels"][:, 1:] != -100).sum(-1)
        z = cfg.beta * plain_nll(model, fb) / units - cfg.margin
        forget = -(2 / cfg.beta) * F.logsigmoid(z).mean()
    return cfg.gamma * forget + cfg.alpha * retain


def ours_loss(name: str, method: Method, fb: dict, rb: dict) -> torch.Tensor:
    if name == "ga":
        return -method.mean_loss(fb)
    return method.loss({"forget": fb, "retain": rb})[0]


# -- one item at a time (the evaluation baseline) -------------------------------------------------------
@torch.no_grad()
def one_item_nll(model, tok, question: str, answers: list[str], max_length: int = 512):
    """Summed NLL and length of each answer: one forward pass for the item, float32 log-softmax."""
    cols = encode_pairs(tok, [question] * len(answers), answers, max_length)
    dev = model.device
    logits = model(input_ids=cols["input_ids"].to(dev), attention_mask=cols["attention_mask"].to(dev)).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    target = cols["labels"][:, 1:].to(dev)
    mask = target != -100
    lp = logp.gather(-1, target.clamp_min(0)[..., None])[..., 0] * mask
    return (-lp.sum(-1)).double().cpu().numpy(), mask.sum(-1).cpu().numpy()


def answer_sets(records: list[dict], split: str) -> list[list[str]]:
    extra = split in ("forget", "retain")
    return [
        [r["answer"], *([r["paraphrased_answer"]] if extra else []), *r["perturbed_answers"]] for r in records
    ]


def one_item_split(model, tok, records, split: str, max_new_tokens: int) -> dict:
    extra = split in ("forget", "retain")
    prob, tr, norm, gens = [], [], [], []
    for r, answers in zip(records, answer_sets(records, split), strict=True):
        nll, units = one_item_nll(model, tok, r["question"], answers)
        avg = nll / units
        first = 2 if extra else 1
        prob.append(np.exp(-avg[0]))
        tr.append(tofu.truth_ratios(avg[first - 1 : first], [avg[first:]])[0])
        norm.append(tofu.normalised_probability(np.exp(-avg[:1]), [np.exp(-avg[first:])])[0])
        prompt = prompt_ids(tok, r["question"])
        gens.append(generate_greedy(model, tok, [prompt], max_new_tokens, 1)[0].strip())
    rouge = tofu.rouge_l_recall(gens, [r["answer"] for r in records])
    return {
        "prob": np.array(prob),
        "truth_ratio": np.array(tr),
        "prob_normalised": np.array(norm),
        "rouge": rouge,
    }


def one_item_tofu(model, tok, records: dict, max_new_tokens: int) -> dict:
    out = {}
    for split, prefix in tofu.SPLITS.items():
        res = one_item_split(model, tok, records[split], split, max_new_tokens)
        out[f"{prefix}_prob"] = float(np.mean(res["prob"]))
        out[f"{prefix}_rouge"] = float(np.mean(res["rouge"]))
        if split == "forget":
            out |= tofu.forget_truth_ratio_values(res)
        else:
            out[f"{prefix}_prob_normalised"] = float(np.mean(res["prob_normalised"]))
            out[f"{prefix}_truth_ratio"] = tofu.truth_ratio_utility(res["truth_ratio"])
    out["model_utility"] = tofu.model_utility(out)
    return out


# -- measuring ------------------------------------------------------------------------------------------
def clock(fn: Callable[[], object], device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """CUDA: peak allocated bytes while ``fn`` runs. CPU: growth of the peak resident set of a forked
    child that runs ``fn`` (``/proc/self/clear_refs`` resets the peak first)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, exit without running the parent's clean-up
        try:
            os.close(r)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status_kb("VmRSS")
            fn()
            os.write(w, str((_status_kb("VmHWM") - base) * 1024).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data or b"0")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def real_model(device: str, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        return LlamaForCausalLM._from_config(
            LlamaConfig(**LLAMA_1B | {"num_hidden_layers": layers}), dtype=dtype
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of training steps / scoring")
    ap.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--items", type=int, default=0, help="evaluation items per split (0: all)")
    ap.add_argument("--eval-rounds", type=int, default=3)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--real-layers", type=int, default=16, help="decoder layers of --real (fewer: a smoke run)"
    )
    ap.add_argument("--skip-train", action="store_true", help="measure the evaluation only")
    ap.add_argument("--real", action="store_true", help="a random Llama-3.2-1B configuration in bf16 on GPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = "cuda" if args.real and torch.cuda.is_available() else "cpu"

    cfg = load_preset("suites/tofu-synthetic")
    cfg = {k: cfg[k] for k in ("family", "data", "split", "model", "train", "engine", "eval")}
    cfg["engine"] = cfg["engine"] | {"progress": False, "device": device}
    setup = make_setup(cfg)
    tok = setup.data.meta["tokenizer"]
    model = real_model(device, args.real_layers) if args.real else setup.new_model().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    kind = "Llama-3.2-1B config (random)" if args.real else "tiny-llama"
    card = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    print(
        f"model {kind} {n_params / 1e6:.1f}M params, {next(model.parameters()).dtype}, "
        f"vocab {model.config.vocab_size}, device {device}{card}, threads {args.threads}"
    )
    if not args.skip_train:
        train_steps(setup, model, device, args)
    evaluation(model, tok, setup.data.meta["eval"], device, args)


def train_steps(setup, model, device: str, args) -> None:
    dev = torch.device(device)
    streams = {
        s: getattr(setup.split, s).loader(args.batch_size, shuffle=True, seed=0) for s in ("forget", "retain")
    }
    batches = [
        tuple({k: v.to(dev) for k, v in b.items()} for b in pair)
        for pair in itertools.islice(zip(streams["forget"], streams["retain"], strict=False), 4)
    ]
    methods = {}
    for name in METHODS:
        m = build_method({"name": name}, "text")
        task = Task(setup.family, model, setup.split, setup.engine(), setup.seed)
        m.task = task
        m.prepare(task)
        methods[name] = m
    fb, rb = batches[0]
    with torch.no_grad():
        diffs = {
            n: abs(float(ours_loss(n, m, fb, rb) - plain_loss(n, m, model, fb, rb)))
            for n, m in methods.items()
        }
    print("same loss, ours vs plain loop: " + "  ".join(f"{n} |diff| {d:.1e}" for n, d in diffs.items()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, weight_decay=0.0)  # one model for all variants
    model.train()

    def runner(name: str, ours: bool) -> Callable[[], None]:
        m = methods[name]
        cycle = itertools.cycle(batches)

        def run() -> None:
            for _ in range(args.steps):
                f, r = next(cycle)
                opt.zero_grad(set_to_none=True)
                loss = ours_loss(name, m, f, r) if ours else plain_loss(name, m, model, f, r)
                loss.backward()
                opt.step()

        return run

    variants = {(n, o): runner(n, o) for n in METHODS for o in (True, False)}
    for fn in variants.values():
        fn()  # warm-up
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, fn in variants.items():
            times[v].append(clock(fn, device) / args.steps)
    tokens = {
        n: statistics.mean(float(f["attention_mask"].sum() + (r["attention_mask"].sum() if n != "ga" else 0))
                           for f, r in batches)
        for n in METHODS
    }  # fmt: skip
    widths = [f["input_ids"].shape[1] for f, _ in batches]
    print(
        f"training: batch {args.batch_size} forget (+ {args.batch_size} retain), batch widths {widths} "
        f"(set width {setup.split.forget.columns['input_ids'].shape[1]}), "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    for n in METHODS:
        ratio = statistics.median(a / b for a, b in zip(times[(n, True)], times[(n, False)], strict=True))
        ours, plain = statistics.median(times[(n, True)]), statistics.median(times[(n, False)])
        print(
            f"  {n:9s} ours {ours * 1e3:7.2f} ms  plain {plain * 1e3:7.2f} ms  ratio {ratio:.3f} "
            f"(goal <= 1.05)  tokens/s ours {tokens[n] / ours:,.0f} plain {tokens[n] / plain:,.0f}"
        )
    model.eval()


def evaluation(model, tok, all_records: dict, device: str, args) -> None:
    records = {s: all_records[s][: args.items or None] for s in tofu.SPLITS}
    n = sum(len(v) for v in records.values())

    def ours_scoring():
        for s, recs in records.items():
            score_answer_sets(
                model, tok, [r["question"] for r in recs], answer_sets(recs, s), args.eval_batch_size
            )

    def item_scoring():
        for s, recs in records.items():
            for r, answers in zip(recs, answer_sets(recs, s), strict=True):
                one_item_nll(model, tok, r["question"], answers)

    def ours_eval():
        return tofu.evaluate_tofu(model, tok, records, None, args.eval_batch_size, args.max_new_tokens)

    def item_eval():
        return one_item_tofu(model, tok, records, args.max_new_tokens)

    a, b = ours_eval(), item_eval()
    keys = ("forget_truth_ratio", "forget_prob", "forget_rouge", "model_utility")
    print(f"TOFU evaluation, {n} items ({', '.join(f'{s} {len(v)}' for s, v in records.items())}), "
          f"batch {args.eval_batch_size}, {args.max_new_tokens} new tokens")  # fmt: skip
    print("  metrics ours / one-item: " + "  ".join(f"{k} {a[k]:.6f}/{b[k]:.6f}" for k in keys))
    with torch.no_grad():
        fns = {
            "ours_scoring": ours_scoring,
            "item_scoring": item_scoring,
            "ours_eval": ours_eval,
            "item_eval": item_eval,
        }
        ours_scoring(), item_scoring()  # warm-up (the evaluations ran once above)
        times = {k: [] for k in fns}
        for _ in range(args.rounds):  # scoring is short: more rounds, alternating tightly
            for k in ("ours_scoring", "item_scoring"):
                times[k].append(clock(fns[k], device))
        for _ in range(args.eval_rounds):
            for k in ("ours_eval", "item_eval"):
                times[k].append(clock(fns[k], device))
    for what, ours, item, goal in (("truth-ratio scoring", "ours_scoring", "item_scoring", ">= 2"),
                                   ("whole TOFU evaluation", "ours_eval", "item_eval", ">= 3")):  # fmt: skip
        ratio = statistics.median(b / a for a, b in zip(times[ours], times[item], strict=True))
        t_ours, t_item = statistics.median(times[ours]), statistics.median(times[item])
        print(
            f"  {what:22s} ours {n / t_ours:8.1f} items/s  one-item {n / t_item:8.1f} items/s  "
            f"speed-up {ratio:.2f} (goal {goal})"
        )
    peaks = {k: peak_bytes(lambda k=k: fns[k](), device) for k in ("ours_eval", "item_eval")}
    what = "peak allocated" if device == "cuda" else "peak RSS growth"
    print(
        f"  memory ({what}): ours {peaks['ours_eval'] / 2**20:.1f} MiB  "
        f"one-item {peaks['item_eval'] / 2**20:.1f} MiB  "
        f"ratio {peaks['ours_eval'] / max(peaks['item_eval'], 1):.3f} (goal <= 1.1)"
    )


if __name__ == "__main__":
    main()

"""Step-time and memory ratios of the LM unlearning methods, measured in one run (no timing is asserted).

On tofu-synthetic forget10 with the tiny Llama of the suite (random weights: a step's cost does not depend on
them), every variant takes AdamW steps on the same forget (and retain) batch; the variants run interleaved,
``--steps`` steps each per repeat, and the median step time over ``--repeats`` repeats is compared.

1. NPO with cached reference losses / GA, forget term only: goal <= 1.05 (the cache makes NPO's forget term
   one forward and backward, as GA's).
2. NPO with a live reference forward / cached NPO: what the cache saves. The live variant (a frozen copy of
   the model, run on every forget batch, as the reference projects do) exists only here, for comparison; its
   loss is checked against the cached one first.
3. SimNPO / GA, forget term only; then NPO and SimNPO / GradDiff with the retain NLL term (presets' setting).
   UNDIAL with its target cached (full vocabulary, or top-8) / GA (goal <= 1.05), and with a live reference
   forward; WGA, SatImp and CE-U / GA. IdkPO and AltPO (K = 5 alternates, 16 new tokens on this random
   model) / GA: a step scores 2 and K + 1 answers per question (no reference forward: cached), so the ratio
   per scored answer (ratio / rows) is the comparable one; it also moves with the answers' lengths (an
   "I don't know" is short, a random model's alternates run to the token limit).
4. Memory held while training: weights, gradients and optimizer state of the trained model, plus the frozen
   copy (live NPO) or the cached reference losses (cached NPO). Ratios cached NPO / GA (goal <= 1.05) and live
   / cached NPO. On CUDA also the measured peak allocation of each variant, run alone.
5. The TOFU evaluation's throughput (questions per second, generation included).

    python benchmarks/lm_methods.py [--steps 20] [--repeats 7] [--device cpu|cuda] [--hidden 64 --layers 2]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable

import torch

from unlearnkit.config import load_preset
from unlearnkit.experiment import build_method, make_setup
from unlearnkit.methods.base import Method, Task, frozen_copy
from unlearnkit.methods.graddiff import GradDiff
from unlearnkit.methods.npo import NPO, npo_loss

Step = Callable[[], None]


class LiveNPO(NPO):
    """NPO as the reference projects run it: a frozen copy of the model, run on every forget batch."""

    def prepare(self, task: Task) -> None:
        GradDiff.prepare(self, task)  # retain-side set-up only: no cached reference losses
        self.ref_model = frozen_copy(task.model)

    def forget_term(self, batch, ctx):
        nll = self.family.per_example_loss(self.model, batch)
        with torch.no_grad():
            ref = self.family.per_example_loss(self.ref_model, batch)
        return npo_loss(nll, ref, self.cfg.beta), {}


VARIANTS = {  # name: (method, extra config); "retain" = with the retain NLL term (weight 1)
    "ga": ("ga", {}),
    "npo": ("npo", {"retain_loss": "none"}),
    "npo_live": ("npo_live", {"retain_loss": "none"}),
    "simnpo": ("simnpo", {"retain_loss": "none"}),
    "graddiff+retain": ("graddiff", {}),
    "npo+retain": ("npo", {}),
    "simnpo+retain": ("simnpo", {}),
    "undial": ("undial", {"reference": "full"}),
    "undial_topk": ("undial", {"reference": "topk", "top_k": 8}),
    "undial_live": ("undial", {"reference": "frozen"}),
    "wga": ("wga", {"retain_loss": "none"}),
    "satimp": ("satimp", {"retain_loss": "none"}),
    "ceu": ("ceu", {}),
    "idkpo": ("idkpo", {"retain_loss": "none"}),
    "altpo": ("altpo", {"retain_loss": "none", "alternates": 5, "max_new_tokens": 16}),
}


def make_method(name: str, extra: dict) -> Method:
    if name == "npo_live":
        return LiveNPO(build_method({"name": "npo"} | extra, "text").cfg)
    return build_method({"name": name} | extra, "text")


def build(
    setup, init: dict, variant: str, batches: dict, device: str
) -> tuple[Method, torch.optim.Optimizer, Step]:
    """A fresh model (weights ``init``) and method for ``variant``, prepared, and its training step."""
    name, extra = VARIANTS[variant]
    model = setup.new_model().to(device)
    model.load_state_dict(init)
    method = make_method(name, extra)
    task = Task(setup.family, model, setup.split, setup.engine(), setup.seed)
    method.task = task
    method.prepare(task)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if name == "ga":
            loss = -method.mean_loss(batches["forget"])
        else:
            loss, _ = method.loss(batches)
        loss.backward()
        opt.step()

    return method, opt, step


def held_bytes(method: Method, opt: torch.optim.Optimizer) -> int:
    """Weights + gradients + optimizer state of the trained model, + frozen copies and reference caches."""

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    model = method.model
    total = size(model.parameters()) + size(model.buffers())
    total += size(p.grad for p in model.parameters() if p.grad is not None)
    total += size(v for state in opt.state.values() for v in state.values())
    for attr in ("ref_model", "target_model"):
        ref_model = getattr(method, attr, None)
        if ref_model is not None:
            total += size(ref_model.parameters()) + size(ref_model.buffers())
    caches = ("reference", "kl_cache", "target")
    for cache in (getattr(method, c, None) for c in caches):
        if cache is not None:
            total += cache.nbytes
    return total


def timed(step: Step, steps: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def cuda_peak(setup, init: dict, variant: str, batches: dict, steps: int) -> int:
    """Peak CUDA bytes allocated by one variant alone (model, method, steps) above what was already held."""
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _, _, step = build(setup, init, variant, batches, "cuda")
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del step
    gc.collect()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation-throughput measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_preset("suites/tofu-synthetic")
    cfg = {k: cfg[k] for k in ("family", "data", "split", "model", "train", "engine", "eval")}
    cfg["model"] = cfg["model"] | {"hidden": args.hidden, "layers": args.layers, "ffn": 4 * args.hidden}
    cfg["engine"] = cfg["engine"] | {"progress": False, "device": args.device, "batch_size": args.batch_size}
    setup = make_setup(cfg)
    init = setup.new_model().state_dict()
    dev = args.device
    batches = {
        s: {k: v[: args.batch_size].to(dev) for k, v in getattr(setup.split, s).all().items()}
        for s in ("forget", "retain")
    }

    built = {v: build(setup, init, v, batches, dev) for v in VARIANTS}
    with torch.no_grad():  # the live reference gives the cached reference's loss (same weights)
        cached, _ = built["npo"][0].forget_term(batches["forget"], None)
        live, _ = built["npo_live"][0].forget_term(batches["forget"], None)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        timed(built[v][2], 2, dev)  # warm-up
    for _ in range(args.repeats):
        for v in VARIANTS:
            times[v].append(timed(built[v][2], args.steps, dev))
    med = {v: statistics.median(t) for v, t in times.items()}
    mem = {v: held_bytes(m, opt) for v, (m, opt, _) in built.items()}

    n_params = sum(p.numel() for p in built["ga"][0].model.parameters())
    print(
        f"tofu-synthetic forget10, tiny-llama hidden={args.hidden} layers={args.layers} "
        f"({n_params / 1e6:.2f}M params), batch {args.batch_size}, device {dev}, threads {args.threads}, "
        f"{args.repeats} interleaved repeats x {args.steps} steps"
    )
    print(f"live vs cached NPO loss on the same batch: |diff| = {abs(float(live - cached)):.2e}")
    print("median step time (ms):  " + "  ".join(f"{v} {t * 1e3:.2f}" for v, t in med.items()))

    def ratio(label: str, a: float, b: float, goal: str = "") -> None:
        print(f"  {label:48s} {a / b:6.3f}  {goal}")

    print("step-time ratios")
    ratio("NPO (cached ref) / GA, forget term only", med["npo"], med["ga"], "(goal <= 1.05)")
    ratio("NPO (live ref forward) / NPO (cached ref)", med["npo_live"], med["npo"])
    ratio("SimNPO / GA, forget term only", med["simnpo"], med["ga"])
    ratio("NPO (cached) + retain NLL / GradDiff", med["npo+retain"], med["graddiff+retain"])
    ratio("SimNPO + retain NLL / GradDiff", med["simnpo+retain"], med["graddiff+retain"])
    ratio("UNDIAL (cached full target) / GA", med["undial"], med["ga"], "(goal <= 1.05)")
    ratio("UNDIAL (cached top-8 target) / GA", med["undial_topk"], med["ga"], "(goal <= 1.05)")
    ratio("UNDIAL (live ref forward) / UNDIAL (cached)", med["undial_live"], med["undial"])
    for v in ("wga", "satimp", "ceu"):
        ratio(f"{v} / GA, forget term only", med[v], med["ga"])
    for v, rows in (("idkpo", 2), ("altpo", 6)):
        ratio(f"{v} / GA ({rows} answers per question)", med[v], med["ga"])
        ratio(f"{v} / GA per scored answer", med[v] / rows, med["ga"])
    print("memory held while training (weights, grads, AdamW state, frozen copy / reference cache)")
    print("  bytes:  " + "  ".join(f"{v} {mem[v] / 1024:.1f} KiB" for v in ("ga", "npo", "npo_live")))
    ratio("NPO (cached ref) / GA", mem["npo"], mem["ga"], "(goal <= 1.05)")
    ratio("NPO (live ref) / NPO (cached ref)", mem["npo_live"], mem["npo"])
    print(
        "  bytes:  "
        + "  ".join(f"{v} {mem[v] / 1024:.1f} KiB" for v in ("undial", "undial_topk", "undial_live"))
    )
    ratio("UNDIAL (cached full target) / GA", mem["undial"], mem["ga"])
    ratio("UNDIAL (cached top-8 target) / GA", mem["undial_topk"], mem["ga"])
    if dev == "cuda":
        del built
        peak = {v: cuda_peak(setup, init, v, batches, 3) for v in ("ga", "npo", "npo_live")}
        print("measured CUDA peak allocation (one variant alone, 3 steps)")
        print("  bytes:  " + "  ".join(f"{v} {peak[v] / 2**20:.2f} MiB" for v in peak))
        ratio("NPO (cached ref) / GA", peak["npo"], peak["ga"], "(goal <= 1.05)")
        ratio("NPO (live ref) / NPO (cached ref)", peak["npo_live"], peak["npo"])
    else:
        print(
            "  (no measured peak on CPU: PyTorch's CPU allocator keeps no peak statistics; use --device cuda)"
        )
    if not args.no_eval:
        evaluation_throughput(setup, init, dev)


def evaluation_throughput(setup, init: dict, device: str) -> None:
    """TOFU evaluation of one model (generation + scoring of every split), in questions per second."""
    model = setup.new_model().to(device)
    model.load_state_dict(copy.deepcopy(init))
    records = setup.data.meta["eval"]
    n = sum(len(v) for v in records.values() if isinstance(v, list))
    t0 = time.perf_counter()
    setup.protocol.evaluate(setup, model)
    sec = time.perf_counter() - t0
    print(f"TOFU evaluation: {n} questions in {sec:.2f} s = {n / sec:.1f} questions/s (random weights)")


if __name__ == "__main__":
    main()

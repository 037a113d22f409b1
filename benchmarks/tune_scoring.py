"""What one scoring of a ``tune`` trial costs at a real dataset's size: the membership attack's shadow
sets whole (the reported protocol) and capped at ``max_shadow`` (tune's default, 5,000).

CIFAR-10's sizes by default: 50,000 training examples (random 10% forgotten: 5,000 forget, 45,000
retain), 10,000 test examples, 10 classes. The data is a noisy random teacher (256 features) and the
model a small MLP trained on it until it fits its training set better than the test set, so that, as
with a real model, the attack has something to find. Its SVC is fit on min(|retain|, |test|) members and
the test set as non-members, a fit that grows about quadratically with them; the forward passes (cheap
for this MLP; for a ResNet on a GPU, seconds) are the same both ways. A trial's scoring
(``targets=False``) happens after every epoch of every run; the original's (with the held-out verdict,
two more fits on half the test set each) once per tuning.

Printed, per scoring: seconds with the whole shadow sets, seconds capped, their ratio (median of
``--repeats``, measured in this one process), and the signals both ways. Last, what ``tune --out`` adds
once per tuning to be resumable: the fingerprint (``tuning_store``) of ``resnet18`` and a split of
CIFAR-10's shape (3×32×32 float images), over the capped trial scoring.

    python benchmarks/tune_scoring.py [--train 50000] [--test 10000] [--max-shadow 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=50000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--max-shadow", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.splits import random_split
    from unlearnkit.tuning import signals

    g = torch.Generator().manual_seed(0)
    k, d = 10, 256
    teacher = torch.randn(d, k, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=g)
        return x, (x @ teacher + 6.0 * torch.randn(n, k, generator=g)).argmax(1)

    (x, y), (xt, yt) = draw(args.train), draw(args.test)
    split = random_split(ExampleSet({"x": x, "y": y}), ExampleSet({"x": xt, "y": yt}), 0.1, 0)
    model = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, k))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(8):  # until it fits its training set better than unseen data
        for i in torch.randperm(args.train, generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    model.eval()
    print(
        f"forget {len(split.forget)}, retain {len(split.retain)}, test {len(split.test)}; "
        f"shadow sets capped at {args.max_shadow}"
    )

    def timed(targets: bool, cap: int | None) -> tuple[float, dict[str, float]]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = signals(model, split, k, 0, targets, cap)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    print(f"{'scoring':<24} {'whole':>8} {'capped':>8} {'ratio':>7}")
    shown = ("UA", "RA", "TA", "MIA", "MIA_heldout")
    for label, targets in (("a trial (each epoch)", False), ("the original (once)", True)):
        (whole, s_whole), (part, s_cut) = timed(targets, None), timed(targets, args.max_shadow)
        print(f"{label:<24} {whole:7.2f}s {part:7.2f}s {whole / part:6.1f}x")
        for name, sig in (("whole", s_whole), ("capped", s_cut)):
            print(f"   {name + ':':<8} " + ", ".join(f"{key} {sig[key]:.1f}" for key in shown if key in sig))
        if not targets:
            trial = part
    fp = _fingerprint(args)
    print(
        f"resume fingerprint (once per tuning; CIFAR-10's shape, resnet18): {fp:.2f}s, "
        f"{fp / trial:.2f}x a capped trial"
    )


def _fingerprint(args) -> float:
    """Seconds to fingerprint ``resnet18`` and a random split of CIFAR-10's shape (median of repeats)."""
    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.splits import random_split
    from unlearnkit.registry import get_model
    from unlearnkit.tuning_store import fingerprint

    g = torch.Generator().manual_seed(1)
    images = torch.rand(args.train, 3, 32, 32, generator=g)
    split = random_split(
        ExampleSet({"x": images, "y": torch.randint(10, (args.train,), generator=g)}),
        ExampleSet({"x": images[: args.test].clone(), "y": torch.randint(10, (args.test,), generator=g)}),
        0.1,
        0,
    )
    model = get_model("resnet18")((3, 32, 32), 10)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fingerprint(model, split, 10, seed=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()

"""Validate ``unlearnkit.tune`` where the oracle is known: Avg. Gap to retraining with the paper defaults,
with the digits presets, and with the options ``tune`` picks without the oracle (random 10% forgetting).

Worlds (all offline): ``digits`` (scikit-learn digits, the MLP the presets were tuned on), ``tabular``
(scikit-learn ``make_classification``, standardised features, an MLP; never used for tuning),
``signals`` (noisy sine classes, a 1-D CNN with BatchNorm; never used for tuning), ``gratings`` (noisy
oriented gratings, the 2-D ``cnn``; added after the calibration's design was fixed), and
``gratings-resnet`` (the same data, ``resnet-tiny``: a ResNet with BatchNorm; not in the default list).
For each seed the original and the oracle (retrained on the retain set) are trained with the same recipe
and initialisation. A generated world's data are one fixed draw for all seeds, or with ``--fresh-data`` a
new draw per seed, so that the chance difference between a fixed test set and the training pool averages
out over seeds (``heldout_offset.py`` measures it per draw). With ``--classwise`` each seed forgets one whole
class (class = seed mod K; TA on the other classes, the SalUn protocol), the preset column takes the
``vision-digits-class`` suite's options, and tune scores trials by the class-wise signals. With ``--heldout
half`` tune scores against a random half of the test set (``tune(heldout=...)``, a validation split) and every
metric is reported on the other half; ``--heldout same-half`` is its control (the same sizes, tuned on the
reporting half itself, as the default tunes on the whole test set it reports on).

    python benchmarks/tune_validate.py [--worlds digits,tabular,signals] [--seeds 3] [--first-seed 0]
                                       [--methods ga,rl] [--fresh-data] [--classwise]
                                       [--heldout test|half|same-half]
                                       [--out tune-validate.json]

Prints one Markdown table per world: mean ± std of the Avg. Gap over seeds, per method and setting, and
tune − default paired by seed; under it the oracle's forget accuracy minus its test accuracy, which the
calibration assumes to be zero. ``--table A.json B.json`` re-prints the tables of saved runs (e.g. seeds
run in parts with ``--first-seed``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

METHODS = ["ga", "ft", "rl", "salun", "l1_sparse", "scrub", "boundary_shrink", "boundary_expand", "iu"]
RECIPE = {"epochs": 50, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64}


def world(
    name: str, seed: int, fresh: bool = False
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(model builder, x_train, y_train, x_test, y_test, K). The generated worlds draw their data from a
    fixed generator seed, or, with ``fresh``, anew for each ``seed`` (digits is one dataset either way)."""

    def draw(base: int) -> int:
        return base + 1000 * (seed + 1) if fresh else base

    from unlearnkit.registry import get_model

    if name == "digits":
        from unlearnkit.data.digits import load_digits

        d = load_digits()
        tr, te = d.train.columns, d.test.columns
        return (lambda: get_model("mlp")((1, 8, 8), 10)), tr["x"], tr["y"], te["x"], te["y"], 10
    if name == "tabular":
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=2500,
            n_features=20,
            n_informative=8,
            n_redundant=4,
            n_classes=5,
            flip_y=0.03,
            class_sep=1.2,
            random_state=draw(7),
        )
        x = (x - x[:2000].mean(0)) / x[:2000].std(0)
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        return (lambda: get_model("mlp")((20,), 5)), x[:2000], y[:2000], x[2000:], y[2000:], 5
    if name == "signals":
        g = torch.Generator().manual_seed(draw(11))
        k, n = 6, 1500
        y = torch.arange(n) % k
        t = torch.linspace(0, 1, 64)
        phase = torch.rand(n, 1, generator=g) * 6.28
        x = torch.sin(6.28 * (2 + 1.5 * y[:, None]) * t + phase) + 1.6 * torch.randn(n, 64, generator=g)
        x = x.unsqueeze(1)  # noisy enough that the CNN fits its training set better than unseen data
        return (lambda: SignalCNN(k)), x[:1000], y[:1000], x[1000:], y[1000:], k
    if name == "gratings-resnet":  # the same data, a ResNet with BatchNorm (the SalUn paper's family)
        _, x, y, xt, yt, k = world("gratings", seed, fresh)
        return (lambda: get_model("resnet-tiny")((1, 12, 12), k)), x, y, xt, yt, k
    if name == "gratings":  # the held-out world: added after the calibration's design was fixed
        g = torch.Generator().manual_seed(draw(23))
        k, n, side = 5, 1500, 12
        y = torch.arange(n) % k
        angle = torch.pi * y / k + 0.15 * torch.randn(n, generator=g)
        freq = 0.9 + 0.3 * torch.rand(n, generator=g)
        phase = torch.rand(n, generator=g) * 6.28
        r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        proj = torch.cos(angle)[:, None, None] * c + torch.sin(angle)[:, None, None] * r
        x = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
        x = (x + 1.5 * torch.randn(n, side, side, generator=g)).unsqueeze(1)
        build = lambda: get_model("cnn")((1, side, side), k, width=8)  # noqa: E731
        return build, x[:1000], y[:1000], x[1000:], y[1000:], k
    raise SystemExit(f"unknown world {name!r}: use digits, tabular, signals, gratings or gratings-resnet")


class SignalCNN(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.fc = nn.Linear(32, k)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def train(build, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The recipe of the original and of the oracle: SGD with momentum, cosine schedule."""
    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.SGD(
        model.parameters(), RECIPE["lr"], momentum=RECIPE["momentum"], weight_decay=RECIPE["weight_decay"]
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, RECIPE["epochs"])
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(RECIPE["epochs"]):
        for idx in torch.randperm(len(y), generator=g).split(RECIPE["batch_size"]):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    if (
        len(sys.argv) > 2 and sys.argv[1] == "--table"
    ):  # re-print the tables of saved runs: --table A.json B.json
        rows = [r for f in sys.argv[2:] for r in json.loads(Path(f).read_text())]
        # runs of other methods on the same seeds repeat the "none" row: keep one per seed
        keys = [
            (
                r["world"],
                r["seed"],
                r.get("protocol"),
                r.get("fresh_data"),
                r.get("heldout"),
                r["method"],
                r["setting"],
            )
            for r in rows
        ]
        rows = list({k: r for k, r in reversed(list(zip(keys, rows, strict=True)))}.values())[::-1]
        present = {r["method"] for r in rows}
        table(rows, [m for m in METHODS if m in present])
        mia_flips(rows)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="digits,tabular,signals,gratings")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="tune-validate.json")
    ap.add_argument(
        "--fresh-data",
        action="store_true",
        help="draw a generated world's data anew for each seed (default: one fixed draw for all seeds)",
    )
    ap.add_argument(
        "--classwise", action="store_true", help="forget class seed mod K instead of a random 10%%"
    )
    ap.add_argument(
        "--heldout",
        choices=["test", "half", "same-half"],
        default="test",
        help="what tune scores against: the test set (default); 'half': a random half of it (a validation "
        "split), every metric reported on the other half; 'same-half': the reporting half itself (the "
        "control: the same sizes, tuned on the examples it is scored on)",
    )
    ap.add_argument(
        "--end-only",
        action="store_true",
        help="also tune with every_epoch=False (runs scored only at their end; setting 'tune_end')",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    from unlearnkit.calibration import tune_split
    from unlearnkit.config import load_preset
    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.splits import class_split, random_split
    from unlearnkit.engine.loop import Engine, EngineConfig
    from unlearnkit.experiment import build_method
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.methods.base import Task
    from unlearnkit.metrics.vision import avg_gap, evaluate_classifier

    methods = args.methods.split(",")
    class_presets = load_preset("suites/vision-digits-class")["methods"]
    rows: list[dict[str, Any]] = []
    for wname in args.worlds.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            build, x, y, xt, yt, k = world(wname, seed, args.fresh_data)
            train_set, test_set = ExampleSet({"x": x, "y": y}), ExampleSet({"x": xt, "y": yt})
            val_set = test_set
            if args.heldout != "test":  # a validation half for tune, the other half for every metric
                perm = torch.as_tensor(np.random.RandomState(10_000 + seed).permutation(len(yt)))
                val_set = ExampleSet({"x": xt[perm[: len(yt) // 2]], "y": yt[perm[: len(yt) // 2]]})
                test_set = ExampleSet({"x": xt[perm[len(yt) // 2 :]], "y": yt[perm[len(yt) // 2 :]]})
                if args.heldout == "same-half":
                    val_set = test_set
            if args.classwise:
                split, scored = (
                    class_split(train_set, test_set, seed % k),
                    class_split(train_set, val_set, seed % k),
                )
            else:
                split, scored = (
                    random_split(train_set, test_set, 0.1, seed),
                    random_split(train_set, val_set, 0.1, seed),
                )
            fam = VisionFamily(num_classes=k)
            original = train(build, split.train.columns["x"], split.train.columns["y"], seed)
            oracle_m = train(build, split.retain.columns["x"], split.retain.columns["y"], seed)
            oracle = evaluate_classifier(oracle_m, split, fam)
            base = evaluate_classifier(original, split, fam)
            rows.append(
                {
                    "world": wname,
                    "seed": seed,
                    "fresh_data": args.fresh_data,
                    "heldout": args.heldout,
                    "protocol": split.kind,
                    "method": "none",
                    "setting": "-",
                    "gap": avg_gap(base, oracle),
                    "metrics": base,
                    "oracle": oracle,
                }
            )
            for m in methods:
                settings = {
                    "default": {"name": m},
                    "preset": load_preset(f"vision/{m}")["method"]
                    | (class_presets.get(m, {}) if args.classwise else {}),
                }
                tunings = {}
                for setting, every in [("tune", True)] + [("tune_end", False)] * args.end_only:
                    t0 = time.perf_counter()
                    tuned = tune_split(
                        original, {"name": m}, scored, k, {"batch_size": 64}, seed, every_epoch=every
                    )
                    settings[setting] = {"name": m} | tuned.best
                    tunings[setting] = (tuned, time.perf_counter() - t0)
                for setting, spec in settings.items():
                    work = copy.deepcopy(original)
                    eng = Engine(EngineConfig(progress=False, batch_size=64, seed=seed), None)
                    task = Task(VisionFamily(num_classes=k), work, split, eng, seed)
                    try:
                        build_method(spec).run(task)
                        met = evaluate_classifier(task.model, split, fam)
                        gap = avg_gap(met, oracle)
                    except Exception as exc:  # a diverged setting is a result too
                        met, gap = {"error": str(exc).splitlines()[0]}, float("nan")
                    tuned, tune_s = tunings.get(setting, (None, None))
                    rows.append(
                        {
                            "world": wname,
                            "seed": seed,
                            "fresh_data": args.fresh_data,
                            "heldout": args.heldout,
                            "protocol": split.kind,
                            "method": m,
                            "setting": setting,
                            "spec": spec,
                            "gap": gap,
                            "metrics": met,
                            "tune_seconds": tune_s,
                            "trials": [t.__dict__ for t in tuned.trials] if tuned else None,
                            "tune_original": tuned.original if tuned else None,
                        }
                    )
                done = rows[-len(settings) :]
                print(wname, seed, m, {r["setting"]: round(r["gap"], 2) for r in done}, flush=True)
            Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    table(rows, methods)
    mia_flips(rows)
    if args.end_only:
        cost_ratio(rows, methods)


def cost_ratio(rows: list[dict[str, Any]], methods: list[str]) -> None:
    """tune's wall time scored every epoch over scored at the end of each run, median per method (the two
    tunings of a seed run back to back in this process)."""
    secs: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r.get("tune_seconds"):
            secs.setdefault((r["world"], r["seed"], r["method"]), {})[r["setting"]] = r["tune_seconds"]
    print("\ntune time, every epoch scored / end only (median over worlds and seeds):")
    for m in methods:
        ratios = [d["tune"] / d["tune_end"] for k, d in secs.items() if k[2] == m and len(d) == 2]
        if ratios:
            print(f"  {m}: {statistics.median(ratios):.2f}")


def table(rows: list[dict[str, Any]], methods: list[str]) -> None:
    """Per world: mean ± std over seeds of each setting, and tune − default paired by seed (mean ± standard
    error: the seeds share the original, the oracle and the forget set, so the pairs carry less noise)."""
    for wname in dict.fromkeys(r["world"] for r in rows):
        print(f"\n### {wname} (Avg. Gap to retrain, mean ± std over seeds; lower is better)\n")
        print("| method | paper default | digits preset | tune | tune − default (± s.e.) |")
        print("|---|---|---|---|---|")
        none = [r["gap"] for r in rows if r["world"] == wname and r["method"] == "none"]
        print(f"| (no unlearning) | {fmt(none)} | | | |")
        wins = 0
        for m in methods:
            gap = {
                setting: {
                    r["seed"]: r["gap"]
                    for r in rows
                    if (r["world"], r["method"], r["setting"]) == (wname, m, setting)
                }
                for setting in ("default", "preset", "tune")
            }
            cells = [fmt(list(gap[setting].values())) for setting in ("default", "preset", "tune")]
            diff = [gap["tune"][s] - gap["default"][s] for s in gap["tune"] if s in gap["default"]]
            diff = [d for d in diff if not np.isnan(d)]
            se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
            cells.append(f"{statistics.mean(diff):+.2f} ± {se:.2f}" if diff else "")
            wins += bool(diff) and statistics.mean(diff) < 0
            print(f"| {m} | " + " | ".join(cells) + " |")
        print(f"\ntune below the paper default for {wins} of {len(methods)} methods")
        nones = [r for r in rows if r["world"] == wname and r["method"] == "none"]
        if nones and nones[0].get("protocol") == "class":  # tune aims at accuracy 0 and MIA 100
            fa = [100.0 - r["oracle"]["UA"] for r in nones]
            mia = [r["oracle"]["MIA"] for r in nones]
            print(
                f"\noracle's accuracy on the forgotten class: {fmt(fa)}, its MIA-Efficacy {fmt(mia)}; "
                "tune aims at 0 and 100"
            )
            continue
        # the calibration's premise: to the retrained model the forget set looks like the test set
        off = [
            (100.0 - r["oracle"]["UA"]) - r["oracle"]["TA"]
            for r in rows
            if r["world"] == wname and r["method"] == "none"
        ]
        se = statistics.stdev(off) / len(off) ** 0.5 if len(off) > 1 else 0.0
        print(
            f"\noracle's forget accuracy − its test accuracy: {statistics.mean(off):+.2f} ± {se:.2f} (s.e.);"
            " tune aims at 0"
        )


def mia_flips(rows: list[dict[str, Any]]) -> None:
    """With ``--heldout half``: the tunings whose reported MIA is 50 points or more below what the trials'
    attack (fit on the validation half) said of the same state, and their share of tune's mean gap (a
    flip of the MIA term moves the Avg. Gap by a quarter of it)."""
    tuned = [r for r in rows if r["setting"] == "tune" and r.get("trials") and "MIA" in r["metrics"]]
    if not tuned or tuned[0].get("heldout") not in ("half", True):  # True: the first runs of --heldout half
        return
    drops = []
    for r in tuned:
        opts = {key: v for key, v in r["spec"].items() if key != "name"}
        chosen = [t for t in r["trials"] if t["options"] == opts]
        if chosen:  # the state the reported run reproduces
            drops.append(chosen[-1]["signals"]["MIA"] - r["metrics"]["MIA"])
    flips = [d for d in drops if d >= 50]
    print(
        f"\nreported MIA 50+ points below the trials' verdict on the same state: {len(flips)} of "
        f"{len(drops)} tunings, {sum(flips) / 4 / len(drops):.2f} of tune's mean gap "
        f"{statistics.mean(r['gap'] for r in tuned):.2f}"
    )


def fmt(values: list[float]) -> str:
    ok = [v for v in values if not np.isnan(v)]
    if not ok:
        return "diverged"
    sd = statistics.stdev(ok) if len(ok) > 1 else 0.0
    bad = len(values) - len(ok)
    return f"{statistics.mean(ok):.2f} ± {sd:.2f}" + (f" ({bad} NaN)" if bad else "")


if __name__ == "__main__":
    main()

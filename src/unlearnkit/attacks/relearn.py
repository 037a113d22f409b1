"""Relearning attack: fine-tune a copy of the unlearned model on a small random part of the forget set.

If a few steps of plain fine-tuning on some forget examples bring the forgotten knowledge back (on the
whole forget set), the unlearning only hid it. Evaluate the forget metrics before and after (``*_relearned``).

Defaults follow the SimNPO group's relearning code (llm.md §2, "Relearning attack"): AdamW, lr 1e-5, no
weight decay, batch 4, constant rate; WMDP ``Relearn+Forget`` draws ``steps × batch`` random forget
examples, Unlearn-Smooth's MUSE script runs 50–150 steps. Those are 7B settings: tiny demo models need a far
larger ``lr`` (1e-3 to 1e-2) to move in 10 steps, so benchmarks pass ``lr`` / ``steps`` explicitly.
The subset is ``count`` examples, or ``fraction`` of the forget set (default 10%); the copy takes exactly
``steps`` optimizer steps of ``batch_size`` examples, cycling through the subset in seeded random order.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.data.examples import ExampleSet
from unlearnkit.engine.loop import Engine, EngineConfig, Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family, Task


@dataclass
class RelearnOptions:
    """``attack.relearn``: :func:`relearn`'s options, as a config section."""

    fraction: float | None = None
    count: int | None = None
    steps: int = 10
    lr: float = 1e-5
    batch_size: int = 4
    seed: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"attack.relearn needs steps and batch_size >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.count is not None and self.fraction is not None:
            raise ConfigError("attack.relearn: pass either fraction or count, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"attack.relearn.fraction must lie in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"attack.relearn.count must be >= 1, got {self.count}")
        OptimSpec(epochs=1, lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay).check()


def check_attack(section: Any) -> dict[str, Any] | None:
    """An ``attack:`` section (``{relearn: {steps: 10, lr: 1e-3, ...}}``) validated before any training and
    returned with its values typed (``lr=1e-3`` from the command line is a string to YAML): the only
    attack is ``relearn``, with :func:`relearn`'s options in range. (A typo used to end in a TypeError after
    every row had been trained.)"""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"attack must be a mapping like {{relearn: {{steps: 10}}}}, got {section!r}")
    unknown = [k for k in section if k != "relearn"]
    if unknown:
        raise ConfigError(f"unknown attack {unknown[0]!r}: the attack is relearn (attack.relearn.steps=10)")
    spec = section.get("relearn")
    if spec is None:
        return dict(section)
    if not isinstance(spec, dict):
        raise ConfigError(f"attack.relearn must be a mapping of options, got {spec!r}")
    opts = build_dataclass(RelearnOptions, spec, "attack.relearn")
    return {"relearn": {k: getattr(opts, k) for k in spec}}


def relearn_subset(
    forget: ExampleSet, fraction: float | None = None, count: int | None = None, seed: int = 0
) -> ExampleSet:
    """A seeded random subset of ``forget``: ``count`` examples, or ``round(fraction·N)`` (at least 1)."""
    n = len(forget)
    if n == 0:
        raise ConfigError("cannot relearn from an empty forget set")
    if count is None:
        fraction = 0.1 if fraction is None else fraction
        if not 0 < fraction <= 1:
            raise ConfigError(f"relearn fraction must lie in (0, 1], got {fraction}")
        count = max(1, round(fraction * n))
    elif fraction is not None:
        raise ConfigError("pass either a relearn fraction or a count, not both")
    if not 1 <= count <= n:
        raise ConfigError(f"relearn count must lie in 1..{n} (the forget set's size), got {count}")
    g = torch.Generator().manual_seed(seed)
    return forget.take(torch.randperm(n, generator=g)[:count])


def _stream(subset: ExampleSet, rows: int, seed: int) -> ExampleSet:
    """``rows`` rows cycling through seeded permutations of ``subset`` (fresh ids: rows repeat)."""
    g = torch.Generator().manual_seed(seed + 1)
    reps = math.ceil(rows / len(subset))
    order = torch.cat([torch.randperm(len(subset), generator=g) for _ in range(reps)])[:rows]
    cols = {k: v[order] for k, v in subset.columns.items()}
    return ExampleSet(cols, None, subset.transform, subset.meta)


def relearn(
    target: Task | nn.Module,
    forget: ExampleSet | None = None,
    family: Family | None = None,
    *,
    fraction: float | None = None,
    count: int | None = None,
    steps: int = 10,
    lr: float = 1e-5,
    batch_size: int = 4,
    seed: int = 0,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    engine: Engine | None = None,
) -> nn.Module:
    """Fine-tune a **copy** of the model on a random part of the forget set; return the copy.

    ``target`` is a :class:`Task` (its model, forget split, family and engine settings are used unless
    given) or a model, then with ``forget`` and ``family``. The loss is the family's plain ``mean_loss``
    (token-mean NLL for an LM, cross-entropy for a classifier). The input model is never modified.
    """
    if isinstance(target, Task):
        model = target.model
        forget = forget if forget is not None else target.split.forget
        family = family if family is not None else target.family
        engine = engine if engine is not None else target.engine
    else:
        model = target
    if forget is None or family is None:
        raise ConfigError("relearn(model, ...) needs the forget set and the family (or pass a Task)")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"relearn needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    subset = relearn_subset(forget, fraction, count, seed)
    stream = _stream(subset, steps * batch_size, seed)
    # a private engine: accelerate's Accelerator keeps a reference to every model and optimizer it
    # prepared, so fitting on the caller's engine would keep the relearned copy alive with it
    engine = Engine(replace(engine.cfg) if engine is not None else EngineConfig(progress=False))
    copy_ = copy.deepcopy(model)
    spec = OptimSpec(epochs=1, lr=lr, optimizer=optimizer, weight_decay=weight_decay)

    def loss(b, ctx):
        return family.mean_loss(copy_, b["relearn"]), {}

    engine.fit(
        copy_,
        {"relearn": stream},
        lambda epoch: [Phase("relearn", ("relearn",), loss)],
        spec,
        batch_sizes={"relearn": batch_size},
        desc="relearn",
        seed=seed,
    )
    return copy_

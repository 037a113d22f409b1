"""The only training loop in unlearnkit, built on ``accelerate``.

It trains original models, retrained oracles and every unlearning method. A method describes an
epoch as a list of :class:`Phase` objects: which data streams a step draws from (``forget``,
``retain``, ``train``, ...), which stream sets the phase's length (the others cycle), and the loss of
one step. The engine does the rest: device placement, optimizer and schedule, weight masks
(``WeightMask``, restored after every step), gradient clipping, a NaN/inf guard, per-step logs,
progress, and checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.masks import WeightMask
from unlearnkit.engine.optim import OptimSpec, build_optimizer, build_scheduler
from unlearnkit.errors import ConfigError, UnlearnkitError

LossFn = Callable[[dict[str, Batch], "StepContext"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class EngineConfig:
    batch_size: int = 64
    eval_batch_size: int = 512
    threads: int | None = None  # None: leave torch's setting; presets use 1 (fastest on a busy 2-core box)
    device: str = "auto"
    progress: bool = True
    log_every: int = 1
    checkpoint_every: int = 0
    seed: int = 0
    nan_guard: bool = True

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"engine.batch_size must be >= 1, got {self.batch_size}")
        if self.log_every < 1:
            raise ConfigError(f"engine.log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"engine.checkpoint_every must be >= 0 (0 = off), got {self.checkpoint_every}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"engine.device must be auto, cpu, cuda or mps, got {self.device!r}")


@dataclass
class StepContext:
    epoch: int
    epochs: int
    step: int
    phase: str
    generator: torch.Generator


@dataclass
class Phase:
    """One pass of an epoch: ``loss`` gets a batch from each of ``streams``; ``driver`` sets the length."""

    name: str
    streams: tuple[str, ...]
    loss: LossFn
    driver: str | None = None

    @property
    def length_stream(self) -> str:
        return self.driver or self.streams[0]


class DivergenceError(UnlearnkitError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    def __init__(self, cfg: EngineConfig | None = None, run_dir: str | Path | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self.cfg.check()
        self.run_dir = Path(run_dir) if run_dir else None
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self._accelerator = None

    @property
    def accelerator(self):
        if self._accelerator is None:
            from accelerate import Accelerator

            cpu = self.cfg.device == "cpu" or (self.cfg.device == "auto" and not torch.cuda.is_available())
            self._accelerator = Accelerator(cpu=cpu)
        return self._accelerator

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def fit(
        self,
        model: nn.Module,
        sets: dict[str, ExampleSet],
        phases: Callable[[int], list[Phase]],
        optim: OptimSpec,
        mask: WeightMask | None = None,
        batch_sizes: dict[str, int] | None = None,
        desc: str = "train",
        params: list[nn.Parameter] | None = None,
        seed: int | None = None,
    ) -> FitResult:
        """Run ``optim.epochs`` epochs of ``phases(epoch)`` on ``model`` in place."""
        acc = self.accelerator
        seed = self.cfg.seed if seed is None else seed
        model.to(self.device)
        optimizer = build_optimizer(params if params is not None else model.parameters(), optim)
        scheduler = build_scheduler(optimizer, optim)
        model, optimizer = acc.prepare(model, optimizer)
        loaders = {}
        for i, (name, data) in enumerate(sets.items()):
            if len(data) == 0:
                raise UnlearnkitError(f"the {name} set is empty; nothing to train on")
            bs = (batch_sizes or {}).get(name, self.cfg.batch_size)
            loaders[name] = acc.prepare_data_loader(data.loader(bs, shuffle=True, seed=seed * 1000 + i))
        if mask is not None:
            mask.attach(acc.unwrap_model(model))
        gen = torch.Generator().manual_seed(seed)
        epoch_phases = [phases(e) for e in range(optim.epochs)]
        for ph_list in epoch_phases:
            for ph in ph_list:
                missing = [s for s in ph.streams if s not in loaders]
                if missing:
                    raise ConfigError(
                        f"phase {ph.name!r} needs data streams {missing}; given {list(loaders)}"
                    )
        total = sum(len(loaders[ph.length_stream]) for pl in epoch_phases for ph in pl)
        result = FitResult()
        log_file = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.run_dir / f"log-{desc}.jsonl", "w")  # noqa: SIM115
        bar = _progress(total, desc, self.cfg.progress)
        iters: dict[str, Iterator] = {}
        t0 = time.perf_counter()
        step = 0
        model.train()
        try:
            for epoch, ph_list in enumerate(epoch_phases):
                for ph in ph_list:
                    others = [s for s in ph.streams if s != ph.length_stream]
                    for batch in loaders[ph.length_stream]:
                        batches = {ph.length_stream: batch}
                        for s in others:
                            batches[s] = _next_cycled(iters, loaders, s)
                        ctx = StepContext(epoch, optim.epochs, step, ph.name, gen)
                        loss, logs = ph.loss(batches, ctx)
                        if self.cfg.nan_guard and not torch.isfinite(loss.detach()):
                            raise DivergenceError(
                                f"the {desc} loss became {loss.item()} at epoch {epoch}, step {step} "
                                f"(phase {ph.name!r}); lower the learning rate (method.lr, now {optim.lr}) "
                                "or the number of epochs"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        acc.backward(loss)
                        if mask is not None:
                            mask.mask_gradients()
                        if optim.max_grad_norm:
                            acc.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                        optimizer.step()
                        if mask is not None:
                            mask.restore(
                                optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
                            )
                        if step % self.cfg.log_every == 0:
                            rec = {
                                "epoch": epoch,
                                "step": step,
                                "phase": ph.name,
                                "loss": float(loss.detach()),
                            }
                            rec |= logs
                            result.history.append(rec)
                            if log_file:
                                log_file.write(json.dumps(rec) + "\n")
                        step += 1
                        bar.update(1)
                scheduler.step()
                if (
                    self.cfg.checkpoint_every
                    and self.run_dir
                    and (epoch + 1) % self.cfg.checkpoint_every == 0
                ):
                    from unlearnkit.io import save_weights

                    save_weights(acc.unwrap_model(model), self.run_dir / f"checkpoint-{desc}.safetensors")
        finally:
            bar.close()
            if log_file:
                log_file.close()
        result.steps = step
        result.seconds = time.perf_counter() - t0
        model.eval()
        # accelerate keeps every prepared model and optimizer alive; let this run's go.
        acc._models.clear()
        acc._optimizers.clear()
        acc._dataloaders.clear()
        return result


def _next_cycled(iters: dict[str, Iterator], loaders: dict, name: str) -> Batch:
    it = iters.get(name)
    if it is not None:
        try:
            return next(it)
        except StopIteration:
            pass
    iters[name] = iter(loaders[name])
    return next(iters[name])


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, mininterval=0.5)

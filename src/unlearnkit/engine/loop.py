"""The only training loop in unlearnkit, built on ``accelerate``.

It trains original models, retrained oracles and every unlearning method. A method describes an
epoch as a list of :class:`Phase` objects: which data streams a step draws from (``forget``,
``retain``, ``train``, ...), which stream sets the phase's length (the others cycle), and the loss of
one step. The engine does the rest: device placement, optimizer and schedule, weight masks
(``WeightMask``, restored after every step), gradient clipping, a divergence guard (NaN/inf loss, or a
loss past ``divergence_bound``), a collapse guard (a loss far outside the run's own range, see
:mod:`unlearnkit.engine.collapse`), mixed precision and gradient accumulation (see
:mod:`unlearnkit.engine.precision`), per-step logs, progress, checkpoints and resume.

Gradient accumulation (``engine.grad_accum=N``): one optimizer step takes N micro-batches, each drawn as
a step without accumulation draws its batch (a batch from the phase's driver stream and one from each
other stream it names, e.g. forget *and* retain), so an optimizer step sees N × ``batch_size`` examples of
every stream. Each micro-batch's loss is back-propagated divided by N (accelerate's ``accumulate`` and
``backward``), so the gradient is the mean of the micro-batch gradients: the gradient of one batch N times
larger for a loss that is a mean over the examples of each stream (GA, GradDiff, NPO, SimNPO; not exactly
for terms normalised per batch, e.g. a token-mean over the batch's answer tokens when answers differ in
length). A phase's last group may be shorter (k < N micro-batches); it is divided by k instead. Groups
never span two phases. ``step`` in logs, ``checkpoint_steps`` and the progress bar count optimizer steps;
the divergence and collapse guards check every micro-batch; a logged step record holds the mean of its
micro-batches' values. Checkpoints are written between groups only, so a resumed run is bit-identical to
an uninterrupted one with accumulation too.

Several processes (``accelerate launch`` / ``torchrun``): the run is data-parallel. Every rank holds the
whole model and draws ``batch_size`` examples per step from its shard of each stream (accelerate hands
rank ``r`` of ``N`` the batches ``r, r + N, r + 2N, ...`` of the shuffled order a single process would
use), so one step sees a global batch of ``N × batch_size`` examples: the same examples, in the same
order, as one process with batch size ``N × batch_size`` (exactly so when the set size is a multiple of
``N × batch_size``; otherwise the last step is filled with examples from the start of the order).
Methods call their model directly rather than through a ``DistributedDataParallel`` wrapper, whose
gradient hooks would then never fire; so the engine does not wrap it, and averages every gradient across
ranks itself (one all-reduce per bucket, after backward and before masking and clipping). Parameters
start equal (broadcast from rank 0) and stay equal; normalisation buffers (BatchNorm running statistics)
are broadcast from rank 0 after each step, as DDP does. Logged losses are averaged over ranks, so the
divergence guard decides the same on every rank; only the main process writes logs and checkpoints.
Under DeepSpeed and FSDP (version 2, which shards the model in place) the framework reduces gradients
itself; weight masks are refused there (they need whole parameters on every rank), and so are checkpoints
under DeepSpeed (under FSDP, weights and optimizer state are gathered whole into them). FSDP version 2
comes either from accelerate's FSDP config (GPUs) or from ``engine.fsdp`` (any launcher with several
processes, the CPU with gloo included): then the engine itself applies ``fully_shard`` to the model in
place before building the optimizer. Either way the model stays sharded after ``fit``; read its weights
whole with ``unlearnkit.distributed.full_state_dict`` (every output of unlearnkit does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.distributed import (  # noqa: F401  (re-exported: the engine's public helpers)
    _dist,
    all_gather_objects,
    average_gradients,
    broadcast_object,
    broadcast_tensors,
    full_state_dict,
    is_main_process,
    norm_buffers,
    replicated_parameters,
    shard_fsdp2,
    world_size,
)
from unlearnkit.engine.checkpoint import (
    capture_rng,
    checkpoint_root,
    clear_checkpoints,
    discard_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from unlearnkit.engine.collapse import CollapseWatch
from unlearnkit.engine.masks import WeightMask
from unlearnkit.engine.optim import OptimSpec, build_optimizer, build_scheduler
from unlearnkit.engine.precision import check_precision, make_accelerator, on_cpu
from unlearnkit.engine.precision import current as precision_current
from unlearnkit.engine.streams import Pass, Stream, next_cycled
from unlearnkit.engine.tracking import Tracking, check_tracker
from unlearnkit.errors import ConfigError, UnlearnkitError

LossFn = Callable[[dict[str, Batch], "StepContext"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class EngineConfig:
    """How the engine runs (the ``engine:`` section of a config).

    ``batch_size`` is per process. ``checkpoint_every`` saves a checkpoint every that many epochs and
    ``checkpoint_steps`` every that many optimizer steps (0 = off; both need a run folder); a checkpoint
    lets ``fit(resume=True)`` (``--resume``) continue to the same final weights. ``divergence_bound``
    stops a run whose step loss, or logged ``forget_loss``, exceeds it in absolute value (gradient
    ascent grows the forget loss without limit); ``nan_guard`` stops on a NaN/inf loss.

    ``fsdp`` shards the model with torch's FSDP version 2 when the run has several processes (launched
    with ``torchrun``, or ``accelerate launch`` with a DDP/CPU config; ignored in a single process):
    ``true`` gives each block the model lists in ``_no_split_modules`` (a Hugging Face model's decoder
    layers) its own FSDP unit, a list of class names (``[LlamaDecoderLayer]``) picks them, and the model
    itself is always the outer unit. Not with accelerate's own FSDP or DeepSpeed configs.

    ``tracker`` (``none``, ``tensorboard`` or ``wandb``) logs the step losses of every phase, the learning
    rate and the method's logs to that tracker through accelerate (see :mod:`unlearnkit.engine.tracking`),
    under ``tracker_dir`` if set, else the run folder, else a temporary folder.

    ``precision`` (``fp32``, ``bf16``, ``fp16``; unset = fp32 or the launcher's) runs each step's loss under
    accelerate's autocast (:mod:`unlearnkit.engine.precision`); ``grad_accum`` takes that many micro-batches
    of ``batch_size`` per optimizer step (see the module docstring). ``collapse_factor`` stops a run whose
    step loss or logged forget/retain loss exceeds that factor times its first logged value (at least 1)
    in absolute value (:mod:`unlearnkit.engine.collapse`; ``null`` = off).
    """

    batch_size: int = 64
    eval_batch_size: int = 512
    threads: int | None = None  # None: leave torch's setting; presets use 1 (fastest on a busy 2-core box)
    device: str = "auto"
    progress: bool = True
    log_every: int = 1
    checkpoint_every: int = 0
    checkpoint_steps: int = 0
    seed: int = 0
    nan_guard: bool = True
    divergence_bound: float | None = None
    fsdp: bool | list[str] = False
    tracker: str = "none"
    tracker_dir: str | None = None
    precision: str | None = None
    grad_accum: int = 1
    collapse_factor: float | None = 100.0

    def check(self) -> None:
        check_tracker(self.tracker)
        if self.batch_size < 1:
            raise ConfigError(f"engine.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"engine.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.threads is not None and self.threads < 1:  # 0 used to be ignored silently
            raise ConfigError(f"engine.threads must be >= 1 (null: torch's own setting), got {self.threads}")
        if isinstance(self.grad_accum, bool) or not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ConfigError(f"engine.grad_accum must be an integer >= 1, got {self.grad_accum!r}")
        c = self.collapse_factor
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 1 < c < math.inf):
            raise ConfigError(f"engine.collapse_factor must be a finite number > 1 (null = off), got {c!r}")
        if self.log_every < 1:
            raise ConfigError(f"engine.log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"engine.checkpoint_every must be >= 0 (0 = off), got {self.checkpoint_every}")
        if self.checkpoint_steps < 0:
            raise ConfigError(f"engine.checkpoint_steps must be >= 0 (0 = off), got {self.checkpoint_steps}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"engine.device must be auto, cpu, cuda or mps, got {self.device!r}")
        check_precision(self.precision, self.device)
        b = self.divergence_bound
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < math.inf):
            raise ConfigError(f"engine.divergence_bound must be a positive finite number, got {b!r}")
        f = self.fsdp
        if isinstance(f, list) and not (f and all(isinstance(n, str) and n for n in f)):
            raise ConfigError(
                f"engine.fsdp must be true, false or a non-empty list of module class names, got {f!r}"
            )


@dataclass
class StepContext:
    epoch: int
    epochs: int
    step: int
    phase: str
    generator: torch.Generator
    backward_fn: Callable[[torch.Tensor], None] | None = field(default=None, repr=False)
    early_terms: int = field(default=0, repr=False)

    def backward(self, term: torch.Tensor) -> torch.Tensor:
        """Back-propagate one term of this step's loss now; add the returned (detached) term to the loss.

        The gradient is the same as backpropagating the sum at the end, but the term's graph is freed
        before the next term's is built, so the step's peak memory is the largest term's graph instead of
        their sum (AdvUnlearn: the adversarial UNet pass, then the retain pass). Outside the engine
        (``backward_fn`` unset, e.g. a test calling a loss by hand) the term is returned unchanged.
        """
        if self.backward_fn is None:
            return term
        self.backward_fn(term)
        self.early_terms += 1
        return term.detach()


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
    """The loss became NaN or infinite, passed ``engine.divergence_bound``, or left the run's range
    (``engine.collapse_factor``)."""


@dataclass
class FitResult:
    """What a fit did. ``training``: its precision, gradient accumulation, processes, and the batch size of
    each stream per process and per optimizer step (``effective_batch_size`` = per process × processes ×
    grad_accum)."""

    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    checkpoint: Path | None = None
    training: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(
        self, cfg: EngineConfig | None = None, run_dir: str | Path | None = None, resume: bool = False
    ) -> None:
        self.cfg = cfg or EngineConfig()
        self.cfg.check()
        self.run_dir = Path(run_dir) if run_dir else None
        self.resume = resume
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self._accelerator = None
        self.tracking = Tracking(self.cfg.tracker, self.cfg.tracker_dir, self.run_dir)
        # called after every epoch of :meth:`fit` as ``epoch_end(desc, epochs_done, model)``, the model in
        # eval mode (tune scores each epoch of a trial with it); it must not train the model or draw from
        # torch's global generator, so the run goes on exactly as without it
        self.epoch_end: Callable[[str, int, nn.Module], None] | None = None

    @property
    def accelerator(self):
        """accelerate's ``Accelerator`` at this engine's precision (made again when another engine has
        changed accelerate's process-wide precision since)."""
        if self._accelerator is None or not precision_current(self.cfg.precision):
            self._accelerator = make_accelerator(
                on_cpu(self.cfg.device),
                self.cfg.precision,
                self.cfg.grad_accum,
                **self.tracking.accelerator_options(),
            )
        return self._accelerator

    def autocast(self):
        """A context in which forward passes run at ``engine.precision`` (nothing changes under fp32): the
        engine computes every step's loss in it; a method computes what it caches before training (e.g.
        NPO's reference NLLs) in it too, so the cache matches the training forward."""
        return self.accelerator.autocast()

    @property
    def tracker_dir(self) -> Path | None:
        """Where ``engine.tracker`` writes (``None`` with ``tracker=none``)."""
        return self.tracking.directory

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        """Log a run's final metrics to ``engine.tracker`` (as ``final/<key>``, at the last fit's final step)
        and close the tracker; private keys (``_...``) and non-numbers are left out. Nothing with
        ``tracker=none``."""
        if self.tracking.on:
            self.tracking.log_final(self.accelerator, metrics)

    def end_tracking(self) -> None:
        """Close the tracker (flush and close TensorBoard's writer, finish the W&B run); a later ``fit``
        starts it again."""
        if self.tracking.started:
            self.tracking.end(self.accelerator)

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
        resume: bool | None = None,
    ) -> FitResult:
        """Run ``optim.epochs`` epochs of ``phases(epoch)`` on ``model`` in place.

        With ``resume`` (default: the engine's ``resume``) and a checkpoint of ``desc`` in the run folder,
        training continues from it: weights, optimizer, schedule, random generators, data order and mask
        are restored, so the final weights equal an uninterrupted run's bit for bit (same device and
        thread count). Hyperparameters (learning rate, momentum, ...) come from ``optim``, so a diverged
        run can resume from its last good checkpoint with a lower learning rate. ``resume`` without
        ``checkpoint_every``/``checkpoint_steps`` checkpoints every epoch. Method state kept outside the
        model (e.g. an adversarial prompt) is saved too when the object owning ``phases`` defines
        ``loop_state() -> dict`` and ``load_loop_state(dict)``.
        """
        resume = self.resume if resume is None else resume
        seed = self.cfg.seed if seed is None else seed
        run = _Fit(self, desc, optim, mask, resume)
        run.prepare(model, sets, phases, batch_sizes, params, seed)
        run.restore()
        self.tracking.start(self.accelerator)
        result = run.train()
        self.tracking.last_step = result.steps
        return result

    def _guard(
        self,
        value: float,
        logs: dict[str, Any],
        desc: str,
        epoch: int,
        step: int,
        phase: str,
        optim: OptimSpec,
        checkpoint: Path | None,
        watch: CollapseWatch | None = None,
    ) -> None:
        """Stop before the update when the loss is NaN/inf, past ``divergence_bound``, or (``watch``) far
        outside the run's range (``collapse_factor``)."""
        where = f"at epoch {epoch}, step {step} (phase {phase!r})"
        if self.cfg.nan_guard and not math.isfinite(value):
            raise DivergenceError(
                f"the {desc} loss became {value} {where}; lower the learning rate (method.lr, now "
                f"{optim.lr}) or the number of epochs. {_kept(checkpoint)}"
            )
        hit = watch.check(phase, {"loss": value} | logs) if watch is not None else None
        if hit is not None:
            name, v, first = hit
            raise DivergenceError(
                f"the {desc} {name} reached {v:.6g} {where}, more than engine.collapse_factor="
                f"{watch.factor:g} times its first value ({first:.6g}): the model has collapsed; lower the "
                f"learning rate (method.lr, now {optim.lr}), or relax the guard with a larger "
                f"engine.collapse_factor (null turns it off). {_kept(checkpoint)}"
            )
        bound = self.cfg.divergence_bound
        if bound is None:
            return
        watched = {"loss": value}
        if isinstance(logs.get("forget_loss"), (int, float)):
            watched["forget_loss"] = float(logs["forget_loss"])
        for name, v in watched.items():
            if not abs(v) <= bound:
                raise DivergenceError(
                    f"the {desc} {name} reached {v:.6g} {where}, past engine.divergence_bound={bound}: the "
                    f"method is diverging; lower the learning rate (method.lr, now {optim.lr}) or the "
                    f"number of epochs, or raise the bound. {_kept(checkpoint)}"
                )


class _Fit:
    """One :meth:`Engine.fit` run, with all of its state in this object.

    Its methods are the run's named steps, called in this order: the constructor decides what kind of run
    it is (sharded or not, checkpointing or not) and refuses what cannot work; :meth:`prepare` places the
    model and builds the optimizer, schedule and data streams; :meth:`restore` continues from a checkpoint
    (or clears stale ones); :meth:`train` runs the epochs, one :meth:`step` per optimizer step, writing a
    :meth:`checkpoint` when one is due and confirming it (:meth:`confirm`) once the next step's loss from
    its weights has passed the divergence guard.
    """

    def __init__(
        self, engine: Engine, desc: str, optim: OptimSpec, mask: WeightMask | None, resume: bool
    ) -> None:
        from accelerate.utils import DistributedType

        self.engine, self.cfg, self.desc, self.optim, self.mask = engine, engine.cfg, desc, optim, mask
        acc = self.acc = engine.accelerator
        cfg = self.cfg
        self.resume = resume
        self.world = world = acc.num_processes
        self.main = acc.is_main_process
        self.by_accelerate = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if cfg.fsdp and self.by_accelerate:
            raise ConfigError(
                "engine.fsdp shards the model itself; launch it with torchrun or a DDP/CPU accelerate config "
                "(ddp.yaml, cpu2.yaml), not with accelerate's FSDP or DeepSpeed config (or drop engine.fsdp)"
            )
        self.own_fsdp = bool(cfg.fsdp) and world > 1  # the engine applies fully_shard itself
        plain = world > 1 and not (self.by_accelerate or self.own_fsdp)
        if plain and self.main and _fsdp_asked_of_accelerate():
            warnings.warn(
                "accelerate runs FSDP only on GPUs: this CPU run is plain data-parallel (every process holds "
                "the whole model); set engine.fsdp=true to shard it",
                stacklevel=3,
            )
        self.fsdp2 = self.own_fsdp or acc.distributed_type == DistributedType.FSDP
        self.sharded = self.by_accelerate or self.own_fsdp
        self.every = cfg.checkpoint_every or (1 if resume and not cfg.checkpoint_steps else 0)
        self.root = checkpoint_root(engine.run_dir, desc) if engine.run_dir is not None else None
        self.checkpointing = self.root is not None and bool(self.every or cfg.checkpoint_steps)
        if self.sharded:
            if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
                raise ConfigError(
                    "FSDP must shard the model in place (fsdp_version: 2 in the accelerate config): methods "
                    "call the model directly, which FSDP version 1's wrapper does not see"
                )
            if mask is not None:
                raise ConfigError(
                    "weight masks need whole parameters on every process; run masked methods (salun, "
                    "mask_ratio=...) with the DDP config, not DeepSpeed/FSDP"
                )
            if (self.checkpointing or resume) and not self.fsdp2:
                raise ConfigError(
                    "checkpoints and --resume work single-process, with DDP and with FSDP version 2; not "
                    "with DeepSpeed yet"
                )
        # where the run stands; ``good``: the newest checkpoint known to be good (the next step's loss from
        # its weights passed the guard, or the one resumed from); ``pending``: written since, not confirmed.
        self.result = FitResult()
        self.iters: dict[str, Pass] = {}
        self.start_epoch, self.start_phase, self.step_no, self.elapsed, self.t0 = 0, 0, 0, 0.0, 0.0
        self.resumed_driver: Pass | None = None
        self.last_saved = -1
        self.good: Path | None = None
        self.pending: Path | None = None
        self.log_file = None
        # gradient accumulation: micro-batches per optimizer step, and the group under way
        self.accum = cfg.grad_accum
        self.group: list[tuple[float, dict[str, Any]]] = []
        self.group_size = 0
        self.watch = CollapseWatch(cfg.collapse_factor)

    # -- prepare -------------------------------------------------------------------------------------
    def prepare(
        self,
        model: nn.Module,
        sets: dict[str, ExampleSet],
        phases: Callable[[int], list[Phase]],
        batch_sizes: dict[str, int] | None,
        params: list[nn.Parameter] | None,
        seed: int,
    ) -> None:
        """Place and (under FSDP) shard the model, build the optimizer and schedule, and the data streams."""
        acc, cfg, optim = self.acc, self.cfg, self.optim
        bs_of = {name: (batch_sizes or {}).get(name, cfg.batch_size) for name in sets}
        model.to(self.engine.device)
        if self.own_fsdp:
            params = _shard_in_place(model, cfg.fsdp, self.engine.device, params)
        optimizer = build_optimizer(params if params is not None else model.parameters(), optim)
        self.scheduler = build_scheduler(optimizer, optim)
        self.fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        if self.by_accelerate:
            ds = getattr(acc.state, "deepspeed_plugin", None)
            if ds is not None and ds.is_auto("train_micro_batch_size_per_gpu"):
                ds.deepspeed_config["train_micro_batch_size_per_gpu"] = max(bs_of.values())
            model, optimizer = acc.prepare(model, optimizer)
        else:  # no DDP wrapper: methods call the bare model, so gradients are averaged in ``step``
            model = acc.prepare_model(model, evaluation_mode=True)
            # not its autocast forward wrapper (left on the model after fit): ``step`` autocasts the loss
            model = acc.unwrap_model(model, keep_fp32_wrapper=False)
            optimizer = acc.prepare_optimizer(optimizer)
        self.model, self.optimizer = model, optimizer
        self.inner_opt = getattr(optimizer, "optimizer", optimizer)
        self.raw_model = acc.unwrap_model(model)
        self.reduce_grads = self.world > 1 and not self.sharded
        if self.reduce_grads:
            broadcast_tensors(list(self.raw_model.parameters()) + list(self.raw_model.buffers()))
        self._streams(sets, phases, bs_of, seed)
        self.owner = getattr(phases, "__self__", None)
        self.fingerprint = _fingerprint(
            self.desc, optim, sets, bs_of, seed, self.world, self.total, self.inner_opt, self.mask
        )
        if self.fsdp2:  # its checkpoints hold the optimizer state by parameter name: not for unsharded runs
            self.fingerprint["fsdp"] = True
        if self.accum > 1:
            self.fingerprint["grad_accum"] = self.accum
        acc.gradient_accumulation_steps = self.accum  # accelerate's state is shared by every engine
        self.result.training = {
            "precision": {"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision),
            "grad_accum": self.accum,
            "processes": self.world,
            "batch_size": dict(bs_of),
            "effective_batch_size": {n: b * self.world * self.accum for n, b in bs_of.items()},
        }

    def _streams(
        self,
        sets: dict[str, ExampleSet],
        phases: Callable[[int], list[Phase]],
        bs_of: dict[str, int],
        seed: int,
    ) -> None:
        """A shuffled stream per set, the step generator, and every epoch's phases (checked against them)."""
        self.streams: dict[str, Stream] = {}
        for i, (name, data) in enumerate(sets.items()):
            if len(data) == 0:
                raise UnlearnkitError(f"the {name} set is empty; nothing to train on")
            raw = data.loader(bs_of[name], shuffle=True, seed=seed * 1000 + i)
            self.streams[name] = Stream(name, self.acc.prepare_data_loader(raw), raw.generator)
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch_phases = [phases(e) for e in range(self.optim.epochs)]
        for ph_list in self.epoch_phases:
            for ph in ph_list:
                missing = [s for s in ph.streams if s not in self.streams]
                if missing:
                    raise ConfigError(
                        f"phase {ph.name!r} needs data streams {missing}; given {list(self.streams)}"
                    )
        self.total = sum(
            -(-len(self.streams[ph.length_stream]) // self.accum) for pl in self.epoch_phases for ph in pl
        )

    # -- restore -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the newest checkpoint of this run when resuming; a fresh run clears stale ones."""
        ck = None
        if self.root is not None and self.resume:
            found = broadcast_object(latest_checkpoint(self.root) if self.main else None)
            ck = read_checkpoint(found) if found is not None else None
        elif self.root is not None and self.main:
            clear_checkpoints(self.root)  # a fresh run: stale checkpoints must not be resumed later
        if ck is not None:
            self._load(ck)

    def _load(self, ck) -> None:
        """Weights, mask, optimizer, schedule, data order, generators and position from checkpoint ``ck``."""
        _check_fingerprint(ck.meta.get("fingerprint", {}), self.fingerprint, ck.path)
        ck.load_model(self.raw_model)  # a sharded model takes its share of the whole weights
        mask, inner_opt, scheduler = self.mask, self.inner_opt, self.scheduler
        if mask is not None and ck.mask is not None:
            if set(ck.mask) != set(mask.masks):
                raise UnlearnkitError(f"the mask in {str(ck.path)!r} is for other parameters")
            mask.masks = {k: v.bool() for k, v in ck.mask.items()}
        if self.fsdp2:
            _load_full_optimizer_state(self.raw_model, inner_opt, ck.state["optimizer"])
        else:
            inner_opt.load_state_dict(ck.state["optimizer"])
        scheduler.load_state_dict(ck.state["scheduler"])
        _refresh_hyperparameters(inner_opt, scheduler, self.fresh_groups)
        inner_opt._opt_called = True  # steps were taken before: no "scheduler before optimizer" warning
        for name, s in self.streams.items():
            if ck.state["streams"][name]["cycled"] is not None:
                self.iters[name] = s.replay(ck.state["streams"][name]["cycled"])
        drv = ck.state["driver"]
        if drv is not None:
            self.resumed_driver = self.streams[drv["stream"]].replay(drv)
        for name, s in self.streams.items():
            s.generator.set_state(ck.state["streams"][name]["generator"])
        self.gen.set_state(ck.state["step_generator"])
        if ck.state.get("extra") is not None and hasattr(self.owner, "load_loop_state"):
            self.owner.load_loop_state(ck.state["extra"])
        if ck.state.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(ck.state["scaler"])
        restore_rng(ck.state["rng"])
        pos = ck.meta["position"]
        self.start_epoch, self.start_phase, self.step_no = pos["epoch"], pos["phase"], pos["step"]
        self.elapsed = float(ck.meta.get("seconds", 0.0))
        self.result.history = list(ck.meta.get("history", []))
        self.watch = CollapseWatch(self.cfg.collapse_factor, self.result.history)
        self.result.resumed_from_step = self.step_no
        self.result.checkpoint = self.good = ck.path
        self.last_saved = self.step_no

    # -- train ---------------------------------------------------------------------------------------
    def train(self) -> FitResult:
        """Run the remaining epochs; return the result once the model is back in eval mode."""
        cfg, optim = self.cfg, self.optim
        if self.mask is not None:
            self.mask.attach(self.raw_model)
        self.opt_params = [p for g in self.inner_opt.param_groups for p in g["params"]]
        many = self.fsdp2 and self.world > 1
        # under FSDP, trained tensors it does not shard (a method's own prompt, say) are averaged in ``step``
        self.unsharded = replicated_parameters(self.opt_params) if many else []
        self.buffers = norm_buffers(self.raw_model) if self.reduce_grads or many else []
        self._open_log()
        self.bar = _progress(self.total, self.desc, cfg.progress and self.main, initial=self.step_no)
        self.t0 = time.perf_counter()
        self.model.train()
        for p in self.opt_params:  # then after every optimizer step (a loss may backward early)
            p.grad = None
        try:
            for epoch in range(self.start_epoch, optim.epochs):
                ph_list = self.epoch_phases[epoch]
                for pi in range(self.start_phase if epoch == self.start_epoch else 0, len(ph_list)):
                    self._phase(epoch, pi, ph_list[pi])
                self.scheduler.step()
                due = self.checkpointing and self.every and (epoch + 1) % self.every == 0
                if due and self.last_saved != self.step_no:
                    self.checkpoint(epoch + 1, 0, None)
                if self.engine.epoch_end is not None:
                    self.model.eval()
                    self.engine.epoch_end(self.desc, epoch + 1, self.raw_model)
                    self.model.train()
            self.confirm()  # the run ended well: its last checkpoint is good
        finally:
            self.bar.close()
            if self.log_file:
                self.log_file.close()
        self.result.steps = self.step_no
        self.result.seconds = self.elapsed + time.perf_counter() - self.t0
        self.model.eval()
        # accelerate keeps every prepared model and optimizer alive; let this run's go.
        self.acc._models.clear()
        self.acc._optimizers.clear()
        self.acc._dataloaders.clear()
        return self.result

    def _open_log(self) -> None:
        """The run folder's ``log-<desc>.jsonl``, starting with the history a resumed run already has."""
        run_dir = self.engine.run_dir
        if run_dir is not None and self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.log_file = open(run_dir / f"log-{self.desc}.jsonl", "w")  # noqa: SIM115
            for rec in self.result.history:
                self.log_file.write(json.dumps(rec) + "\n")

    def _phase(self, epoch: int, pi: int, ph: Phase) -> None:
        """One pass of phase ``pi``: its driver stream sets the length, the other streams cycle."""
        cfg = self.cfg
        others = [s for s in ph.streams if s != ph.length_stream]
        dpass, self.resumed_driver = self.resumed_driver or self.streams[ph.length_stream].start(), None
        length = len(self.streams[ph.length_stream])
        while (batch := dpass.next()) is not None:
            batches = {ph.length_stream: batch}
            for s in others:
                batches[s] = next_cycled(self.iters, self.streams, s)
            if not self.group:  # a new group: N micro-batches, fewer at the end of the pass
                self.group_size = max(1, min(self.accum, length - dpass.consumed + 1))
            if not self.step(epoch, ph, batches):
                continue
            if self.checkpointing and cfg.checkpoint_steps and self.step_no % cfg.checkpoint_steps == 0:
                self.checkpoint(epoch, pi, (ph.length_stream, dpass))
        if self.group:  # the loader gave fewer batches than its length said: step with what there is
            self._update(epoch, ph)

    def step(self, epoch: int, ph: Phase, batches: dict[str, Batch]) -> bool:
        """One micro-batch: loss (under autocast), divergence and collapse guards, backward; then, when it
        ends its group, the optimizer step (:meth:`_update`). Returns whether the optimizer stepped."""
        acc, optim = self.acc, self.optim
        last = len(self.group) + 1 >= self.group_size
        scale = self.accum / self.group_size  # accelerate divides by N; a short group of k by k

        def backward(term: torch.Tensor) -> None:
            acc.backward(term if scale == 1 else term * scale)

        acc.step = self.accum - 1 if last else 0  # ``accumulate`` syncs on the group's last micro-batch
        with acc.accumulate(self.model):
            ctx = StepContext(epoch, optim.epochs, self.step_no, ph.name, self.gen, backward)
            with acc.autocast():
                loss, logs = ph.loss(batches, ctx)
            value, logs = _global_values(loss, logs, self.world, self.engine.device)
            try:
                self.engine._guard(
                    value, logs, self.desc, epoch, self.step_no, ph.name, optim, self.good, self.watch
                )
            except DivergenceError:
                if self.pending is not None and self.main:  # its weights gave the diverged loss
                    discard_checkpoint(self.pending)
                raise
            self.confirm()
            if not (ctx.early_terms and not loss.requires_grad):  # all terms went early
                backward(loss)
            self.group.append((value, logs))
            if last:
                self._update(epoch, ph)
        return last

    def _update(self, epoch: int, ph: Phase) -> None:
        """The optimizer step that ends a group: gradient averaging, mask, clipping, step, log."""
        acc, optim, mask, optimizer = self.acc, self.optim, self.mask, self.optimizer
        acc.step = self.accum - 1
        with acc.accumulate(self.model):  # syncs (a no-op when ``step`` already did)
            value, logs = _group_mean(self.group)
            self.group = []
            if self.reduce_grads:
                average_gradients(self.opt_params, self.world, self.engine.device)
            elif self.unsharded:
                average_gradients(self.unsharded, self.world, self.engine.device)
            if mask is not None:
                mask.mask_gradients()
            if optim.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # now, not before the next loss: a loss may backward early
        acc.step = 0
        if mask is not None:
            mask.restore(self.inner_opt)
        if self.buffers:
            broadcast_tensors(self.buffers)
        if self.step_no % self.cfg.log_every == 0:
            self._log({"epoch": epoch, "step": self.step_no, "phase": ph.name, "loss": value} | logs)
        self.step_no += 1
        self.bar.update(1)

    def _log(self, rec: dict[str, Any]) -> None:
        """Keep a step's record in the history, the run folder's log and ``engine.tracker``."""
        self.result.history.append(rec)
        self.watch.note(rec)
        if self.log_file:
            self.log_file.write(json.dumps(rec) + "\n")
        if self.engine.tracking.on:
            lrs = [g["lr"] for g in self.inner_opt.param_groups]
            self.engine.tracking.log_step(self.acc, self.desc, rec, lrs)

    # -- checkpoint ----------------------------------------------------------------------------------
    def confirm(self) -> None:
        """The pending checkpoint is good (the loss from its weights passed the guard): prune older ones."""
        if self.pending is not None:
            self.good, self.pending = self.pending, None
            if self.main:
                prune_checkpoints(self.root, self.good)
        self.result.checkpoint = self.good

    def checkpoint(self, epoch: int, phase: int, driver: tuple[str, Pass] | None) -> None:
        """Write a checkpoint of the run at its current step; it stays pending until :meth:`confirm`."""
        raw_model, inner_opt, fsdp2 = self.raw_model, self.inner_opt, self.fsdp2
        # a sharded model and its optimizer state are gathered whole to rank 0 (collectives: every rank)
        weights = full_state_dict(raw_model) if fsdp2 else None
        opt_state = _full_optimizer_state(raw_model, inner_opt) if fsdp2 else None
        if self.cfg.nan_guard and not _finite(raw_model, weights, self.main):
            raise DivergenceError(
                f"the {self.desc} weights became NaN or infinite by step {self.step_no}; lower the learning "
                f"rate (method.lr, now {self.optim.lr}). {_kept(self.good)}"
            )
        self.last_saved = step = self.step_no
        path = self.root / f"step-{step:08d}"  # the same name on every rank
        if self.main:
            state = {
                "optimizer": opt_state if fsdp2 else inner_opt.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": capture_rng(),
                "step_generator": self.gen.get_state(),
                "streams": {
                    n: {
                        "generator": s.generator.get_state(),
                        "cycled": self.iters[n].state() if n in self.iters else None,
                    }
                    for n, s in self.streams.items()
                },
                "driver": None if driver is None else {"stream": driver[0]} | driver[1].state(),
                "extra": self.owner.loop_state() if hasattr(self.owner, "loop_state") else None,
                "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            }
            meta = {
                "desc": self.desc,
                "position": {"epoch": epoch, "phase": phase, "step": step},
                "seconds": self.elapsed + time.perf_counter() - self.t0,
                "fingerprint": self.fingerprint,
                "history": self.result.history,
            }
            what = weights if weights is not None else raw_model
            masks = self.mask.masks if self.mask else None
            path = write_checkpoint(self.root, step, what, state, meta, masks)
        self.pending = path


def _fsdp_asked_of_accelerate() -> bool:
    """True when the launcher asked accelerate for FSDP (which it ignores for CPU processes)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def _shard_in_place(
    model: nn.Module, wrap: bool | list[str], device: torch.device, params: list[nn.Parameter] | None
) -> list[nn.Parameter] | None:
    """Apply FSDP version 2 to ``model`` (``engine.fsdp``); return ``params`` with each of the model's
    parameters replaced by its sharded successor (FSDP registers new parameter objects)."""
    names = {id(p): n for n, p in model.named_parameters()}
    shard_fsdp2(model, wrap, device)
    if params is None:
        return None
    now = dict(model.named_parameters())
    return [now[names[id(p)]] if id(p) in names else p for p in params]


def _finite(model: nn.Module, weights: dict[str, torch.Tensor] | None, main: bool) -> bool:
    """Whether every parameter is finite; from ``weights`` (a sharded model's, gathered on rank 0: rank 0
    decides for every rank) when given."""
    if weights is None:
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return broadcast_object(all(bool(torch.isfinite(v).all()) for v in weights.values()) if main else None)


def _full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of an FSDP-sharded model, gathered whole onto rank 0's CPU (keyed by parameter
    name; ``{}`` on the other ranks). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def _load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Give each rank its share of a whole optimizer state from :func:`_full_optimizer_state`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)


def _kept(checkpoint: Path | None) -> str:
    if checkpoint is None:
        return "No checkpoint was written before this point (set engine.checkpoint_steps to keep one)."
    return (
        f"The last good checkpoint is kept at {str(checkpoint)!r}; rerun with --resume (fit(resume=True)) to "
        "continue from it, e.g. after lowering the learning rate."
    )


def _group_mean(group: list[tuple[float, dict[str, Any]]]) -> tuple[float, dict[str, Any]]:
    """A group's step loss and logs: the mean over its micro-batches of each number (one micro-batch:
    its own values, unchanged); other log values are the last micro-batch's."""
    if len(group) == 1:
        return group[0]
    value = sum(v for v, _ in group) / len(group)
    logs = dict(group[-1][1])
    for k in logs:
        vals = [g.get(k) for _, g in group]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            logs[k] = sum(vals) / len(vals)
    return value, logs


def _global_values(
    loss: torch.Tensor, logs: dict[str, Any], world: int, device: torch.device
) -> tuple[float, dict[str, Any]]:
    """The step loss (and numeric logs) as floats, averaged over the ranks when there are several."""
    value = float(loss.detach())
    if world == 1:
        return value, logs
    import torch.distributed as dist

    keys = [k for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    t = torch.tensor([value] + [float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world
    vals = t.tolist()
    return vals[0], logs | dict(zip(keys, vals[1:], strict=True))


def _fingerprint(
    desc: str,
    optim: OptimSpec,
    sets: dict[str, ExampleSet],
    bs_of: dict[str, int],
    seed: int,
    world: int,
    total: int,
    optimizer: torch.optim.Optimizer,
    mask: WeightMask | None,
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes from it (not the hyperparameters)."""
    shapes = hashlib.sha256()
    for g in optimizer.param_groups:
        for p in g["params"]:
            shapes.update(f"{tuple(p.shape)}{p.dtype};".encode())
    ids = hashlib.sha256()
    for name, data in sets.items():
        ids.update(name.encode() + data.ids.numpy().tobytes())
    return {
        "desc": desc,
        "epochs": optim.epochs,
        "optimizer": optim.optimizer,
        "scheduler": optim.scheduler,
        "streams": {name: [len(data), bs_of[name]] for name, data in sets.items()},
        "example_ids_sha256": ids.hexdigest()[:16],
        "params_sha256": shapes.hexdigest()[:16],
        "seed": seed,
        "processes": world,
        "steps_total": total,
        "mask": mask is not None,
    }


def _check_fingerprint(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} then, {now[k]!r} now" for k in diff[:4])
        raise ConfigError(
            f"the checkpoint {str(path)!r} belongs to a different run ({shown}); resume with the same "
            "config and number of processes, or run without --resume to start afresh"
        )


def _refresh_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler, fresh: list[dict[str, Any]]
) -> None:
    """After loading a checkpoint, take hyperparameters from the current config (the loaded state keeps
    only the optimizer's buffers and the schedule's position): lr = base lr × schedule factor."""
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group.update(new)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, mininterval=0.5, initial=initial)

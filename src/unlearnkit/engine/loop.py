"""The only training loop in unlearnkit, built on ``accelerate``.

It trains original models, retrained oracles and every unlearning method. A method describes an
epoch as a list of :class:`Phase` objects: which data streams a step draws from (``forget``,
``retain``, ``train``, ...), which stream sets the phase's length (the others cycle), and the loss of
one step. The engine does the rest: device placement, optimizer and schedule, weight masks
(``WeightMask``, restored after every step), gradient clipping, a divergence guard (NaN/inf loss, or a
loss past ``divergence_bound``), per-step logs, progress, checkpoints and resume.

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
whole with ``engine.distributed.full_state_dict`` (every output of unlearnkit does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
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
from unlearnkit.engine.distributed import (  # noqa: F401  (re-exported: the engine's public helpers)
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
from unlearnkit.engine.masks import WeightMask
from unlearnkit.engine.optim import OptimSpec, build_optimizer, build_scheduler
from unlearnkit.engine.streams import Pass, Stream, next_cycled
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

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"engine.batch_size must be >= 1, got {self.batch_size}")
        if self.log_every < 1:
            raise ConfigError(f"engine.log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"engine.checkpoint_every must be >= 0 (0 = off), got {self.checkpoint_every}")
        if self.checkpoint_steps < 0:
            raise ConfigError(f"engine.checkpoint_steps must be >= 0 (0 = off), got {self.checkpoint_steps}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"engine.device must be auto, cpu, cuda or mps, got {self.device!r}")
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
    """The loss became NaN or infinite, or passed ``engine.divergence_bound``."""


@dataclass
class FitResult:
    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    checkpoint: Path | None = None


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
        from accelerate.utils import DistributedType

        acc = self.accelerator
        cfg = self.cfg
        resume = self.resume if resume is None else resume
        seed = cfg.seed if seed is None else seed
        world = acc.num_processes
        main = acc.is_main_process
        by_accelerate = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if cfg.fsdp and by_accelerate:
            raise ConfigError(
                "engine.fsdp shards the model itself; launch it with torchrun or a DDP/CPU accelerate config "
                "(ddp.yaml, cpu2.yaml), not with accelerate's FSDP or DeepSpeed config (or drop engine.fsdp)"
            )
        own_fsdp = bool(cfg.fsdp) and world > 1  # the engine applies fully_shard itself
        if world > 1 and not (by_accelerate or own_fsdp) and main and _fsdp_asked_of_accelerate():
            warnings.warn(
                "accelerate runs FSDP only on GPUs: this CPU run is plain data-parallel (every process holds "
                "the whole model); set engine.fsdp=true to shard it",
                stacklevel=2,
            )
        fsdp2 = own_fsdp or acc.distributed_type == DistributedType.FSDP
        sharded = by_accelerate or own_fsdp
        every = cfg.checkpoint_every or (1 if resume and not cfg.checkpoint_steps else 0)
        root = checkpoint_root(self.run_dir, desc) if self.run_dir is not None else None
        checkpointing = root is not None and bool(every or cfg.checkpoint_steps)
        if sharded:
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
            if (checkpointing or resume) and not fsdp2:
                raise ConfigError(
                    "checkpoints and --resume work single-process, with DDP and with FSDP version 2; not "
                    "with DeepSpeed yet"
                )
        bs_of = {name: (batch_sizes or {}).get(name, cfg.batch_size) for name in sets}
        model.to(self.device)
        if own_fsdp:
            params = _shard_in_place(model, cfg.fsdp, self.device, params)
        optimizer = build_optimizer(params if params is not None else model.parameters(), optim)
        scheduler = build_scheduler(optimizer, optim)
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        if by_accelerate:
            ds = getattr(acc.state, "deepspeed_plugin", None)
            if ds is not None and ds.is_auto("train_micro_batch_size_per_gpu"):
                ds.deepspeed_config["train_micro_batch_size_per_gpu"] = max(bs_of.values())
            model, optimizer = acc.prepare(model, optimizer)
        else:  # no DDP wrapper: methods call the bare model, so gradients are averaged below
            model = acc.prepare_model(model, evaluation_mode=True)
            optimizer = acc.prepare_optimizer(optimizer)
        inner_opt = getattr(optimizer, "optimizer", optimizer)
        raw_model = acc.unwrap_model(model)
        reduce_grads = world > 1 and not sharded
        if reduce_grads:
            broadcast_tensors(list(raw_model.parameters()) + list(raw_model.buffers()))
        streams: dict[str, Stream] = {}
        for i, (name, data) in enumerate(sets.items()):
            if len(data) == 0:
                raise UnlearnkitError(f"the {name} set is empty; nothing to train on")
            raw = data.loader(bs_of[name], shuffle=True, seed=seed * 1000 + i)
            streams[name] = Stream(name, acc.prepare_data_loader(raw), raw.generator)
        gen = torch.Generator().manual_seed(seed)
        epoch_phases = [phases(e) for e in range(optim.epochs)]
        for ph_list in epoch_phases:
            for ph in ph_list:
                missing = [s for s in ph.streams if s not in streams]
                if missing:
                    raise ConfigError(
                        f"phase {ph.name!r} needs data streams {missing}; given {list(streams)}"
                    )
        total = sum(len(streams[ph.length_stream]) for pl in epoch_phases for ph in pl)
        owner = getattr(phases, "__self__", None)
        fingerprint = _fingerprint(desc, optim, sets, bs_of, seed, world, total, inner_opt, mask)
        if fsdp2:  # its checkpoints hold the optimizer state by parameter name: not for unsharded runs
            fingerprint["fsdp"] = True

        result = FitResult()
        iters: dict[str, Pass] = {}
        start_epoch, start_phase, step, elapsed = 0, 0, 0, 0.0
        resumed_driver: Pass | None = None
        ck = None
        if root is not None and resume:
            found = broadcast_object(latest_checkpoint(root) if main else None)
            ck = read_checkpoint(found) if found is not None else None
        elif root is not None and main:
            clear_checkpoints(root)  # a fresh run: stale checkpoints must not be resumed later
        if ck is not None:
            _check_fingerprint(ck.meta.get("fingerprint", {}), fingerprint, ck.path)
            ck.load_model(raw_model)  # a sharded model takes its share of the whole weights
            if mask is not None and ck.mask is not None:
                if set(ck.mask) != set(mask.masks):
                    raise UnlearnkitError(f"the mask in {str(ck.path)!r} is for other parameters")
                mask.masks = {k: v.bool() for k, v in ck.mask.items()}
            if fsdp2:
                _load_full_optimizer_state(raw_model, inner_opt, ck.state["optimizer"])
            else:
                inner_opt.load_state_dict(ck.state["optimizer"])
            scheduler.load_state_dict(ck.state["scheduler"])
            _refresh_hyperparameters(inner_opt, scheduler, fresh_groups)
            inner_opt._opt_called = True  # steps were taken before: no "scheduler before optimizer" warning
            for name, s in streams.items():
                if ck.state["streams"][name]["cycled"] is not None:
                    iters[name] = s.replay(ck.state["streams"][name]["cycled"])
            drv = ck.state["driver"]
            if drv is not None:
                resumed_driver = streams[drv["stream"]].replay(drv)
            for name, s in streams.items():
                s.generator.set_state(ck.state["streams"][name]["generator"])
            gen.set_state(ck.state["step_generator"])
            if ck.state.get("extra") is not None and hasattr(owner, "load_loop_state"):
                owner.load_loop_state(ck.state["extra"])
            restore_rng(ck.state["rng"])
            pos = ck.meta["position"]
            start_epoch, start_phase, step = pos["epoch"], pos["phase"], pos["step"]
            elapsed = float(ck.meta.get("seconds", 0.0))
            result.history = list(ck.meta.get("history", []))
            result.resumed_from_step = step
            result.checkpoint = ck.path
        if mask is not None:
            mask.attach(raw_model)
        opt_params = [p for g in inner_opt.param_groups for p in g["params"]]
        # under FSDP, trained tensors it does not shard (a method's own prompt, say) are averaged here
        unsharded = replicated_parameters(opt_params) if fsdp2 and world > 1 else []
        buffers = norm_buffers(raw_model) if reduce_grads or (fsdp2 and world > 1) else []
        last_saved = step if ck is not None else -1
        # ``good``: the newest checkpoint known to be good (the next step's loss from its weights passed
        # the guard, or the one resumed from); ``pending``: written since, not yet confirmed.
        good: Path | None = ck.path if ck is not None else None
        pending: Path | None = None

        def confirm() -> None:
            nonlocal good, pending
            if pending is not None:
                good, pending = pending, None
                if main:
                    prune_checkpoints(root, good)
            result.checkpoint = good

        def save(epoch: int, phase: int, driver: tuple[str, Pass] | None) -> None:
            nonlocal last_saved, pending
            # a sharded model and its optimizer state are gathered whole to rank 0 (collectives: every rank)
            weights = full_state_dict(raw_model) if fsdp2 else None
            opt_state = _full_optimizer_state(raw_model, inner_opt) if fsdp2 else None
            if cfg.nan_guard and not _finite(raw_model, weights, main):
                raise DivergenceError(
                    f"the {desc} weights became NaN or infinite by step {step}; lower the learning rate "
                    f"(method.lr, now {optim.lr}). {_kept(good)}"
                )
            last_saved = step
            path = root / f"step-{step:08d}"  # the same name on every rank
            if main:
                state = {
                    "optimizer": opt_state if fsdp2 else inner_opt.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": capture_rng(),
                    "step_generator": gen.get_state(),
                    "streams": {
                        n: {
                            "generator": s.generator.get_state(),
                            "cycled": iters[n].state() if n in iters else None,
                        }
                        for n, s in streams.items()
                    },
                    "driver": None if driver is None else {"stream": driver[0]} | driver[1].state(),
                    "extra": owner.loop_state() if hasattr(owner, "loop_state") else None,
                }
                meta = {
                    "desc": desc,
                    "position": {"epoch": epoch, "phase": phase, "step": step},
                    "seconds": elapsed + time.perf_counter() - t0,
                    "fingerprint": fingerprint,
                    "history": result.history,
                }
                what = weights if weights is not None else raw_model
                path = write_checkpoint(root, step, what, state, meta, mask.masks if mask else None)
            pending = path

        log_file = None
        if self.run_dir is not None and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.run_dir / f"log-{desc}.jsonl", "w")  # noqa: SIM115
            for rec in result.history:
                log_file.write(json.dumps(rec) + "\n")
        bar = _progress(total, desc, cfg.progress and main, initial=step)
        t0 = time.perf_counter()
        model.train()
        try:
            for epoch in range(start_epoch, optim.epochs):
                ph_list = epoch_phases[epoch]
                for pi in range(start_phase if epoch == start_epoch else 0, len(ph_list)):
                    ph = ph_list[pi]
                    others = [s for s in ph.streams if s != ph.length_stream]
                    dpass, resumed_driver = resumed_driver or streams[ph.length_stream].start(), None
                    while (batch := dpass.next()) is not None:
                        batches = {ph.length_stream: batch}
                        for s in others:
                            batches[s] = next_cycled(iters, streams, s)
                        optimizer.zero_grad(set_to_none=True)  # before: a loss may backward early
                        ctx = StepContext(epoch, optim.epochs, step, ph.name, gen, acc.backward)
                        loss, logs = ph.loss(batches, ctx)
                        value, logs = _global_values(loss, logs, world, self.device)
                        try:
                            self._guard(value, logs, desc, epoch, step, ph.name, optim, good)
                        except DivergenceError:
                            if pending is not None and main:  # its weights gave the diverged loss
                                discard_checkpoint(pending)
                            raise
                        confirm()
                        if not (ctx.early_terms and not loss.requires_grad):  # all terms went early
                            acc.backward(loss)
                        if reduce_grads:
                            average_gradients(opt_params, world, self.device)
                        elif unsharded:
                            average_gradients(unsharded, world, self.device)
                        if mask is not None:
                            mask.mask_gradients()
                        if optim.max_grad_norm:
                            acc.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                        optimizer.step()
                        if mask is not None:
                            mask.restore(inner_opt)
                        if buffers:
                            broadcast_tensors(buffers)
                        if step % cfg.log_every == 0:
                            rec = {"epoch": epoch, "step": step, "phase": ph.name, "loss": value} | logs
                            result.history.append(rec)
                            if log_file:
                                log_file.write(json.dumps(rec) + "\n")
                        step += 1
                        bar.update(1)
                        if checkpointing and cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0:
                            save(epoch, pi, (ph.length_stream, dpass))
                scheduler.step()
                if checkpointing and every and (epoch + 1) % every == 0 and last_saved != step:
                    save(epoch + 1, 0, None)
            confirm()  # the run ended well: its last checkpoint is good
        finally:
            bar.close()
            if log_file:
                log_file.close()
        result.steps = step
        result.seconds = elapsed + time.perf_counter() - t0
        model.eval()
        # accelerate keeps every prepared model and optimizer alive; let this run's go.
        acc._models.clear()
        acc._optimizers.clear()
        acc._dataloaders.clear()
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
    ) -> None:
        """Stop before the update when the loss is NaN/inf or past ``divergence_bound``."""
        where = f"at epoch {epoch}, step {step} (phase {phase!r})"
        if self.cfg.nan_guard and not math.isfinite(value):
            raise DivergenceError(
                f"the {desc} loss became {value} {where}; lower the learning rate (method.lr, now "
                f"{optim.lr}) or the number of epochs. {_kept(checkpoint)}"
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

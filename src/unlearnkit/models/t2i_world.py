"""Trained text-to-image worlds: the original model, its judge, and how both are made.

A *world* is a captioned dataset (``shapes``, or ``class-prompts`` over digits or CIFAR-10) with a tiny
text-to-image model trained on it and a judge classifier trained on the same real images. The judge plays the
part NudeNet / the ResNet-50 object classifier / the style classifier play in the papers; its penultimate
features define the Fréchet and kernel distances of :mod:`unlearnkit.metrics.diffusion`.

World folder (``$UNLEARNKIT_CACHE/t2i-<world>``, or shipped in ``unlearnkit/assets/t2i_<world>``):
``model/`` (components written by ``save_pretrained``), ``judge.safetensors``, ``world.json`` (the dataset
spec and the judge's :class:`~unlearnkit.data.prompts.ConceptSchema`) and ``train.json`` (measurements). A
folder without ``world.json`` is a shapes world (the format before class-prompt worlds existed).

:func:`train_world` is the recipe of ``cpu-recipes.md``: denoising objective
‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, c, t)‖² (Ho et al. 2020, Eq. 14), AdamW lr 1e-3, batch 32, gradient clip 1,
EMA 0.995 (the saved weights are the EMA), 10% empty captions so that classifier-free guidance works.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.prompts import ConceptSchema, recognised
from unlearnkit.data.shapes import SCHEMA
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import load_weights, save_weights, write_json
from unlearnkit.models.sd import is_sd_folder, load_sd
from unlearnkit.models.t2i import build_t2i, encode_prompts, generate_for_prompts, load_t2i, save_t2i
from unlearnkit.paths import cache_root
from unlearnkit.registry import get_dataset

# world name -> the dataset spec it is trained on
WORLDS: dict[str, dict[str, Any]] = {
    "shapes": {"name": "shapes"},
    "digits": {"name": "class-prompts", "base": "digits"},
    "cifar10": {"name": "class-prompts", "base": "cifar10"},
    "latent-shapes": {"name": "shapes"},  # a Stable Diffusion folder as model/ (models/latent_world.py)
}
TRAIN_COMMAND = "python scripts/train_t2i_world.py --world {world}"
LATENT_COMMANDS = {"latent-shapes": "python scripts/train_t2i_latent.py"}


def train_command(world: str) -> str:
    """The command that trains ``world``'s folder."""
    return LATENT_COMMANDS.get(world) or TRAIN_COMMAND.format(world=world)


def shapes_schema() -> ConceptSchema:
    return SCHEMA


# -- the judge ---------------------------------------------------------------------------------------
class AttributeJudge(nn.Module):
    """4 conv layers → 128 features → one logit head per attribute of the world's schema (the shapes world:
    shape and colour; a class-prompts world: the class); input images in [0, 1], 16×16."""

    def __init__(self, schema: ConceptSchema | None = None, width: int = 32) -> None:
        super().__init__()
        self.schema = schema if schema is not None else shapes_schema()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 4 * 4, 128), nn.ReLU(),
        )  # fmt: skip
        for name, n in self.schema.sizes.items():  # "<attribute>_head": the shapes judge's historic names
            setattr(self, f"{name}_head", nn.Linear(128, n))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.features(x)
        return tuple(getattr(self, f"{name}_head")(h) for name in self.schema.names)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
        """Predicted value index of each attribute (schema order) for images in [0, 1]."""
        self.eval()
        parts = [[lg.argmax(-1) for lg in self(x[i : i + batch_size])] for i in range(0, len(x), batch_size)]
        return tuple(torch.cat(col) for col in zip(*parts, strict=True))

    def recognises(self, images01: torch.Tensor, prompt: str) -> torch.Tensor:
        """Boolean per image: the judge sees every attribute value ``prompt`` names."""
        return recognised(self.predict(images01), self.schema.parse(prompt))


ShapeJudge = AttributeJudge  # the shapes world's judge (the default schema)


def train_judge(
    data: Any, epochs: int = 10, lr: float = 2e-3, seed: int = 0, batch_size: int = 64
) -> AttributeJudge:
    """Fit the judge on the world's real training images (a few seconds on one core): the sum of one
    cross-entropy per attribute, targets from the dataset columns named like the attributes."""
    schema = data.meta.get("schema") or shapes_schema()
    missing = [a for a in schema.names if a not in data.train.columns]
    if missing:
        raise UnlearnkitError(f"the judge's training data lacks the attribute column(s) {missing}")
    torch.manual_seed(seed)
    judge = AttributeJudge(schema)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    judge.train()
    for ep in range(epochs):
        for b in data.train.loader(batch_size, shuffle=True, seed=seed + ep):
            logits = judge(b["x"])
            loss = sum(F.cross_entropy(lg, b[a]) for lg, a in zip(logits, schema.names, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return judge.eval()


def judge_accuracy(
    judge: AttributeJudge, images01: torch.Tensor, *targets: torch.Tensor
) -> tuple[float, ...]:
    """Accuracy of each attribute (schema order), then of all attributes at once, on images in [0, 1]."""
    preds = judge.predict(images01)
    if len(targets) != len(preds):
        raise UnlearnkitError(f"judge_accuracy needs {len(preds)} target tensor(s), got {len(targets)}")
    hits = [p == t for p, t in zip(preds, targets, strict=True)]
    every = torch.stack(hits).all(0)
    return (*(float(h.float().mean()) for h in hits), float(every.float().mean()))


# -- world folders -----------------------------------------------------------------------------------


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise UnlearnkitError(f"unknown t2i world {world!r}: choose one of {', '.join(WORLDS)}")


def original_dir(world: str = "shapes") -> Path:
    """Where the trained world lives: ``$UNLEARNKIT_CACHE/t2i-<world>`` if trained there, else the copy
    shipped in ``unlearnkit/assets/t2i_<world>``; a clear error says how to make one."""
    _check_world(world)
    shipped = Path(__file__).resolve().parents[1] / "assets" / f"t2i_{world.replace('-', '_')}"
    for d in (cache_root() / f"t2i-{world}", shipped):
        if (d / "model").is_dir() and (d / "judge.safetensors").is_file():
            return d
    raise UnlearnkitError(
        f"no trained t2i-{world} model found in {cache_root() / f't2i-{world}'} or the package assets: "
        f"run `{train_command(world)}` once (~15 min on one CPU core)"
    )


def read_world(folder: str | Path) -> dict[str, Any]:
    """``world.json`` of a world folder (schema as a :class:`ConceptSchema`); shapes when absent."""
    f = Path(folder) / "world.json"
    if not f.is_file():
        return {
            "world": "shapes",
            "data": dict(WORLDS["shapes"]),
            "schema": shapes_schema(),
            "judge_width": 32,
        }
    spec = json.loads(f.read_text())
    return spec | {"schema": ConceptSchema.of(spec["schema"])}


def is_world_folder(folder: str | Path) -> bool:
    return (Path(folder) / "model").is_dir() and (Path(folder) / "judge.safetensors").is_file()


def not_a_model_folder(
    folder: str | Path, world: str = "shapes", option: str = "model.path="
) -> UnlearnkitError:
    """The error for a ``model.path`` (or another ``option``) that is neither a Stable Diffusion folder nor a
    world folder."""
    folder = Path(folder)
    hint = " (it looks like a T2I model folder itself: pass its parent)" if (folder / "unet").is_dir() else ""
    return UnlearnkitError(
        f"{option}{str(folder)!r} is neither a Stable Diffusion folder (model_index.json, unet/, "
        f"vae/, text_encoder/, tokenizer/, scheduler/) nor a t2i world folder{hint}: a world needs "
        f"model/ (unet, text_encoder, scheduler, tokenizer) and judge.safetensors, as "
        f"`{train_command(world)}` writes them"
    )


def load_original(folder: str | Path | None = None, world: str = "shapes") -> tuple[Any, AttributeJudge]:
    """(the original T2I model, the judge) from ``folder`` (default: :func:`original_dir` of ``world``)."""

    folder = Path(folder) if folder is not None else original_dir(world)
    if not is_world_folder(folder):
        raise not_a_model_folder(folder, world)
    spec = read_world(folder)
    judge = AttributeJudge(spec["schema"], int(spec.get("judge_width", 32)))
    judge = load_weights(judge, folder / "judge.safetensors").eval()
    model = folder / "model"  # a latent world's model/ is a Stable Diffusion folder: the same loading path
    return (load_sd(model) if is_sd_folder(model) else load_t2i(model)), judge


# -- training a world ----------------------------------------------------------------------------------
def train_world(
    world: str,
    out: str | Path | None = None,
    steps: int = 2200,
    batch_size: int = 32,
    lr: float = 1e-3,
    ema: float = 0.995,
    p_uncond: float = 0.1,
    seed: int = 0,
    data_options: dict[str, Any] | None = None,
    log_every: int = 100,
    model_preset: str = "small",
    judge_epochs: int = 10,
    check_per_prompt: int = 16,
    check_steps: int = 25,
) -> dict[str, Any]:
    """Train the judge and the original model of ``world`` and write its folder (default: the cache); the
    report (also ``train.json``) holds the judge's accuracy on real test images and on ``check_per_prompt``
    samples per caption (DDIM ``check_steps`` steps, guidance 3)."""

    _check_world(world)
    if world in LATENT_COMMANDS:
        raise UnlearnkitError(
            f"the {world} world is a Stable Diffusion folder: train it with `{train_command(world)}`"
        )
    spec = dict(WORLDS[world]) | dict(data_options or {})
    opts = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "shapes":
        opts.setdefault("seed", seed)
    data = get_dataset(spec["name"])(**opts)
    schema = data.meta["schema"]
    out = Path(out) if out is not None else cache_root() / f"t2i-{world}"
    final, out = out, out.parent / f".{out.name}.partial"  # written whole, then moved into place
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    judge = train_judge(data, epochs=judge_epochs, seed=seed)
    judge_s = time.perf_counter() - t0
    tb = data.test.all()
    real_acc = judge_accuracy(judge, tb["x"], *(tb[a] for a in schema.names))
    print(f"judge: {judge_s:.1f}s, real test accuracy {schema.names} + all = {real_acc}", flush=True)
    out.mkdir(parents=True)
    save_weights(judge, out / "judge.safetensors")
    write_json(
        out / "world.json", {"world": world, "data": spec, "schema": schema.to_dict(), "judge_width": 32}
    )

    model = build_t2i(data, preset=model_preset, seed=seed)

    def batch(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = data.train.__getitems__(rows)
        return b["x"] * 2 - 1, b["input_ids"]

    avg, train_s = fit_denoiser(model, batch, len(data.train), steps, batch_size, lr, ema, p_uncond, seed,
                                log_every)  # fmt: skip
    save_t2i(avg, out / "model")

    t0 = time.perf_counter()
    gen_acc, n_samples = judge_samples(avg, judge, data.meta["captions"], check_per_prompt, check_steps)
    sample_s = time.perf_counter() - t0
    report = {
        "world": world,
        "steps": steps,
        "train_seconds": round(train_s, 1),
        "judge_seconds": round(judge_s, 1),
        "attributes": list(schema.names),
        "judge_real_acc_per_attribute_and_all": real_acc,
        "judge_on_samples_per_attribute_and_all": gen_acc,
        f"sample_seconds_{n_samples}": round(sample_s, 1),
        "command": TRAIN_COMMAND.format(world=world) + f" --steps {steps} --seed {seed}",
    }
    write_json(out / "train.json", report)
    _replace_folder(out, final)
    return report


def judge_samples(
    model: nn.Module, judge: AttributeJudge, captions: list[str], per_prompt: int = 16, steps: int = 25
) -> tuple[tuple[float, ...], int]:
    """The judge's accuracy (per attribute, then all) on ``per_prompt`` samples of each caption (DDIM
    ``steps`` steps, guidance 3, seed 1234), and the number of samples."""
    imgs, idx = generate_for_prompts(model, captions, per_prompt=per_prompt, seed=1234, steps=steps)
    targets = [judge.schema.parse(c) for c in captions]
    per_attr = [torch.tensor([targets[int(i)][k] for i in idx]) for k in range(len(judge.schema.names))]
    return judge_accuracy(judge, imgs, *per_attr), len(idx)


def fit_denoiser(
    model: nn.Module,
    batch: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    n: int,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    ema: float = 0.995,
    p_uncond: float = 0.1,
    seed: int = 0,
    log_every: int = 100,
) -> tuple[nn.Module, float]:
    """Train ``model`` (a T2I model, pixel or latent) with the world recipe on ``n`` examples, ``batch(rows)``
    giving their clean samples x_0 in model space and caption ids; returns (the EMA copy, seconds)."""
    avg = copy.deepcopy(model).eval()
    for p in avg.parameters():
        p.requires_grad_(False)
    empty = encode_prompts(model, [""])[0]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    t0 = time.perf_counter()
    model.train()
    while step < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            x0, ids = batch(perm[i : i + batch_size].tolist())
            ids = ids.clone()
            ids[torch.rand(len(ids), generator=gen) < p_uncond] = empty
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, model.num_train_timesteps, (len(ids),), generator=gen)
            loss = F.mse_loss(model(model.add_noise(x0, noise, t), t, ids), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(avg.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - ema)
            step += 1
            if log_every and step % log_every == 0:
                print(f"step {step} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", flush=True)
            if step >= steps:
                break
    return avg, time.perf_counter() - t0


def _replace_folder(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final``: a killed training never leaves a world whose judge and
    model come from different runs; an existing world is replaced only once the new one is complete."""
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    if old.exists():
        shutil.rmtree(old)

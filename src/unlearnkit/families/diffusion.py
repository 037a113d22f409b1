"""The text-to-image diffusion family: denoising error per example, anchor-prompt relabelling.

Batches are ``{"x": [B, 3, H, W] in [0, 1], "input_ids": [B, L], "id": [B]}`` (plus ``shape``/``color``/``y``
for the shapes world). The per-example loss is the ε-prediction error of DDPM (Ho et al. 2020, Eq. 14),

    ℓ(θ; x_0, c) = ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, c, t)‖²   (mean over pixels),

with (t, ε) drawn from a generator seeded by ``(seed, example id, draw)``: the same example always gets the
same draw for a fixed ``draw`` counter (a saliency mask or a cached reference loss is reproducible), and a
method that wants fresh noise every step sets ``resample=True`` (the counter then advances on each call).
A batch may also carry explicit ``t`` and ``noise`` columns, which win.

A user's Stable Diffusion folder (``model.path``, :mod:`unlearnkit.models.sd`) is a latent model: x_0 is then
s · E(x) (the VAE's scaled posterior mean, cached per image) or the model's own latents (``z0``), and the
loss is the same formula in latent space (Rombach et al. 2022). Its data is a prompt set (``data.name=
prompts``, :mod:`unlearnkit.data.prompt_sets`) tokenized by the model's own tokenizer, whose forget prompts
are the concept (``split.concept`` by default).

``relabel`` is the diffusion analogue of a random label. The *condition* is the input and the image is the
output, so a relabelled concept example keeps its concept prompt c_f and gets a new target: the model's own
(stop-gradient) prediction under the anchor prompt c' (``relabel_map``, e.g. ``{"a red circle": "a red
square"}``, ``{"a red circle": ""}``, or ``"next"``: caption c → caption (c+1) mod K, the fixed "next
class" anchor of SalUn's class-conditional DDPM code). Its loss is then SalUn's generation objective (Fan et
al., ICLR 2024, §4, the remapping term; reference code ``certain_label``):

    ℓ(θ; x_0, c_f → c') = ‖ε_θ(x_t, c_f, t) − sg[ε_θ(x_t, c', t)]‖²

Swapping the caption instead (training ε_θ(x_t, c') on concept images) would teach the anchor prompt to draw
the concept and leave the concept prompt untouched.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.config import call_with_options
from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.data.prompt_sets import load_prompt_set
from unlearnkit.data.prompts import forget_captions
from unlearnkit.data.shapes import MAX_LENGTH, tokenize
from unlearnkit.data.splits import SPLIT_OPTIONS, Split, check_split_options, class_split
from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.families.base import Family, Original
from unlearnkit.models.sd import (
    MEMORY_OPTIONS,
    apply_memory_options,
    check_single_file,
    is_sd_file,
    is_sd_folder,
    is_sd_model,
    load_sd,
    own_latents,
    sd_tokenizer_folder,
)
from unlearnkit.models.t2i import clean_sample, load_t2i
from unlearnkit.models.t2i_world import is_world_folder, not_a_model_folder, original_dir, train_command
from unlearnkit.models.t2i_world import load_original as load_world
from unlearnkit.registry import get_model, register_family

_MIX = 1_000_003


@register_family("diffusion")
class DiffusionFamily(Family):
    default_dataset = "shapes"

    def __init__(
        self,
        relabel_map: dict[str, str] | str | None = None,
        seed: int = 0,
        resample: bool = False,
        tokenizer: Any = None,
        max_length: int | None = None,
    ) -> None:
        if isinstance(relabel_map, str) and relabel_map != "next":
            raise ConfigError(
                f"relabel_map must be a mapping caption -> anchor prompt or 'next', got {relabel_map!r}"
            )
        self._next = relabel_map == "next"
        self.relabel_map = {} if self._next else dict(relabel_map or {})
        self.seed = seed
        self.resample = resample
        self.draw = 0
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._table: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- core contract ----------------------------------------------------------------------------
    def draw_noise(
        self, model: nn.Module, batch: Batch, x: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t ``[B]``, ε ``[B, C, H, W]``) for each example, a function of (seed, id, draw) only; ``x`` is the
        clean sample in model space (default: the batch's pixels)."""
        x = batch["x"] if x is None else x
        if "t" in batch and "noise" in batch:
            return batch["t"].long(), batch["noise"]
        n_t = model.num_train_timesteps
        ts, eps = [], []
        for i in batch["id"].tolist():
            g = torch.Generator().manual_seed((self.seed * _MIX + int(i)) * _MIX + self.draw)
            ts.append(int(torch.randint(0, n_t, (1,), generator=g)))
            eps.append(torch.randn(x.shape[1:], generator=g))
        if self.resample:
            self.draw += 1
        return torch.tensor(ts, device=x.device), torch.stack(eps).to(x.device, x.dtype)

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        _check_model(model)
        x0 = clean_sample(model, batch)  # pixels in [-1, 1], or a latent model's (cached) VAE latents
        if x0 is None:
            raise DataError(
                "the denoising loss needs images but this dataset is a prompt set: use a method that needs "
                "only prompts (esd, uce, fmn, advunlearn) or give images"
            )
        t, noise = self.draw_noise(model, batch, x0)
        xt = model.add_noise(x0, noise, t)
        pred = model(xt, t, batch["input_ids"])
        target = noise
        if "anchor_input_ids" in batch:  # relabelled: match the anchor prompt's prediction (stop-gradient)
            with torch.no_grad():
                target = model(xt, t, batch["anchor_input_ids"])
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Give each concept example its anchor prompt as the target condition (``anchor_input_ids``);
        deterministic, ``generator`` is unused."""
        table = self._anchor_table()
        ids = batch["input_ids"]
        new = ids.clone()
        hit = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for concept, anchor in table:
            rows = (ids == concept.to(ids.device)).all(-1)
            new[rows] = anchor.to(ids.device)
            hit |= rows
        if not bool(hit.all()):
            bad = ids[~hit][0].tolist()
            shown = self.tokenizer.decode(bad, skip_special_tokens=True) if self.tokenizer else bad
            raise DataError(
                f"caption {shown!r} of a forget example is not a key of relabel_map "
                f"({sorted(self.relabel_map)}): map every forget caption to an anchor prompt"
            )
        return batch | {"anchor_input_ids": new}

    def _anchor_table(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._table is None:
            if self._next and not self.relabel_map:
                raise ConfigError(
                    "relabel_map='next' maps each caption to the next one of the dataset: load the data "
                    "through this family (family.load_data) or pass an explicit caption -> anchor mapping"
                )
            if not self.relabel_map:
                raise ConfigError(
                    "the diffusion family relabels by prompt: set relabel_map, e.g. "
                    "{'a red circle': 'a red square'} (or '' for the unconditional anchor)"
                )
            if self.tokenizer is None:
                raise ConfigError(
                    "the diffusion family needs the tokenizer to relabel prompts (load_data sets it)"
                )
            keys = list(self.relabel_map)
            n = self.max_length or MAX_LENGTH
            c_ids = tokenize(self.tokenizer, keys, n)
            a_ids = tokenize(self.tokenizer, [self.relabel_map[k] for k in keys], n)
            self._table = list(zip(c_ids, a_ids, strict=True))
        return self._table

    # -- data, splits, the original and models ------------------------------------------------------------
    split_kinds = SPLIT_OPTIONS | {"concept": ("concept", "prompts_file")}

    def protocol(self, data: LoadedData) -> str:
        return "erasure"

    def make_split(self, data: LoadedData, spec: dict[str, Any], seed: int) -> tuple[Split, LoadedData]:
        """``split.kind=concept``: forget every training image captioned with ``split.concept`` (a caption, a
        list of captions, or ``by-seed``: caption ``seed mod K``); retain the other captions; test images of
        the other captions are the real images for FID. ``split.prompts_file`` (a prompt-wise worst-case
        selection's JSON) names the captions instead and wins over ``split.concept``."""
        if spec.get("kind") != "concept":
            return super().make_split(data, spec, seed)
        check_split_options(spec, self.split_kinds)
        names = list(data.class_names)
        if "forget_prompts" in data.meta:  # a prompt set: its forget prompts are the concept's
            forget = [names.index(p) for p in data.meta["forget_prompts"]]
            return class_split(data.train, data.test, forget), data
        concepts = forget_captions(spec, names, seed)
        for c in concepts:
            if c not in names:
                raise ConfigError(
                    f"split.concept={c!r} is not a caption of {data.name!r}; choose one of {names}"
                )
        return class_split(data.train, data.test, sorted({names.index(c) for c in concepts})), data

    owns_original = True
    prompt_units = True

    def load_original(self, model_spec: dict[str, Any], data: LoadedData, split: Split) -> Original:
        """The shipped (or cached, or given) trained world: the T2I model and its judge. The judge and the
        original model (whose images the prompt attack targets) travel in ``extras``."""
        world = model_spec.get("world") or data.meta.get("world", "shapes")
        path = model_spec.get("path")
        memory = {k: model_spec[k] for k in MEMORY_OPTIONS if k in model_spec}
        if is_sd_model(path):  # a user's checkpoint (folder or single file): no judge of its own (eval.judge)
            model = apply_memory_options(load_sd(path, model_spec.get("single_file_config")), **memory)
            self.validate(model, split.forget)
            return Original(model, {"source": str(path)}, {"original": model})
        model, judge = load_world(path, world=world)
        apply_memory_options(model, **memory)
        self.validate(model, split.forget)
        _same_vocabulary(model, data.meta.get("tokenizer"), path, world)
        _same_schema(judge, data.meta.get("schema"), path, world)
        return Original(model, {"source": str(path or f"world {world}")}, {"judge": judge, "original": model})

    def data_spec(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A Stable Diffusion folder's data is a prompt set (``data.name=prompts``) tokenized by the model's
        own tokenizer; its prompts default to the split's concept. A world's dataset (e.g. the presets'
        ``shapes``) is replaced by it: its captions and word-level vocabulary belong to the world."""
        spec = dict(cfg["data"])
        model = cfg.get("model") or {}
        path = model.get("path")
        if path and not is_sd_model(path) and not is_world_folder(path):
            raise not_a_model_folder(path, model.get("world") or "shapes")
        if not is_sd_model(path):
            return _world_tokenizer(spec, path, model.get("world"))
        if spec.get("name") != "prompts":  # keep only what a prompt set takes (data.images_per_prompt=...)
            known = inspect.signature(load_prompt_set).parameters
            spec = {"name": "prompts"} | {k: v for k, v in spec.items() if k in known}
        if is_sd_file(path):  # its mistakes are one line before the prompt set needs its tokenizer
            check_single_file(path, model.get("single_file_config"))
        tok = sd_tokenizer_folder(path, model.get("single_file_config"))
        if tok is not None:
            spec.setdefault("tokenizer", str(tok))
        self._sd_path, self._sd_config = str(path), model.get("single_file_config")
        if not spec.get("prompts") and not spec.get("csv"):
            split = cfg.get("split") or {}
            if split.get("kind") == "concept" and split.get("concept") not in (None, "by-seed"):
                spec["prompts"] = forget_captions(split)
        return spec

    def load_data(self, spec: dict[str, Any]) -> LoadedData:
        data = super().load_data(spec)
        if "images" in data.meta:  # a prompt set whose images are the original model's own generations
            data = self._own_images(data)
        self.tokenizer = data.meta.get("tokenizer", self.tokenizer)
        self.max_length = data.meta.get("max_length", self.max_length)
        if self._next:  # SalUn's class-conditional DDPM anchor: class c -> class (c + 1) mod K
            caps = list(data.class_names)
            self.relabel_map = {c: caps[(i + 1) % len(caps)] for i, c in enumerate(caps)}
        self._table = None
        return data

    def _own_images(self, data: LoadedData) -> LoadedData:
        """Add ``z0``: the Stable Diffusion model's own latents for every row (seeded by the row id)."""
        path = getattr(self, "_sd_path", None)
        if path is None:
            raise ConfigError(
                "data.images_per_prompt needs model.path=SD_FOLDER (the model draws the images)"
            )
        opts = data.meta["images"]
        model = load_sd(path, getattr(self, "_sd_config", None))
        ids = data.train.columns["input_ids"]
        z = own_latents(model, ids, data.train.ids, opts["guidance"], opts["steps"])
        return replace(
            data, train=data.train.with_column("z0", z), test=data.test.with_column("z0", z.clone())
        )

    def build_model(self, spec: dict[str, Any], data: LoadedData) -> nn.Module:
        spec = dict(spec)
        name = spec.pop("name", "t2i-tiny")
        path = spec.pop("path", None)
        spec.pop("lora", None)
        spec.pop("world", None)  # which trained world the pipeline loads (models/t2i_world.py)
        memory = {k: spec.pop(k) for k in MEMORY_OPTIONS if k in spec}
        single_file_config = spec.pop("single_file_config", None)
        if path:
            model = load_sd(path, single_file_config) if is_sd_model(path) else load_t2i(path)
        else:
            model = call_with_options(get_model(name), (data,), spec, f"model {name!r} (model.*)")
        apply_memory_options(model, **memory)
        if self.tokenizer is None:
            self.tokenizer = getattr(model, "tokenizer", None)
        return model

    def validate(self, model: nn.Module, data: ExampleSet) -> None:
        _check_model(model)
        if "x" not in data.columns and "input_ids" in data.columns:  # a prompt set: no images to check
            _check_ids(model, data.columns["input_ids"])
            return
        missing = [c for c in ("x", "input_ids") if c not in data.columns]
        if missing:
            raise DataError(f"a text-to-image dataset needs columns 'x' and 'input_ids'; missing {missing}")
        _check_ids(model, data.columns["input_ids"])
        want = _image_shape(model)
        if tuple(data.columns["x"].shape[1:]) != want:
            raise DataError(
                f"images have shape {tuple(data.columns['x'].shape[1:])}, the model expects {want}"
            )


def _world_tokenizer(spec: dict[str, Any], path: Any, world: str | None) -> dict[str, Any]:
    """A world whose ``model/`` is a Stable Diffusion folder (the latent world) tokenizes its captions with
    that model's own tokenizer, as for any Stable Diffusion model (``data.tokenizer``)."""
    if path is None and world is None:
        return spec
    folder = Path(path) if path is not None else original_dir(world)
    if is_sd_folder(folder / "model") and "tokenizer" not in spec:
        spec = spec | {"tokenizer": str(folder / "model" / "tokenizer")}
    return spec


def _image_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of the images a model trains on: its UNet's sample, or what its VAE encodes to it."""
    c, h, w = model.sample_shape
    vae = getattr(model, "vae", None)
    if vae is None:
        return (c, h, w)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return (int(vae.config.in_channels), h * f, w * f)


def _check_ids(model: nn.Module, ids: torch.Tensor) -> None:
    te_cfg = model.text_encoder.config
    if len(ids) and int(ids.max()) >= te_cfg.vocab_size:
        raise DataError(
            f"token id {int(ids.max())} is outside the text encoder's vocabulary ({te_cfg.vocab_size}): "
            "the captions were tokenized with another tokenizer than the model's"
        )
    if ids.shape[1] > te_cfg.max_position_embeddings:
        raise DataError(
            f"captions have {ids.shape[1]} tokens but the text encoder takes at most "
            f"{te_cfg.max_position_embeddings}"
        )


def _check_model(model: nn.Module) -> None:
    for part in ("unet", "text_encoder"):
        if getattr(model, part, None) is None:
            raise UnlearnkitError(
                f"the diffusion family needs a T2IModel with a UNet and a text encoder; {part} is missing "
                "(build one with unlearnkit.models.t2i.build_t2i or load_t2i)"
            )


def _same_vocabulary(model: nn.Module, data_tokenizer: Any, path: Any, world: str = "shapes") -> None:
    """The dataset's captions and the prompt attacks' vocabulary come from the dataset's tokenizer: a model
    trained with another vocabulary would read wrong words (or index past its embeddings)."""
    mine = getattr(model, "tokenizer", None)
    if mine is None or data_tokenizer is None:
        return
    want, have = data_tokenizer.get_vocab(), mine.get_vocab()
    differ = sorted(w for w in want if have.get(w) != want[w])
    if differ:
        raise DataError(
            f"model.path={str(path or 'shipped')!r} was trained with another vocabulary than the dataset's "
            f"tokenizer ({len(differ)} word(s) differ, e.g. {differ[:3]}): check model.world / data, or "
            f"retrain it with `{train_command(world)} --out DIR` from this version"
        )


def _same_schema(judge: Any, data_schema: Any, path: Any, world: str) -> None:
    """The judge must predict the attributes the dataset's prompts name (same classes, same order)."""
    have = getattr(judge, "schema", None)
    if have is None or data_schema is None or have == data_schema:
        return
    raise DataError(
        f"the judge of model.path={str(path or 'world ' + world)!r} predicts {have.to_dict()} but the "
        f"dataset's prompts name {data_schema.to_dict()}: use the world trained on this dataset "
        f"(model.world) or retrain it with `{train_command(world)} --out DIR`"
    )

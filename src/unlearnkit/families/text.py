"""The causal-LM family (Hugging Face ``AutoModelForCausalLM`` + tokenizer).

Batches are ``{"input_ids": [B, T], "attention_mask": [B, T], "labels": [B, T], "id": [B]}``, right-padded,
with ``labels = -100`` on prompt and padding positions, so every loss counts answer tokens only
(see :func:`unlearnkit.data.text.encode_qa`). ``per_example_loss`` is the summed answer NLL
−log π_θ(y|x) (the quantity NPO and SimNPO are defined on); ``num_units`` is the answer length |y|;
``mean_loss`` is the token-mean NLL of the batch (Hugging Face's ``outputs.loss``, what GA and GradDiff
use in TOFU). ``relabel`` swaps in an alternative answer (``alt_*`` columns, e.g. "I don't know"), the
text analogue of a random label.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from unlearnkit.config import call_with_options
from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.data.splits import (
    SPLIT_OPTIONS,
    Split,
    check_split_options,
    ids_from_spec,
    ids_split,
    with_pretrain,
)
from unlearnkit.data.tofu import ids_eval_sets
from unlearnkit.data.tokenizer import check_vocab_fit, has_tokenizer_files, load_tokenizer
from unlearnkit.errors import ConfigError, DataError, UnlearnkitError
from unlearnkit.families.base import Family
from unlearnkit.families.text_nll import sequence_nll
from unlearnkit.registry import get_model, register_family

TEXT_COLUMNS = ("input_ids", "attention_mask", "labels")
ALT_COLUMNS = ("alt_input_ids", "alt_attention_mask", "alt_labels")


def lm_logits(model: nn.Module, batch: Batch, keep: int = 0) -> torch.Tensor:
    """The model's logits; with ``keep`` > 0 and a model that takes ``logits_to_keep`` (Hugging Face causal
    LMs), only those of the last ``keep`` positions (the output projection skips the others). A loss needs
    no key/value cache: ``use_cache=False`` (which gradient checkpointing requires in training)."""
    kwargs = {"logits_to_keep": keep} if keep and _takes_logits_to_keep(model) else {}
    if "use_cache" in _forward_params(type(model)):
        kwargs["use_cache"] = False
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    return out.logits if hasattr(out, "logits") else out


@functools.cache
def _forward_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _takes_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in _forward_params(type(model))


def positions_to_keep(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the loss needs: from the one before the first target token of
    any row to the end (the prompt positions before it carry no loss)."""
    has = (labels[:, 1:] != -100).any(0)
    if not bool(has.any()):
        return labels.shape[1]
    return labels.shape[1] - int(has.int().argmax())


def token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π_θ of each next token [B, T-1], mask of answer positions [B, T-1])."""
    logits = lm_logits(model, batch)[:, :-1].float()
    target = batch["labels"][:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return lp * mask, mask


@register_family("text")
class TextFamily(Family):
    default_dataset = "tofu-synthetic"

    def __init__(self, tokenizer: Any = None, num_classes: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.num_classes = num_classes
        self.model_folder: str | None = None  # model.path of model.name=hf, when it ships a tokenizer
        self.tokenizer_is_model_folder = False
        self.template: str | None = None  # data.template the data were tokenised with (None: chat or plain)

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Summed answer NLL per example (:func:`~unlearnkit.families.text_nll.sequence_nll`: one contiguous
        ``[N, V]`` cross-entropy; logits are computed only from the batch's first answer position on)."""
        labels = batch["labels"]
        return sequence_nll(lm_logits(model, batch, positions_to_keep(labels)), labels)

    def num_units(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"][:, 1:] != -100).sum(-1)

    def mean_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.per_example_loss(model, batch).sum() / self.num_units(batch).sum().clamp_min(1)

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        missing = [c for c in ALT_COLUMNS if c not in batch]
        if missing:
            raise DataError(
                "relabelling a text batch needs alternative answers (columns alt_input_ids, "
                "alt_attention_mask, alt_labels), e.g. 'I don't know' answers: build the forget set with "
                "encode_qa(..., alt_answers=...)"
            )
        return batch | {c: batch[f"alt_{c}"] for c in TEXT_COLUMNS}

    # -- data, splits and models -----------------------------------------------------------------------
    split_kinds = SPLIT_OPTIONS | {"ids": (*SPLIT_OPTIONS["ids"], "without_perturbed")}

    def protocol(self, data: LoadedData) -> str:
        """TOFU, MUSE or WMDP: named by the dataset (``meta["benchmark"]``; the ``wmdp`` loader names
        ``wmdp``), else told by its evaluation sets."""
        ev = data.meta.get("eval") or {}
        bench = data.meta.get("benchmark") or (
            "tofu" if "real_authors" in ev else "muse" if "verbmem_forget" in ev else None
        )
        if bench not in ("tofu", "muse", "wmdp"):
            raise UnlearnkitError(f"the text dataset {data.name!r} names no benchmark (tofu, muse or wmdp)")
        return bench

    def make_split(self, data: LoadedData, spec: dict[str, Any], seed: int) -> tuple[Split, LoadedData]:
        if spec.get("kind") == "ids":
            check_split_options(spec, self.split_kinds)
            return ids_split_with_eval(data, spec)
        return super().make_split(data, spec, seed)

    def data_spec(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The model folder's tokenizer is the default: with ``model.name=hf`` and no ``data.tokenizer``,
        the tokenizer is loaded from ``model.path`` (when that folder has one)."""
        spec = dict(cfg["data"])
        model = cfg.get("model") or {}
        path = model.get("path") if model.get("name") == "hf" else None
        self.model_folder = str(path) if path and has_tokenizer_files(path) else None
        if spec.get("tokenizer") is None and self.model_folder is not None:
            spec["tokenizer"] = self.model_folder
        self.tokenizer_is_model_folder = (
            self.model_folder is not None and spec["tokenizer"] == self.model_folder
        )
        return spec

    def load_data(self, spec: dict[str, Any]) -> LoadedData:
        data = super().load_data(spec)
        self.tokenizer = data.meta.get("tokenizer", self.tokenizer)
        self.template = data.meta.get("template", self.template)
        return data

    def build_model(self, spec: dict[str, Any], data: LoadedData) -> nn.Module:
        spec = dict(spec)
        name = spec.pop("name", "tiny-llama")
        if name != "hf":  # a pretrained folder is loaded by the "hf" builder itself
            spec.pop("path", None)
        spec.pop("seed", None)
        spec.pop("lora", None)  # applied around unlearning (models/lora.py), not at build time
        checkpointing = spec.pop("gradient_checkpointing", False)
        model = call_with_options(get_model(name), (data,), spec, f"model {name!r} (model.*)")
        if checkpointing:
            enable_gradient_checkpointing(model, checkpointing)
        return model

    def validate(self, model: nn.Module, data: ExampleSet) -> None:
        missing = [c for c in TEXT_COLUMNS if c not in data.columns]
        if missing:
            raise DataError(f"a text dataset needs columns {list(TEXT_COLUMNS)}; missing {missing}")
        if self.tokenizer is not None:
            mine = None
            if self.model_folder is not None and not self.tokenizer_is_model_folder:
                mine = load_tokenizer(self.model_folder)
            check_vocab_fit(model, self.tokenizer, mine, own=self.tokenizer_is_model_folder)
        ids = data.columns["input_ids"]
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and len(ids) and int(ids.max()) >= vocab:
            raise DataError(
                f"token id {int(ids.max())} is outside the model's vocabulary ({vocab}): the data was "
                "tokenized with another tokenizer than the model's"
            )
        if len(data) and int((data.columns["labels"][:, 1:] != -100).sum(-1).min()) == 0:
            raise DataError("some examples have no answer tokens (all labels are -100): check max_length")


def enable_gradient_checkpointing(model: nn.Module, flag: Any = True) -> None:
    """``model.gradient_checkpointing=true``: keep only each decoder layer's input in training and recompute
    the rest in the backward pass (transformers' ``activation_checkpointing_enable``, formerly
    ``gradient_checkpointing_enable``; torch's non-reentrant checkpoint): the same gradients for less
    activation memory and about one more forward pass per step. It acts in training mode only (evaluation
    and generation are unchanged, their cache included)."""
    if flag is not True:
        raise ConfigError(f"model.gradient_checkpointing must be true or false, got {flag!r}")
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.gradient_checkpointing=true needs a Hugging Face model that supports it; "
            f"{type(model).__name__} does not (drop the option)"
        )
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def ids_split_with_eval(data: LoadedData, spec: dict[str, Any]) -> tuple[Split, LoadedData]:
    """TOFU-style text data: forget = the questions of ``full`` listed by ``split.ids_file`` (or inline
    ``split.ids``), e.g. a worst-case selection; retain = every other question plus the real-author and
    world-fact pairs (as in :func:`~unlearnkit.data.splits.benchmark_split`), so the oracle is retrained on
    them; test = the holdout.

    Returns the split and the data with ``meta["eval"]`` rebuilt for it (:func:`unlearnkit.data.tofu.
    ids_eval_sets`): the forget evaluation set is those questions with their paraphrased and perturbed
    answers, the retain evaluation set loses any forgotten question (listed in ``split.info``).
    ``split.without_perturbed=partial`` accepts questions that have no perturbed answers (real TOFU).
    """
    if "perturbed" not in data.meta:
        raise ConfigError(
            f"split.kind=ids on the text dataset {data.name!r} is not supported: its forget metrics are tied "
            "to its own forget split (MUSE's forget corpus); use split.kind=benchmark, or a TOFU dataset "
            "(data.name=tofu or tofu-synthetic) for forget sets of any questions"
        )
    base = ids_split(data.train, data.test, ids_from_spec(spec))
    ev, info = ids_eval_sets(data.meta, base.forget_ids, spec.get("without_perturbed", "error"))
    retain = with_pretrain(base.retain, data)
    info = base.info | info | ({"ids_file": str(spec["ids_file"])} if spec.get("ids_file") else {})
    split = Split(base.forget, retain, data.test, "ids", info)
    meta = data.meta | {"eval": ev, "forget_split": "ids", "retain_split": None}
    return split, replace(data, meta=meta)

"""Concept erasure for text-to-image models (ESD / SalUn / AdvUnlearn protocol): UA on the erased
caption(s), utility and Fréchet / kernel distance on the other captions (judge-based), and, when
``eval.attack`` is set, pre-ASR and ASR under the adversarial prompt attack (UnlearnDiffAtk) on every erased
caption (cycled to ``eval.attack.n_prompts``). The erased captions are ``split.concept`` (one or a list) or
a prompt-wise worst-case ``split.prompts_file``.

Evaluation noise: suite seed s samples from ``1000·s + eval.sample_seed`` (and attacks prompt i under noise
seed ``1000·s + i`` unless ``eval.attack.seed`` is set), so N suite seeds give N independent sets of samples
and of attacked prompts, while every method of one seed is judged on the same noise (paired comparison).

CLIP score (utility, AdvUnlearn's CLIP column): when ``eval.clip_model`` is a CLIP folder, ``clip`` is
:func:`~unlearnkit.metrics.clip_score.clip_score` (``eval.clip_scale``, default the mean cosine) of the retain
captions' generations against their captions: the very images ``erasure_metrics`` judged for ``utility``,
``fid`` and ``kid`` (handed over through its ``retain_samples``, not sampled again)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from unlearnkit.attacks.prompt import evaluate_asr, run_asr, unlearndiff_attack
from unlearnkit.data.prompts import forget_captions
from unlearnkit.errors import ConfigError, UnlearnkitError, did_you_mean
from unlearnkit.metrics.clip_score import check_scale, clip_score, load_clip
from unlearnkit.metrics.diffusion import erasure_metrics
from unlearnkit.protocols.base import EvalConfig, Protocol, Result
from unlearnkit.registry import register_protocol


def _attack_options() -> set[str]:
    """The keys ``eval.attack`` accepts: ``run_asr``'s keyword options and the attack's own."""
    names = {
        p.name
        for fn in (run_asr, unlearndiff_attack)
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    return names - {"progress", "x_tgt", "concept", "tokenizer", "vocab_ids"}


@dataclass
class ErasureEval(EvalConfig):
    """Sampling of the judged images (``per_prompt`` per caption, ``guidance``, ``steps``, ``sample_seed``),
    the optional CLIP model for the CLIP score, and the prompt attack's options (``attack``)."""

    per_prompt: int = 16
    sample_seed: int = 0
    guidance: float = 3.0
    steps: int = 25
    clip_model: str | None = None
    clip_scale: str = "cosine"
    attack: dict | None = None

    def check(self) -> None:
        if self.attack:
            known = sorted(_attack_options())
            for k in self.attack:
                if k not in known:
                    raise ConfigError(f"unknown option eval.attack.{k}: {did_you_mean(k, known)}")


@register_protocol("erasure")
class Erasure(Protocol):
    Config = ErasureEval
    headline = ("UA", "pre_ASR", "ASR", "utility", "fid", "kid", "RTE")
    axes = ("UA", "utility")
    caption = (
        "UA = % of samples of the erased concept the judge does NOT recognise (higher = erased); pre_ASR / "
        "ASR = % of attacked prompts that show the concept without / with the prompt attack; utility = % of "
        "samples of the other captions the judge gets right; RTE in seconds."
    )

    def evaluate(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, original: Any = None
    ) -> Result:
        judge = None if original is None else original.extras.get("judge")
        if judge is None:
            raise UnlearnkitError(
                "the concept-erasure evaluation needs the original model's judge: pass original= "
                "(what unlearnkit.experiment.original_model returns)"
            )
        ev = self.cfg
        captions = list(exp.data.class_names)
        concepts = forget_captions(exp.cfg["split"], captions, exp.seed)
        retain = [c for c in captions if c not in concepts]
        real = exp.split.test.all()["x"]
        noise_seed = 1000 * int(exp.seed) + int(ev.sample_seed)
        sampling = {"per_prompt": ev.per_prompt, "guidance": ev.guidance, "steps": ev.steps}
        clip = None
        if ev.clip_model:  # load and check before sampling, so a bad path or scale fails fast
            clip, clip_scale = load_clip(ev.clip_model), check_scale(str(ev.clip_scale))
        samples: dict[str, Any] = {}
        out = erasure_metrics(
            model, judge, concepts, retain, real, seed=noise_seed, retain_samples=samples, **sampling
        )
        if clip is not None:
            prompts = [retain[int(i)] for i in samples["prompt_idx"]]
            out["clip"] = clip_score(samples["images"], prompts, clip, scale=clip_scale)
        if ev.attack:
            opts = {"seed": 1000 * int(exp.seed)} | dict(ev.attack)
            out |= evaluate_asr(model, original.model, judge, concepts, exp.data.meta["tokenizer"], **opts)
        return Result(out)

"""Suite-level evaluation of the diffusion family: UA on the erased concept(s), utility and Fréchet distance
on the other captions (judge-based), and, when ``eval.attack`` is set, pre-ASR and ASR under the
adversarial prompt attack (UnlearnDiffAtk) on every erased caption (cycled to ``eval.attack.n_prompts``).
The erased captions are ``split.concept`` (one or a list) or a prompt-wise worst-case
``split.prompts_file``.

Evaluation noise: suite seed s samples from ``1000·s + eval.sample_seed`` (and attacks prompt i under noise
seed ``1000·s + i`` unless ``eval.attack.seed`` is set), so N suite seeds give N independent sets of samples
and of attacked prompts, while every method of one seed is judged on the same noise (paired comparison).

CLIP score (utility, AdvUnlearn's CLIP column): when ``eval.clip_model`` is a CLIP folder, ``clip`` is
:func:`~unlearnkit.metrics.clip_score.clip_score` (``eval.clip_scale``, default the mean cosine) of the retain
captions' generations against their captions: the very images ``erasure_metrics`` judged for ``utility``,
``fid`` and ``kid`` (handed over through its ``retain_samples``, not sampled again)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from unlearnkit.errors import ConfigError, UnlearnkitError


def evaluate_t2i(setup: Any, model: nn.Module) -> dict[str, Any]:
    from unlearnkit.metrics.diffusion import erasure_metrics

    judge = setup.info.get("judge")
    if judge is None:
        raise UnlearnkitError("the diffusion evaluation needs the judge: load the original model first")
    ev = setup.cfg.get("eval", {})
    concepts = forget_captions(setup.cfg["split"], setup.data.class_names, setup.seed)
    retain = [c for c in setup.data.class_names if c not in concepts]
    real = setup.split.test.all()["x"]
    noise_seed = 1000 * int(setup.seed) + int(ev.get("sample_seed", 0))
    sampling = {
        "per_prompt": int(ev.get("per_prompt", 16)),
        "guidance": float(ev.get("guidance", 3.0)),
        "steps": int(ev.get("steps", 25)),
    }
    clip = None
    if ev.get("clip_model"):  # load and check before sampling, so a bad path or scale fails fast
        from unlearnkit.metrics.clip_score import check_scale, load_clip

        clip, clip_scale = load_clip(ev["clip_model"]), check_scale(str(ev.get("clip_scale", "cosine")))
    samples: dict[str, Any] = {}
    out = erasure_metrics(
        model, judge, concepts, retain, real, seed=noise_seed, retain_samples=samples, **sampling
    )
    if clip is not None:
        from unlearnkit.metrics.clip_score import clip_score

        prompts = [retain[int(i)] for i in samples["prompt_idx"]]
        out["clip"] = clip_score(samples["images"], prompts, clip, scale=clip_scale)
    attack = ev.get("attack")
    if attack:
        from unlearnkit.attacks.prompt import evaluate_asr

        opts = {"seed": 1000 * int(setup.seed)} | dict(attack)
        out |= evaluate_asr(
            model, setup.info["original"], judge, concepts, setup.data.meta["tokenizer"], **opts
        )
    return out


def forget_captions(split: dict[str, Any], captions: Sequence[str] = (), seed: int = 0) -> list[str]:
    """The erased caption(s) of a concept split: ``split.prompts_file`` (a prompt-wise worst-case
    selection) wins over ``split.concept`` (one caption, a list, or ``by-seed``: caption ``seed mod K`` of
    the dataset's K ``captions``, a different class per suite seed as in SalUn's class-wise experiments)."""
    if split.get("prompts_file"):
        from unlearnkit.selection.prompts import read_prompts_file

        return list(read_prompts_file(split["prompts_file"]))
    concept = split.get("concept")
    if concept == "by-seed":
        if not captions:
            raise ConfigError("split.concept=by-seed needs the dataset's captions")
        return [list(captions)[int(seed) % len(captions)]]
    if concept is None or concept == [] or concept == "":
        raise ConfigError("a concept split needs split.concept (a caption, a list of captions, or by-seed)")
    return list(concept) if isinstance(concept, (list, tuple)) else [concept]

"""Metrics of concept erasure in text-to-image models, judged by a world's judge
(:class:`~unlearnkit.models.t2i_world.AttributeJudge`).

A judge predicts the attributes of its world's :class:`~unlearnkit.data.prompts.ConceptSchema`
(``judge.schema``; a judge without one is read as the shapes world's): shape and colour, or the class of a
class-prompts world.
An image *shows* a prompt when the judge predicts every attribute value the prompt names.

- **UA** (unlearning accuracy, UnlearnCanvas; SalUn's class-wise DDPM forgetting): share of the concept
  prompts' generations that the judge does *not* recognise as the concept.
- **utility**: judge accuracy (every named attribute right) on the retain prompts' generations.
- **Fréchet distance** (Heusel et al. 2017): ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}) between Gaussians
  fitted to the judge's penultimate features of generated and real images (the FID formula in a small,
  domain-specific feature space instead of Inception's).
- **ASR** (UnlearnDiffAtk, ``check_asr.py``): pre-ASR = #prompts already recognised without attack / N;
  ASR = (#pre-successes + #attack successes among the others) / N ("ASR = pre-ASR + post-ASR").

The arithmetic helpers are pure functions returning fractions in [0, 1]; suites report percents.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearnkit.data.prompts import ConceptSchema, recognised
from unlearnkit.data.shapes import SCHEMA
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models.t2i import generate_for_prompts


def judge_schema(judge: Any) -> ConceptSchema:
    """The schema a judge predicts (``judge.schema``; the shapes world's for a judge without one)."""
    schema = getattr(judge, "schema", None)
    if schema is None:
        return SCHEMA
    return schema


def parse_concept(prompt: str, schema: ConceptSchema | None = None) -> tuple[int | None, ...]:
    """The attribute values a prompt names, in schema order (default: the shapes world's (shape, colour),
    e.g. "a red circle" → (0, 0), "circle" → (0, None))."""
    return (schema or judge_schema(None)).parse(prompt)


def unlearn_accuracy(recognised_flags: torch.Tensor) -> float:
    """UA = 1 − share recognised."""
    return 1.0 - float(recognised_flags.float().mean())


def asr(pre_success: Sequence[bool], attack_success: Sequence[bool]) -> tuple[float, float]:
    """(pre-ASR, ASR) over N prompts; an attack success on an already-successful prompt counts once."""
    pre = np.asarray(pre_success, dtype=bool)
    att = np.asarray(attack_success, dtype=bool)
    if pre.shape != att.shape or pre.ndim != 1 or len(pre) == 0:
        raise UnlearnkitError("pre_success and attack_success must be equal-length, non-empty 1-D lists")
    return float(pre.mean()), float((pre | att).mean())


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]``."""
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise UnlearnkitError("frechet_distance needs two [N, D] feature arrays with N >= 2 and equal D")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
            off = np.eye(len(s_a)) * 1e-6
            covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def kernel_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor) -> float:
    """Kernel distance (KID; Bińkowski et al., ICLR 2018): the unbiased estimate of MMD² between two feature
    sets ``[N, D]`` under the cubic polynomial kernel k(x, y) = (x·y / D + 1)³.

    Unlike the Fréchet distance it has no bias from estimating a D×D covariance, so it stays meaningful when
    N is close to or below D (here: 16 images per caption against 128 judge features)."""
    from sklearn.metrics.pairwise import polynomial_kernel

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise UnlearnkitError("kernel_distance needs two [N, D] feature arrays with N >= 2 and equal D")
    d = a.shape[1]
    k_aa = polynomial_kernel(a, a, degree=3, gamma=1.0 / d, coef0=1.0)
    k_bb = polynomial_kernel(b, b, degree=3, gamma=1.0 / d, coef0=1.0)
    k_ab = polynomial_kernel(a, b, degree=3, gamma=1.0 / d, coef0=1.0)
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


@torch.no_grad()
@torch.no_grad()
def judge_features(judge, images01: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    judge.eval()
    return torch.cat(
        [judge.features(images01[i : i + batch_size]) for i in range(0, len(images01), batch_size)]
    )


def erasure_metrics(
    model,
    judge,
    concept: str | Sequence[str],
    retain_prompts: Sequence[str],
    real_images01: torch.Tensor,
    per_prompt: int = 16,
    seed: int = 0,
    guidance: float = 3.0,
    steps: int = 25,
    retain_samples: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """UA on the concept prompt(s), utility on the retain prompts, and the judge-feature Fréchet and kernel
    distances between the retain generations and real images of the retain captions (percents for UA and
    utility; with few images per caption, prefer ``kid``: ``fid`` is biased when N is near the feature size).

    ``concept`` may be several captions (a prompt-wise worst-case set): UA is then the share of all their
    images in which the judge does not see the caption that image was drawn for. A dict passed as
    ``retain_samples`` receives the retain generations (``images`` in [0, 1], ``prompt_idx``), for further
    metrics on the same images (the CLIP score)."""
    concepts = [concept] if isinstance(concept, str) else list(concept)
    imgs, idx = generate_for_prompts(model, concepts, per_prompt, seed, guidance, steps)
    ua = unlearn_accuracy(_judged(judge, imgs, idx, concepts))
    r_imgs, r_idx = generate_for_prompts(model, list(retain_prompts), per_prompt, seed + 1, guidance, steps)
    if retain_samples is not None:
        retain_samples.update(images=r_imgs, prompt_idx=r_idx)
    ok = _judged(judge, r_imgs, r_idx, list(retain_prompts))
    gen_f, real_f = judge_features(judge, r_imgs), judge_features(judge, real_images01)
    fid = frechet_distance(gen_f, real_f)
    kid = kernel_distance(gen_f, real_f)
    return {"UA": 100 * ua, "utility": 100 * float(ok.float().mean()), "fid": fid, "kid": kid}


def _judged(judge, imgs: torch.Tensor, prompt_idx: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Boolean per image: the judge sees the caption ``prompts[prompt_idx[k]]`` image k was drawn for."""
    schema = judge_schema(judge)
    targets = [schema.parse(p) for p in prompts]
    preds = judge.predict(imgs)
    return torch.stack(
        [recognised([p[k : k + 1] for p in preds], targets[int(i)])[0] for k, i in enumerate(prompt_idx)]
    )

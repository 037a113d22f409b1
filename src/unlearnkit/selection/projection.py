"""Euclidean projection onto the capped simplex S = {w : 0 ≤ w ≤ 1, 1ᵀw = m}.

Unlearn-WorstCase (Fan et al., ECCV 2024, arXiv 2403.07362) keeps its upper variable in S and projects
after every upper step (``utils.bisection`` in the reference code). The KKT conditions of
min_{v∈S} ½‖v − w‖² give v = clamp(w − μ, 0, 1) for the scalar μ that solves

    g(μ) = Σ_i clamp(w_i − μ, 0, 1) = m,

and g is continuous and non-increasing in μ, with g(min w − 1) = N and g(max w) = 0, so bisection on
that bracket finds μ. We bisect in float64 until the bracket is below ``tol`` (or ``max_iter`` halvings;
the reference stops at 1e-5 / 100 iterations), then solve g(μ) = m in closed form on the linear piece
that contains μ (so 1ᵀw = m to rounding), and return clamp(w − μ, 0, 1) in the input dtype.
"""

from __future__ import annotations

import torch

from unlearnkit.errors import UnlearnkitError


def project_capped_simplex(
    w: torch.Tensor, m: float, tol: float = 1e-12, max_iter: int = 200
) -> torch.Tensor:
    """Proj_S(w) for S = {0 ≤ w ≤ 1, Σw = m}; ``w`` is a 1-D tensor, 0 ≤ m ≤ len(w)."""
    if w.ndim != 1:
        raise UnlearnkitError(f"the projection needs a 1-D weight vector, got shape {tuple(w.shape)}")
    n = w.numel()
    if not 0 <= m <= n:
        raise UnlearnkitError(f"the projection needs 0 <= m <= N = {n}, got m = {m}")
    if not torch.isfinite(w).all():
        raise UnlearnkitError("the weights to project contain NaN or infinite values")
    x = w.detach().double()
    lo = float(x.min()) - 1.0  # g(lo) = N >= m
    hi = float(x.max())  # g(hi) = 0 <= m
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if float((x - mid).clamp(0.0, 1.0).sum()) > m:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    mu = _polish(x, 0.5 * (lo + hi), m)
    return (x - mu).clamp(0.0, 1.0).to(w.dtype)


def _polish(x: torch.Tensor, mu: float, m: float) -> float:
    """Solve g(μ) = m exactly on the linear piece around the bisection's μ: with U = {x_i − μ ≥ 1} and
    the free set F = {0 < x_i − μ < 1}, g(μ') = |U| + Σ_F (x_i − μ') = m gives μ' in closed form."""
    d = x - mu
    free = (d > 0) & (d < 1)
    if not bool(free.any()):
        return mu
    exact = (float(x[free].sum()) + int((d >= 1).sum()) - m) / int(free.sum())
    return exact if abs(exact - mu) < 1e-6 else mu


def top_m_indicator(w: torch.Tensor, m: int) -> torch.Tensor:
    """The binarisation of ``w``: 1 on its ``m`` largest entries (ties broken by lower index), else 0."""
    # A stable sort on −w keeps ties in index order, so the result does not depend on the platform.
    order = torch.sort(-w.detach().double(), stable=True).indices[:m]
    out = torch.zeros_like(w)
    out[order] = 1.0
    return out

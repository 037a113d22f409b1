"""SalUn: saliency-masked random labelling (Fan et al., ICLR 2024)."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.methods.rl import RL, RLConfig
from unlearnkit.registry import register_method


@dataclass
class SalUnConfig(RLConfig):
    """README setting for CIFAR-10 random 10%: lr 0.013, 10 epochs, mask ``with_0.5`` (top 50%)."""

    lr: float = 0.013
    mask_ratio: float | None = 0.5


@register_method("salun")
class SalUn(RL):
    """SalUn: RL (Eq. 6) restricted to the top-50% salient weights of |∇θ −ℓ(θ_o; D_f)|, held exactly."""

    paper = "Fan et al., ICLR 2024: saliency map + masked update (§4), RL objective Eq. 6"
    Config = SalUnConfig

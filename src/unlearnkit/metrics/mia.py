"""MIA-Efficacy: SalUn's SVC membership-inference audit on the forget set.

Protocol (Unlearn-Sparse / SalUn ``SVC_MIA``, classification.md §2.2): a shadow attacker
``SVC(C=3, gamma="auto", kernel="rbf")`` is fit on one feature of the model's softmax output, with
members = the first ``len(test)`` retain examples (label 1) and non-members = the test set (label 0).
It then predicts the forget examples; MIA-Efficacy = the share predicted *non-member*
(TN / |D_f|), in percent. Higher means the forget set looks less like training data.

Features: ``confidence`` (p_y, the reported one), ``correctness``, ``entropy``, ``m_entropy``
(modified entropy of Song & Mittal 2021, computed correctly here:
−(1−p_y)·log p_y − Σ_{i≠y} p_i·log(1−p_i); the reference code uses log p for the second term), and
``prob`` (the whole probability vector).
"""

from __future__ import annotations

import numpy as np
import torch

from unlearnkit.errors import ConfigError

FEATURES = ("confidence", "correctness", "entropy", "m_entropy", "prob")
_EPS = 1e-30


def mia_features(logits: torch.Tensor, labels: torch.Tensor, feature: str = "confidence") -> np.ndarray:
    """Attack features, shape [N, d], from logits and true labels."""
    if feature not in FEATURES:
        raise ConfigError(f"unknown MIA feature {feature!r}: choose one of {', '.join(FEATURES)}")
    p = torch.softmax(logits.double(), dim=1)
    y = labels.long()
    py = p.gather(1, y[:, None]).squeeze(1)
    if feature == "confidence":
        f = py[:, None]
    elif feature == "correctness":
        f = (p.argmax(1) == y).double()[:, None]
    elif feature == "entropy":
        f = -(p * torch.log(p.clamp_min(_EPS))).sum(1, keepdim=True)
    elif feature == "m_entropy":
        logp = torch.log(p.clamp_min(_EPS))
        log1mp = torch.log((1 - p).clamp_min(_EPS))
        other = -(p * log1mp)
        other = other.scatter(1, y[:, None], 0.0).sum(1)
        f = (-(1 - py) * logp.gather(1, y[:, None]).squeeze(1) + other)[:, None]
    else:
        f = p
    return f.numpy()


def svc_mia_efficacy(shadow_member: np.ndarray, shadow_nonmember: np.ndarray, target: np.ndarray) -> float:
    """Fit SVC(C=3, rbf, gamma='auto') on member (1) vs non-member (0) features; return the percentage
    of ``target`` rows predicted non-member."""
    from sklearn.svm import SVC

    x = np.concatenate([shadow_member, shadow_nonmember])
    y = np.concatenate([np.ones(len(shadow_member)), np.zeros(len(shadow_nonmember))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(target)
    return float(100.0 * (1.0 - pred.mean()))


def mia_efficacy(
    retain_logits: torch.Tensor,
    retain_labels: torch.Tensor,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    feature: str = "confidence",
) -> float:
    """MIA-Efficacy in percent; shadow members = the first ``len(test)`` retain rows (reference protocol)."""
    n = min(len(retain_labels), len(test_labels))
    member = mia_features(retain_logits[:n], retain_labels[:n], feature)
    nonmember = mia_features(test_logits, test_labels, feature)
    target = mia_features(forget_logits, forget_labels, feature)
    return svc_mia_efficacy(member, nonmember, target)

"""MIA-Efficacy and classifier metrics against direct numpy / scikit-learn computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.svm import SVC
from torch import nn

from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.errors import ConfigError
from unlearnkit.families.vision import VisionFamily
from unlearnkit.metrics.mia import FEATURES, mia_efficacy, mia_features, svc_mia_efficacy
from unlearnkit.metrics.vision import accuracy, avg_gap, evaluate_classifier

torch.set_num_threads(1)

K = 4


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_features(logits: np.ndarray, y: np.ndarray, feature: str) -> np.ndarray:
    p = np_softmax(logits.astype(np.float64))
    rows = np.arange(len(y))
    py = p[rows, y]
    if feature == "confidence":
        return py[:, None]
    if feature == "correctness":
        return (p.argmax(1) == y).astype(np.float64)[:, None]
    if feature == "entropy":
        return -(p * np.log(p)).sum(1)[:, None]
    if feature == "m_entropy":
        other = -(p * np.log(1 - p))
        other[rows, y] = 0.0
        return (-(1 - py) * np.log(py) + other.sum(1))[:, None]
    assert feature == "prob"
    return p


def sets(seed: int = 0):
    """Members are confident and right, non-members less so, the forget set is a mixture."""
    rng = np.random.default_rng(seed)

    def draw(n, boost):
        y = rng.integers(0, K, n)
        z = rng.normal(size=(n, K))
        z[np.arange(n), y] += boost
        return z, y

    retain = draw(60, 4.0)
    test = draw(25, 1.0)
    forget = (np.concatenate([draw(15, 4.0)[0], draw(15, 0.5)[0]]), rng.integers(0, K, 30))
    return retain, test, forget


def t(a):
    return torch.as_tensor(a)


def sklearn_efficacy(member: np.ndarray, nonmember: np.ndarray, target: np.ndarray) -> float:
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(np.concatenate([member, nonmember]), np.r_[np.ones(len(member)), np.zeros(len(nonmember))])
    return 100.0 * float(np.mean(clf.predict(target) == 0))


# -- features ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature", FEATURES)
def test_features_match_numpy(feature):
    (zr, yr), _, _ = sets()
    got = mia_features(t(zr).float(), t(yr), feature)
    want = np_features(zr.astype(np.float32), yr, feature)
    assert got.shape == want.shape == ((len(yr), K) if feature == "prob" else (len(yr), 1))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_m_entropy_on_a_hand_case():
    p = [0.7, 0.2, 0.1]
    logits = torch.log(torch.tensor([p], dtype=torch.float64))
    got = mia_features(logits, torch.tensor([0]), "m_entropy")[0, 0]
    want = -(1 - 0.7) * math.log(0.7) - 0.2 * math.log(1 - 0.2) - 0.1 * math.log(1 - 0.1)
    assert got == pytest.approx(want, rel=1e-12)
    # y = 1: the true-class term uses p_1, the others log(1 − p_i)
    got1 = mia_features(logits, torch.tensor([1]), "m_entropy")[0, 0]
    want1 = -(1 - 0.2) * math.log(0.2) - 0.7 * math.log(0.3) - 0.1 * math.log(0.9)
    assert got1 == pytest.approx(want1, rel=1e-12)
    ent = mia_features(logits, torch.tensor([1]), "entropy")[0, 0]
    assert ent == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-12)
    assert mia_features(logits, torch.tensor([1]), "confidence")[0, 0] == pytest.approx(0.2)
    assert mia_features(logits, torch.tensor([0]), "correctness")[0, 0] == 1.0
    assert mia_features(logits, torch.tensor([2]), "correctness")[0, 0] == 0.0


def test_unknown_feature_raises():
    z, y = torch.zeros(3, K), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ConfigError, match="unknown MIA feature"):
        mia_features(z, y, "loss")
    with pytest.raises(ConfigError):
        mia_efficacy(z, y, z, y, z, y, feature="loss")


# -- the SVC attack ---------------------------------------------------------------------------------
def test_svc_mia_efficacy_matches_sklearn():
    (zr, yr), (zt, yt), (zf, yf) = sets(1)
    m, nm, tg = (
        np_features(zr[:25], yr[:25], "confidence"),
        np_features(zt, yt, "confidence"),
        np_features(zf, yf, "confidence"),
    )
    got = svc_mia_efficacy(m, nm, tg)
    assert got == sklearn_efficacy(m, nm, tg)


@pytest.mark.parametrize("feature", FEATURES)
def test_mia_efficacy_matches_direct_sklearn_computation(feature):
    (zr, yr), (zt, yt), (zf, yf) = sets(2)
    n = len(yt)  # members: the first len(test) retain rows
    want = sklearn_efficacy(
        np_features(zr[:n], yr[:n], feature), np_features(zt, yt, feature), np_features(zf, yf, feature)
    )
    got = mia_efficacy(t(zr), t(yr), t(zt), t(yt), t(zf), t(yf), feature)
    assert got == pytest.approx(want, abs=1e-9)
    if feature == "confidence":
        assert 0.0 < got < 100.0  # an informative case, not a degenerate all-member / all-non-member answer


def test_mia_efficacy_members_are_the_first_len_test_retain_rows():
    (zr, yr), (zt, yt), (zf, yf) = sets(3)
    # rows after len(test) are garbage that would change the attack if they were used
    zr = zr.copy()
    zr[len(yt) :] = -zr[len(yt) :]
    n = len(yt)
    want = sklearn_efficacy(
        np_features(zr[:n], yr[:n], "confidence"),
        np_features(zt, yt, "confidence"),
        np_features(zf, yf, "confidence"),
    )
    all_rows = sklearn_efficacy(
        np_features(zr, yr, "confidence"),
        np_features(zt, yt, "confidence"),
        np_features(zf, yf, "confidence"),
    )
    got = mia_efficacy(t(zr), t(yr), t(zt), t(yt), t(zf), t(yf))
    assert got == pytest.approx(want)
    assert want != all_rows


def test_mia_efficacy_on_obvious_members_and_non_members():
    (zr, yr), (zt, yt), _ = sets(4)
    # forgetting nothing: the forget set looks like the members -> low efficacy; like the test set -> high
    low = mia_efficacy(t(zr), t(yr), t(zt), t(yt), t(zr[30:]), t(yr[30:]))
    high = mia_efficacy(t(zr), t(yr), t(zt), t(yt), t(zt), t(yt))
    assert low < 30.0 < 70.0 < high


# -- UA / RA / TA ------------------------------------------------------------------------------------
def _known_model() -> nn.Linear:
    """logits = (x0, x1, 0): the prediction is set by the input."""
    m = nn.Linear(2, 3)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        m.bias.zero_()
    return m


P0, P1, P2 = [2.0, 0.0], [0.0, 2.0], [-1.0, -1.0]  # inputs predicted as class 0, 1, 2


def _set(xs, ys, start):
    return ExampleSet({"x": torch.tensor(xs), "y": torch.tensor(ys)}, ids=list(range(start, start + len(xs))))


def test_evaluate_classifier_against_hand_counts():
    # forget: 1 of 4 right -> UA 75; retain: 3 of 5 right -> RA 60; test: 2 of 4 right -> TA 50
    forget = _set([P0, P1, P2, P0], [0, 0, 0, 1], 0)
    retain = _set([P0, P1, P2, P0, P1], [0, 1, 2, 2, 2], 10)
    test = _set([P0, P1, P2, P2], [0, 1, 0, 1], 100)
    test_forgotten = _set([P0, P1, P2], [0, 0, 0], 200)
    split = Split(forget, retain, test, test_forgotten=test_forgotten)
    model = _known_model()
    out = evaluate_classifier(
        model, split, VisionFamily(num_classes=3), mia_features=("confidence", "entropy")
    )
    assert out["UA"] == pytest.approx(75.0)
    assert out["RA"] == pytest.approx(60.0)
    assert out["TA"] == pytest.approx(50.0)
    assert out["TA_forgotten"] == pytest.approx(100.0 / 3)

    lf, lr, lt = (model(s.columns["x"]).detach() for s in (forget, retain, test))
    for key, feat in (("MIA", "confidence"), ("MIA_entropy", "entropy")):
        n = min(len(retain), len(test))
        want = sklearn_efficacy(
            np_features(lr.numpy()[:n], retain.labels.numpy()[:n], feat),
            np_features(lt.numpy(), test.labels.numpy(), feat),
            np_features(lf.numpy(), forget.labels.numpy(), feat),
        )
        assert out[key] == pytest.approx(want), key
    assert set(out) == {"UA", "RA", "TA", "MIA", "MIA_entropy", "TA_forgotten"}


def test_evaluate_classifier_without_test_forgotten_and_in_eval_mode():
    forget = _set([P0, P1], [0, 1], 0)
    retain = _set([P0, P1, P2], [1, 1, 1], 10)
    test = _set([P2, P2], [2, 0], 100)
    model = nn.Sequential(_known_model(), nn.Dropout(0.9))  # dropout must be off during evaluation
    model.train()
    out = evaluate_classifier(model, Split(forget, retain, test))
    assert (out["UA"], out["RA"], out["TA"]) == pytest.approx((0.0, 100.0 / 3, 50.0))
    assert "TA_forgotten" not in out
    assert model.training


def test_accuracy():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 0, 0])) == pytest.approx(200.0 / 3)
    assert math.isnan(accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_avg_gap_on_a_hand_case():
    metrics = {"UA": 10.0, "RA": 90.0, "TA": 85.0, "MIA": 20.0, "extra": 1.0}
    oracle = {"UA": 12.0, "RA": 95.0, "TA": 84.0, "MIA": 30.0, "extra": 100.0}
    assert avg_gap(metrics, oracle) == pytest.approx((2 + 5 + 1 + 10) / 4)
    assert avg_gap(metrics, oracle, keys=("UA", "MIA")) == pytest.approx(6.0)
    assert avg_gap(metrics, metrics) == 0.0

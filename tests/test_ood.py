"""OOD scores on Gaussians with known separation."""

import numpy as np
import pytest
from scipy import stats

from keras_m3ae.analysis import MahalanobisDetector
from keras_m3ae.analysis import auroc
from keras_m3ae.analysis import max_softmax_score


def test_mahalanobis_auroc_matches_analytic_value():
    rng = np.random.default_rng(0)
    d, n, s = 4, 6000, 1.5
    # Strongly anisotropic: Euclidean distance would be dominated by axis 0.
    scales = np.array([10.0, 1.0, 0.5, 0.1])
    means = np.array([[0, 0, 0, 0], [0, 0, 0, 3.0]])
    labels = rng.integers(0, 2, n)
    train = means[labels] + rng.normal(size=(n, d)) * scales
    detector = MahalanobisDetector().fit(train, labels)
    assert np.all(np.abs(detector.means_ - means) < 0.3 * scales)
    np.testing.assert_allclose(np.diag(detector.covariance_), scales**2, rtol=0.1)
    # In: class-0 Gaussian; out: same centre, every axis scaled by s. The
    # distance to the class-0 mean is chi2_d, resp. s^2 chi2_d, so
    # AUROC = P(chi2_d < s^2 chi2_d') = F_{d,d}(s^2) (class 1 is far away).
    test_in = rng.normal(size=(n, d)) * scales
    test_out = rng.normal(size=(n, d)) * scales * s
    expected = stats.f.cdf(s**2, d, d)
    assert auroc(detector.score(test_in), detector.score(test_out)) == pytest.approx(expected, abs=0.02)
    # Mean shift along the smallest axis is invisible to Euclidean, obvious here.
    shifted = test_in + np.array([0, 0, 0, -0.3])
    assert auroc(detector.score(test_in), detector.score(shifted)) > 0.8


def test_auroc_of_shifted_gaussian_scores():
    rng = np.random.default_rng(1)
    mu = 1.0
    value = auroc(rng.normal(mu, 1, 20000), rng.normal(0, 1, 20000))
    assert value == pytest.approx(stats.norm.cdf(mu / np.sqrt(2)), abs=0.01)
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auroc([0.0], [1.0]) == 0.0


def test_max_softmax_score_values():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [1000.0, 0.0]])
    np.testing.assert_allclose(max_softmax_score(logits), [0.5, 0.75, 1.0], rtol=1e-12)

"""Power-law fits recover known parameters; compute-optimal picks follow C = 6 N D."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab import ModelConfig, Transformer
from lmlab import scaling as S


def test_fit_recovers_known_parameters():
    x = np.logspace(3, 7, 9)
    y = 1.5 + 40.0 * x ** -0.35
    fit = S.fit_power_law(x, y)
    np.testing.assert_allclose([fit.E, fit.A, fit.alpha], [1.5, 40.0, 0.35], rtol=1e-5)
    assert fit.rmse < 1e-9
    np.testing.assert_allclose(fit(x), y, rtol=1e-9)


def test_fit_with_noise_stays_within_its_standard_error():
    """Noise of 0.002 on 30 points: the fitted curve stays within 3 noise sds of the truth on
    the fitted range, and the rmse matches the noise level."""
    rng = np.random.default_rng(0)
    x = np.logspace(3, 6, 30)
    truth = 2.0 + 8.0 * x ** -0.3
    y = truth + rng.normal(0, 0.002, x.shape)
    fit = S.fit_power_law(x, y)
    assert np.abs(fit(x) - truth).max() < 3 * 0.002
    assert 0.0015 < fit.rmse < 0.0025


def test_fit_survives_points_that_follow_no_power_law():
    """Losses that fall then rise (undertrained large models) once made the Gauss-Newton system
    singular (numpy.linalg.LinAlgError); the fit must still return its best finite parameters."""
    x = np.array([1760.0, 3792.0, 6592.0, 14496.0])  # chapter 8's ci sweep at 40,960 tokens
    y = np.array([2.9345977306365967, 2.9678032398223877, 2.8966197967529297, 3.143539011478424])
    fit = S.fit_power_law(x, y)
    assert np.isfinite([fit.E, fit.A, fit.alpha, fit.rmse]).all()
    assert fit.rmse < np.std(y)  # no worse than a constant


def test_fit_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        S.fit_power_law([1, 2], [3, 4])
    with pytest.raises(ValueError, match="positive"):
        S.fit_power_law([0, 1, 2], [3, 2, 1])
    with pytest.raises(ValueError, match="NaN"):
        S.fit_power_law([1, 2, 3], [3, float("nan"), 1])


def test_compute_optimal_picks_the_lowest_curve_at_each_budget():
    # two models; the small one wins at small compute, the big one at large compute
    small = ([1e3, 1e4, 1e5], [3.0, 2.5, 2.4])
    big = ([1e3, 1e4, 1e5], [3.5, 2.6, 2.0])
    rows = S.compute_optimal({100.0: small, 1000.0: big}, [6 * 100 * 1e4, 6 * 1000 * 1e5, 1e12])
    assert [r["n_params"] for r in rows] == [100.0, 1000.0]  # 1e12 is beyond both curves
    assert rows[0]["tokens"] == pytest.approx(1e4)
    assert rows[0]["tokens_per_param"] == pytest.approx(100)
    assert rows[1]["loss"] == pytest.approx(2.0)
    assert S.loss_at_tokens([1e3, 1e5], [3.0, 2.0], 1e4) == pytest.approx(2.5)  # log-linear
    assert S.training_flops(10, 20) == 1200


def test_non_embedding_parameters():
    config = ModelConfig(vocab_size=30, block_size=8, n_layer=2, n_head=2, d_model=16)
    model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    assert S.non_embedding_parameters(model) == total - 30 * 16 - 8 * 16

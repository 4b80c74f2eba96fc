"""TensorizingFlowDensity in variational mode: a sampler with exact log q, the
ELBO, the effective sample size and log Z, against targets with known log Z."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import GinzburgLandau1D

#: A correlated 2-D Gaussian scaled by exp(1.5): log Z = 1.5 exactly.
COVARIANCE = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
LOG_Z = 1.5


def gaussian_log_target(x: torch.Tensor) -> torch.Tensor:
    distribution = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=x.dtype), COVARIANCE.to(x.dtype)
    )
    return distribution.log_prob(x) + LOG_Z


SMALL = {
    "domain": [[-5.0, 5.0], [-5.0, 5.0]],
    # correlation 0.67 needs rank 12 for TT-cross to reach its 1e-4 tolerance
    "tt_rank": 12,
    "n_basis": 24,
    "n_flow_layers": 2,
    "hidden_units": 16,
    "max_iter": 5,
    "n_iter_no_change": 5,
    "batch_size": 128,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def gaussian_model():
    return TensorizingFlowDensity(log_target=gaussian_log_target, **SMALL).fit()


def test_diagnostics_match_the_known_normaliser(gaussian_model):
    """log Z within 5 reported standard errors (plus 1e-3 for the float32
    evaluation of the points); ESS and ELBO consistent with a near-exact q."""
    model = gaussian_model
    assert abs(model.log_normalizer_ - LOG_Z) < 5 * model.log_normalizer_std_error_ + 1e-3
    assert model.elbo_ <= model.log_normalizer_ + 1e-9
    assert LOG_Z - model.elbo_ < 0.01 and model.ess_ > 0.98
    assert model.n_features_in_ == 2
    assert model.n_target_evaluations_ > model.tt_.cross_report.n_evaluations
    assert len(model.validation_scores_) == model.n_iter_ + 1


def test_model_density_is_normalised(gaussian_model):
    """Trapezoid rule on a 401^2 grid over [-8, 8]^2 (the target's mass
    outside is below 1e-12; the spacing 0.04 resolves unit-width features)."""
    axis = np.linspace(-8.0, 8.0, 401)
    mesh = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    density = np.exp(gaussian_model.score_samples(mesh)).reshape(401, 401)
    total = np.trapezoid(np.trapezoid(density, axis, axis=1), axis)
    assert total == pytest.approx(1.0, abs=1e-3)


def test_sample_and_score_is_consistent(gaussian_model):
    samples, log_q = gaussian_model.sample_and_score(2000, random_state=0)
    np.testing.assert_allclose(log_q, gaussian_model.score_samples(samples), atol=1e-9)
    # 2000 samples: standard error of each covariance entry below 0.03
    np.testing.assert_allclose(np.cov(samples.T), COVARIANCE.numpy(), atol=0.12)


def test_training_keeps_a_state_no_worse_than_the_base(gaussian_model):
    scores = gaussian_model.validation_scores_
    assert max(scores) >= scores[0]


def test_train_base_with_score_function_gradient():
    model = TensorizingFlowDensity(
        log_target=gaussian_log_target, **{**SMALL, "flow": "none", "train_base": True}
    ).fit()
    assert (
        np.isfinite(model.elbo_) and max(model.validation_scores_) >= model.validation_scores_[0]
    )


def test_single_pair_domain_with_n_features():
    model = TensorizingFlowDensity(
        log_target=gaussian_log_target,
        **{**SMALL, "domain": (-5.0, 5.0), "flow": "none"},
        n_features=2,
    ).fit()
    assert model.tt_.n_features == 2
    with pytest.raises(ValueError, match="n_features"):
        TensorizingFlowDensity(log_target=gaussian_log_target, domain=(-5.0, 5.0)).fit()


def test_errors_of_the_variational_mode():
    with pytest.raises(ValueError, match="domain is required"):
        TensorizingFlowDensity(log_target=gaussian_log_target).fit()
    with pytest.raises(ValueError, match="X must be None"):
        TensorizingFlowDensity(log_target=gaussian_log_target, **SMALL).fit(np.zeros((5, 2)))


def test_non_differentiable_target_points_to_flow_none():
    def numpy_log_target(x):
        return gaussian_log_target(torch.as_tensor(x.detach().numpy()))

    with pytest.raises(ValueError, match='flow="none"'):
        TensorizingFlowDensity(log_target=numpy_log_target, **SMALL).fit()
    model = TensorizingFlowDensity(log_target=numpy_log_target, **{**SMALL, "flow": "none"}).fit()
    assert abs(model.log_normalizer_ - LOG_Z) < 0.01


def test_a_raising_target_keeps_its_exception_as_cause():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="log_target raised RuntimeError") as info:
        TensorizingFlowDensity(log_target=broken, **SMALL).fit()
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.slow
def test_ginzburg_landau_quality_with_default_parameters():
    """GinzburgLandau1D(16) with the default model (max_iter capped for time).
    Diagnostics use 10,000 fresh samples: with ESS near 1 the standard error of
    log Z is ~1e-4 and that of a mode mass (20,000 samples) ~0.0035, far inside
    the tolerances 0.01 and 0.03. The flow's bound is compared with the TT
    base's alone on the same draws (same random_state: common random numbers),
    so 1e-3 is well above the noise of the difference."""
    target = GinzburgLandau1D(16)
    model = TensorizingFlowDensity(
        log_target=target.log_prob, domain=target.domain, max_iter=40, random_state=0
    ).fit()
    assert abs(model.log_normalizer_ - target.log_normalizer) < 0.01
    assert target.log_normalizer - model.elbo_ <= 0.02
    assert model.ess_ >= 0.9
    samples = torch.as_tensor(model.sample(20000, random_state=1))
    masses = np.bincount(target.mode_of(samples).numpy(), minlength=2) / 20000
    np.testing.assert_allclose(masses, 0.5, atol=0.03)
    base_alone = TensorizingFlowDensity(
        log_target=target.log_prob, domain=target.domain, flow="none", random_state=0
    ).fit()
    assert model.elbo_ >= base_alone.elbo_ - 1e-3
    assert math.isfinite(model.log_normalizer_std_error_)


def test_refits_in_the_other_mode_drop_stale_attributes(gaussian_model):
    model = clone(gaussian_model)
    model.fit()
    assert hasattr(model, "elbo_")
    model.set_params(log_target=None, domain=None, tt_rank=3, n_basis=8, max_iter=2)
    model.fit(np.random.default_rng(0).normal(size=(200, 2)))
    assert not any(hasattr(model, name) for name in ("elbo_", "ess_", "n_target_evaluations_"))


def test_gaussian_base_needs_no_cross():
    model = TensorizingFlowDensity(
        log_target=gaussian_log_target, **{**SMALL, "base": "gaussian", "max_iter": 20}
    ).fit()
    assert model.tt_ is None and model.n_target_evaluations_ > 0
    assert abs(model.log_normalizer_ - LOG_Z) < 5 * model.log_normalizer_std_error_ + 1e-3


def test_cross_options_reach_tt_cross():
    model = TensorizingFlowDensity(
        log_target=gaussian_log_target,
        cross_options={"cross_method": "two-site", "max_sweeps": 2},
        **{**SMALL, "flow": "none"},
    )
    model.fit()
    report = model.tt_.cross_report
    assert report.n_sweeps <= 2 and len(set(model.tt_.tt_ranks)) > 1
    with pytest.raises(ValueError, match="cross_options cannot set"):
        model.set_params(cross_options={"tt_rank": 3}).fit()


def test_flow_works_in_unit_box_coordinates_on_a_wide_box():
    """On a box of half-width 60 the flow sees [-1, 1]^d (raw coordinates of
    order 60 made Adam's first steps blow the flow up). A coarse base (8
    Legendre functions for a Gaussian of std 8) leaves room that the flow must
    fill: the validation ELBO rises by more than 0.05 nats."""

    def wide_gaussian(x):
        return -0.5 * (x / 8.0).square().sum(dim=1)

    model = TensorizingFlowDensity(
        log_target=wide_gaussian,
        domain=[[-60.0, 60.0]] * 2,
        tt_rank=2,
        n_basis=8,
        n_flow_layers=2,
        hidden_units=16,
        max_iter=10,
        random_state=0,
    ).fit()
    first, last = model.flow_.flows[0], model.flow_.flows[-1]
    torch.testing.assert_close(first.scale, torch.full((2,), 1 / 60, dtype=torch.float64))
    torch.testing.assert_close(last.scale, torch.full((2,), 60.0, dtype=torch.float64))
    assert max(model.validation_scores_) > model.validation_scores_[0] + 0.05

"""TensorizingFlowDensity(feature_bounds=...): data with a known bounded
support, modelled exactly through FixedBoundsMap.

The data are ``tanh`` of a correlated 2-D Gaussian, whose log-density is
exact by the change of variables: it grows without bound at the edges of
(-1, 1)^2, which polynomials on a box cannot follow, and is a Gaussian again
once mapped off the bounds.

Sizes: 2,000 test rows, so the paired standard error of a difference of mean
scores is about 0.005 nats (measured on these fits); the tolerances below are
four or more of those.
"""

from __future__ import annotations

import io
import math

import joblib
import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow import TensorizingFlowDensity
from sktt_flow.flows import FixedBoundsMap
from tests.conftest import requires_cuda
from tests.estimator.test_density import SMALL
from tests.estimator.test_persistence import assert_each_edit_is_refused

MEAN = np.array([1.2, -0.3])
COVARIANCE = np.array([[1.0, 0.5], [0.5, 0.74]])


def tanh_gaussian(n: int, seed: int) -> np.ndarray:
    return np.tanh(np.random.default_rng(seed).multivariate_normal(MEAN, COVARIANCE, size=n))


def true_log_density(x: np.ndarray) -> np.ndarray:
    gaussian = stats.multivariate_normal(MEAN, COVARIANCE)
    return gaussian.logpdf(np.arctanh(x)) - np.log1p(-(x**2)).sum(axis=1)


@pytest.fixture(scope="module")
def data():
    return tanh_gaussian(2000, seed=0), tanh_gaussian(2000, seed=1)


@pytest.fixture(scope="module")
def bounded(data):
    return TensorizingFlowDensity(feature_bounds=(-1, 1), **SMALL).fit(data[0])


def test_bounds_bring_the_model_to_the_truth(bounded, data):
    """Measured: -0.273 per test row with the bounds, -0.384 without, the
    truth -0.258 (paired SE 0.005). Without the bounds map, or with its
    log-Jacobian left out (several nats per row here), this fails."""
    X, X_test = data
    truth = true_log_density(X_test).mean()
    unbounded = TensorizingFlowDensity(**SMALL).fit(X)
    assert bounded.score(X_test) > truth - 0.04
    assert bounded.score(X_test) > unbounded.score(X_test) + 0.08
    assert isinstance(bounded.flow_.flows[-1], FixedBoundsMap)
    companion = bounded.flow_.companion
    if companion is not None:
        assert isinstance(companion.flows[-1], FixedBoundsMap)


def test_density_is_normalised_on_the_open_square(data):
    """Trapezoid rule on a 601^2 grid of (-1, 1)^2 for data well inside (the
    density vanishes at the edges there, so the rule's error is small):
    mass 1 within 2e-3. A log-Jacobian off by a constant changes the mass by
    that factor."""
    rng = np.random.default_rng(3)
    X = 1.0 / (1.0 + np.exp(-rng.multivariate_normal([0.2, -0.1], 0.3 * COVARIANCE, 2000)))
    model = TensorizingFlowDensity(feature_bounds=(0, 1), inference_dtype="float64", **SMALL)
    model.fit(X)
    axis = np.linspace(0.0, 1.0, 601)[1:-1]
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    density = np.exp(model.score_samples(grid)).reshape(axis.size, axis.size)
    total = np.trapezoid(np.trapezoid(density, axis, axis=1), axis)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_samples_stay_inside_and_are_scored_consistently(bounded):
    samples, log_q = bounded.sample_and_score(4000, random_state=0)
    assert np.all((samples > -1) & (samples < 1))
    np.testing.assert_allclose(bounded.score_samples(samples), log_q, rtol=1e-4, atol=1e-4)
    # their law: the first feature's mean and spread within 5 standard
    # errors of the truth's (from 10^6 exact draws)
    reference = tanh_gaussian(1_000_000, seed=9)
    for column in range(2):
        error = reference[:, column].std() / math.sqrt(len(samples))
        assert abs(samples[:, column].mean() - reference[:, column].mean()) < 5 * error


def test_half_bounded_features_and_a_free_one():
    """A positive feature (lower bound 0), one below 2 and a free one: the
    samples respect each bound, the scores are finite inside and -inf on or
    beyond a bound."""
    rng = np.random.default_rng(4)
    X = np.column_stack(
        [rng.lognormal(0.0, 0.7, 1500), 2.0 - rng.exponential(1.0, 1500), rng.normal(size=1500)]
    )
    bounds = [[0.0, np.inf], [-np.inf, 2.0], [-np.inf, np.inf]]
    model = TensorizingFlowDensity(feature_bounds=bounds, **SMALL).fit(X)
    samples = model.sample(3000, random_state=1)
    assert np.all(samples[:, 0] > 0) and np.all(samples[:, 1] < 2)
    assert np.all(np.isfinite(model.score_samples(X[:100])))
    edges = np.array([[0.0, 1.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [1.0, 3.0, 0.0]])
    assert np.all(model.score_samples(edges) == -np.inf)


def test_validation_scores_are_in_the_units_of_the_features(data):
    """The training history reports log-densities of x, the log-Jacobian of
    the bounds included (3.6 nats per row on these data): the last training
    loss is within 0.2 of the model's mean log-density on all rows."""
    X, _ = data
    model = TensorizingFlowDensity(feature_bounds=(-1, 1), base="tt", **SMALL).fit(X)
    assert abs(-model.loss_curve_[-1] - model.score(X)) < 0.2
    assert abs(max(model.validation_scores_) - model.score(X)) < 0.4


def test_a_domain_is_given_in_the_original_units(data):
    """The TT's box is the domain mapped off the bounds and standardised:
    log((1 + x) / (1 - x)) at x = +-0.999999 is +-14.5, before the
    standardisation (the layer before the bounds map), to the float32
    rounding of the training dtype."""
    X, X_test = data
    edge = 0.999999
    model = TensorizingFlowDensity(
        feature_bounds=(-1, 1), domain=[[-edge, edge]] * 2, base="tt", **SMALL
    ).fit(X)
    assert np.isfinite(model.score(X_test))
    standardization = model.flow_.flows[-2]
    mean, scale = standardization.shift.numpy(), standardization.scale.numpy()
    latent_edge = math.log((1 + edge) / (1 - edge))
    np.testing.assert_allclose(model.tt_.low.numpy(), (-latent_edge - mean) / scale, rtol=1e-6)
    np.testing.assert_allclose(model.tt_.high.numpy(), (latent_edge - mean) / scale, rtol=1e-6)
    with pytest.raises(ValueError, match="domain has 2 row"):
        TensorizingFlowDensity(feature_bounds=(-1, 1), domain=[[-2.0, 1.0]] * 2, **SMALL).fit(X)


@pytest.mark.parametrize(
    "bounds, match",
    [
        ([[-1, 1]] * 3, r"shape \(2, 2\) or \(2,\)"),
        ((-1, 1, 2), r"shape \(2, 2\) or \(2,\)"),
        ((1, -1), "feature_bounds: low must be below high"),
        ([[-1, np.nan], [-1, 1]], "NaN"),
        ([["a", 1], [-1, 1]], "must be numbers"),
    ],
)
def test_bad_bounds_are_clear_errors(data, bounds, match):
    with pytest.raises(ValueError, match=match):
        TensorizingFlowDensity(feature_bounds=bounds, **SMALL).fit(data[0])


def test_training_values_on_or_outside_the_bounds_are_refused(bounded, data):
    """And the failed fit leaves the fitted model as it was."""
    X, X_test = data
    before = bounded.score_samples(X_test[:50])
    X_bad = X.copy()
    X_bad[5, 1] = 1.0
    X_bad[7, 1] = 1.5
    with pytest.raises(ValueError, match=r"2 row\(s\) with values on or outside .*\[1\]"):
        bounded.fit(X_bad)
    np.testing.assert_array_equal(bounded.score_samples(X_test[:50]), before)


# ------------------------------------------------------------ variational mode
#: Gamma(3, 1) times Beta(2, 5), unnormalised: log Z in closed form.
SHAPE, BETA_A, BETA_B = 3.0, 2.0, 5.0
GAMMA_BETA_LOG_Z = (
    math.lgamma(SHAPE) + math.lgamma(BETA_A) + math.lgamma(BETA_B) - math.lgamma(BETA_A + BETA_B)
)
GAMMA_BETA_BOUNDS = [[0.0, np.inf], [0.0, 1.0]]


def gamma_beta(x: torch.Tensor) -> torch.Tensor:
    """NaN for x0 < 0 or x1 outside [0, 1]: the fit must never evaluate there."""
    return (
        torch.xlogy(SHAPE - 1, x[:, 0])
        - x[:, 0]
        + torch.xlogy(BETA_A - 1, x[:, 1])
        + torch.xlogy(BETA_B - 1, 1 - x[:, 1])
    )


class RecordingTarget:
    """``gamma_beta`` that records the smallest distance to a bound it saw."""

    def __init__(self):
        self.closest = math.inf

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        distance = torch.stack([x[:, 0], x[:, 1], 1 - x[:, 1]]).detach().amin()
        self.closest = min(self.closest, float(distance))
        return gamma_beta(x)


@pytest.fixture(scope="module")
def gamma_beta_model():
    target = RecordingTarget()
    model = TensorizingFlowDensity(
        log_target=target, n_features=2, feature_bounds=GAMMA_BETA_BOUNDS, random_state=0
    ).fit()
    return model, target


def test_variational_fit_on_a_bounded_support(gamma_beta_model):
    """A positive and a (0, 1) parameter (measured: log Z off by 1e-4, ESS
    1.00; without the bounds the fit stops at the target's NaN outside its
    support). log Z within 5 standard errors (plus 2e-3) of the closed form,
    the target never evaluated on or outside a bound, the draws inside."""
    model, target = gamma_beta_model
    error = abs(model.log_normalizer_ - GAMMA_BETA_LOG_Z)
    assert error < 5 * model.log_normalizer_std_error_ + 2e-3
    assert model.ess_ > 0.95 and GAMMA_BETA_LOG_Z - model.elbo_ < 0.01
    assert target.closest > 0
    assert isinstance(model.flow_.flows[-1], FixedBoundsMap)
    samples, log_q = model.sample_and_score(4000, random_state=1)
    assert np.all(samples[:, 0] > 0) and np.all((samples[:, 1] > 0) & (samples[:, 1] < 1))
    np.testing.assert_allclose(model.score_samples(samples), log_q, rtol=1e-4, atol=1e-4)
    # the law: the Gamma's mean 3 and the Beta's 2/7, within 5 standard errors
    assert abs(samples[:, 0].mean() - SHAPE) < 5 * math.sqrt(SHAPE / len(samples))
    beta_sd = math.sqrt(BETA_A * BETA_B / ((BETA_A + BETA_B) ** 2 * (BETA_A + BETA_B + 1)))
    assert abs(samples[:, 1].mean() - BETA_A / (BETA_A + BETA_B)) < 5 * beta_sd / 63


def test_a_constant_log_density_on_bounded_support():
    """A uniform density written as the check_differentiable message says
    (``c + 0.0 * x.sum(-1)``, support in ``feature_bounds``): log Z is the
    log of the area, within 5 standard errors plus 2e-3, and each coordinate
    of 4,000 draws passes a KS test against the uniform law (p > 1e-3: an
    exact sampler fails one of the two with probability 2e-3; the seeds are
    fixed). Without the bounds the target is not integrable, and with a box
    ``domain`` instead the flow spread its draws to 10^5 and beyond."""
    model = TensorizingFlowDensity(
        log_target=lambda x: 1.5 + 0.0 * x.sum(-1),
        n_features=2,
        feature_bounds=(-1.0, 3.0),
        max_iter=5,
        random_state=0,
    ).fit()
    log_area = 1.5 + math.log(16.0)
    assert abs(model.log_normalizer_ - log_area) < 5 * model.log_normalizer_std_error_ + 2e-3
    samples = model.sample(4000, random_state=1)
    for column in samples.T:
        assert stats.kstest(column, stats.uniform(-1.0, 4.0).cdf).pvalue > 1e-3


def test_variational_bounds_with_a_domain_and_mode_starts():
    """Both in the target's coordinates: the TT's box is the domain mapped
    off the bounds (log 20 for the positive parameter's upper end), and a
    mode start outside the bounds is refused by name."""
    model = TensorizingFlowDensity(
        log_target=gamma_beta,
        domain=[[1e-3, 20.0], [1e-3, 1 - 1e-3]],
        feature_bounds=GAMMA_BETA_BOUNDS,
        random_state=0,
        flow="none",
    ).fit()
    assert (
        abs(model.log_normalizer_ - GAMMA_BETA_LOG_Z) < 5 * model.log_normalizer_std_error_ + 2e-3
    )
    # to the float32 rounding of the training dtype
    np.testing.assert_allclose(model.tt_.high.numpy()[0], math.log(20.0), rtol=1e-6)
    started = TensorizingFlowDensity(
        log_target=gamma_beta,
        n_features=2,
        mode_starts=[[2.0, 0.2]],
        feature_bounds=GAMMA_BETA_BOUNDS,
        random_state=0,
        flow="none",
    ).fit()
    assert (
        abs(started.log_normalizer_ - GAMMA_BETA_LOG_Z)
        < 5 * started.log_normalizer_std_error_ + 2e-3
    )
    with pytest.raises(ValueError, match="mode_starts has 1 row"):
        started.set_params(mode_starts=[[-1.0, 0.2]]).fit()


def test_variational_bounds_persist_and_warm_start(gamma_beta_model, tmp_path):
    model, _ = gamma_beta_model
    x = model.sample(200, random_state=3)
    path = tmp_path / "gamma_beta.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path, log_target=gamma_beta)
    np.testing.assert_array_equal(loaded.score_samples(x), model.score_samples(x))
    np.testing.assert_array_equal(
        loaded.sample(50, random_state=4), model.sample(50, random_state=4)
    )
    loaded.set_params(warm_start=True, max_iter=2).fit()
    assert isinstance(loaded.flow_.flows[-1], FixedBoundsMap)
    assert sum(isinstance(layer, FixedBoundsMap) for layer in loaded.flow_.flows) == 1
    assert (
        abs(loaded.log_normalizer_ - GAMMA_BETA_LOG_Z)
        < 5 * loaded.log_normalizer_std_error_ + 2e-3
    )
    with pytest.raises(ValueError, match="other feature_bounds"):
        loaded.set_params(feature_bounds=[[0.0, np.inf], [0.0, 2.0]]).fit()


def test_draws_clamped_next_to_a_bound_carry_their_own_log_density():
    """Data whose logit spreads over +-35 pile up within 1e-15 of the
    bounds: draws whose z lies beyond float64's resolution of the distance
    to a bound are returned as the value next to it, and their log-density
    is that of the returned point, as score_samples gives it (it was that
    of z, up to 47 nats away)."""
    from scipy.special import expit

    X = expit(11.0 * np.random.default_rng(6).normal(size=(2000, 1)))
    X = X[(X > 0.0) & (X < 1.0)].reshape(-1, 1)
    model = TensorizingFlowDensity(feature_bounds=(0.0, 1.0), flow="none", random_state=0)
    model.fit(X)
    draws, log_density = model.sample_and_score(20_000, random_state=0)
    clamped = (draws == np.nextafter(1.0, 0.0)) | (draws == np.nextafter(0.0, 1.0))
    assert clamped.sum() >= 3
    np.testing.assert_allclose(log_density, model.score_samples(draws), rtol=0, atol=0.5)
    np.testing.assert_allclose(
        log_density[clamped[:, 0]], model.score_samples(draws[clamped[:, 0]]), rtol=1e-12
    )


def test_bounds_too_far_for_float64_to_resolve_the_data_are_refused():
    """Bounds at +-1e15 around standard normal rows: their distances to a
    bound round to 0.125, the model in x was not normalised (its density
    integrated to 10.1) and scored +0.70 per test row against -1.40. At
    +-1e12 (rounding 1.2e-4 of a standard deviation) the fit is exact."""
    X = np.random.default_rng(22).normal(size=(500, 1))
    options = {"flow": "none", "random_state": 0}
    with pytest.raises(ValueError, match=r"feature_bounds of feature 0 .* so far from the data"):
        TensorizingFlowDensity(feature_bounds=(-1e15, 1e15), **options).fit(X)
    with pytest.raises(ValueError, match=r"feature 0 \(-inf, 1e\+15\)"):
        TensorizingFlowDensity(feature_bounds=(-np.inf, 1e15), **options).fit(X)
    # two bounds: the nearer one resolves the rows
    TensorizingFlowDensity(feature_bounds=(0.0, 1e16), **options).fit(np.exp(X))
    near = TensorizingFlowDensity(feature_bounds=(-1e12, 1e12), **options).fit(X)
    plain = TensorizingFlowDensity(**options).fit(X)
    assert abs(near.score(X) - plain.score(X)) < 0.01
    # a constant column (standard deviation 0) has nothing to resolve
    constant = np.c_[np.full(500, 2.0), np.exp(X[:, 0])]
    TensorizingFlowDensity(feature_bounds=(0.0, np.inf), **options).fit(constant)


def test_bounds_given_as_an_array_with_infinities_are_saved(tmp_path):
    """feature_bounds is array-like: a numpy array holding inf is stored as
    a list holds it (strict JSON has no infinities; save() failed on the
    array before)."""
    X = np.random.default_rng(0).gamma(2.0, 1.0, size=(300, 1))
    model = TensorizingFlowDensity(
        feature_bounds=np.array([0.0, np.inf]), flow="none", random_state=0
    ).fit(X)
    path = tmp_path / "array_bounds.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(loaded.feature_bounds, [0.0, np.inf])
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))
    # a numpy scalar's infinity too
    model.set_params(feature_bounds=(0.0, np.float64(np.inf))).save(path)
    assert TensorizingFlowDensity.load(path).feature_bounds == [0.0, np.inf]


def test_variational_bounds_take_a_column_target_and_every_base():
    """A log_target of shape (m, 1), as the contract allows, and the tempered
    and Gaussian bases behind the bounds (measured: log Z off by 0.0000 and
    0.004 +- 0.004)."""

    def as_column(x: torch.Tensor) -> torch.Tensor:
        return gamma_beta(x)[:, None]

    for base in ("tempered", "gaussian"):
        model = TensorizingFlowDensity(
            log_target=as_column,
            n_features=2,
            feature_bounds=GAMMA_BETA_BOUNDS,
            base=base,
            flow="none",
            random_state=0,
        ).fit()
        assert model.base_ == base
        error = abs(model.log_normalizer_ - GAMMA_BETA_LOG_Z)
        assert error < 5 * model.log_normalizer_std_error_ + 2e-3, base


def test_variational_bounds_refuse_symmetry():
    with pytest.raises(ValueError, match="symmetry and feature_bounds"):
        TensorizingFlowDensity(
            log_target=lambda x: -0.5 * (x**2).sum(1),
            n_features=2,
            domain=[[-5, 5]] * 2,
            symmetry="sign_flip",
            feature_bounds=(-10, 10),
        ).fit()


def test_warm_start_keeps_the_bounds(data):
    X, X_test = data
    model = TensorizingFlowDensity(feature_bounds=(-1, 1), **{**SMALL, "max_iter": 3}).fit(X)
    model.set_params(warm_start=True).fit(X)
    assert isinstance(model.flow_.flows[-1], FixedBoundsMap)
    before = model.score_samples(X_test[:50])
    with pytest.raises(ValueError, match="other feature_bounds"):
        model.set_params(feature_bounds=(-2, 2)).fit(X)
    np.testing.assert_array_equal(model.score_samples(X_test[:50]), before)


def test_save_load_and_pickle_keep_scores_and_samples(bounded, data, tmp_path):
    _, X_test = data
    path = tmp_path / "bounded.sktt"
    bounded.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(loaded.feature_bounds, [-1, 1])
    np.testing.assert_array_equal(loaded.score_samples(X_test), bounded.score_samples(X_test))
    np.testing.assert_array_equal(
        loaded.sample(100, random_state=2), bounded.sample(100, random_state=2)
    )
    buffer = io.BytesIO()
    joblib.dump(bounded, buffer)
    buffer.seek(0)
    pickled = joblib.load(buffer)
    np.testing.assert_array_equal(pickled.score_samples(X_test), bounded.score_samples(X_test))


def test_infinite_bounds_survive_the_file(tmp_path):
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.lognormal(size=500), rng.normal(size=500)])
    model = TensorizingFlowDensity(
        feature_bounds=[[0.0, np.inf], [-np.inf, np.inf]], **{**SMALL, "max_iter": 2}
    ).fit(X)
    path = tmp_path / "half.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(
        np.asarray(loaded.feature_bounds, dtype=float), [[0.0, np.inf], [-np.inf, np.inf]]
    )
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))


def test_a_file_whose_bounds_disagree_with_the_parameter_is_refused(bounded, tmp_path):
    path = tmp_path / "bounded.sktt"
    bounded.save(path)
    edits = [
        (lambda metadata: metadata["params"].__setitem__("feature_bounds", [-2, 2]), "bounds"),
        (lambda metadata: metadata["params"].__setitem__("feature_bounds", None), "bounds"),
        (lambda metadata: metadata.__setitem__("bounds_map", "yes"), "bounds_map"),
    ]
    assert_each_edit_is_refused(path, edits, tmp_path)


@requires_cuda
def test_bounds_on_cuda(data, tmp_path):
    """The map onto the bounds sits on the GPU with the model: samples
    inside, scores that agree with the CPU model's law (the same test rows
    within 0.05 nats per row), a file that loads back there."""
    X, X_test = data
    model = TensorizingFlowDensity(feature_bounds=(-1, 1), device="cuda", **SMALL).fit(X)
    assert model.flow_.flows[-1].low.is_cuda
    samples, log_q = model.sample_and_score(2000, random_state=0)
    assert np.all((samples > -1) & (samples < 1))
    np.testing.assert_allclose(model.score_samples(samples), log_q, rtol=1e-4, atol=1e-4)
    truth = true_log_density(X_test).mean()
    assert model.score(X_test) > truth - 0.05
    path = tmp_path / "bounded_cuda.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(loaded.score_samples(X_test), model.score_samples(X_test))

"""GaussianMixtureBase: exact log-density and exact draws.

The log-density is checked against scikit-learn's ``GaussianMixture`` (an
independent implementation, agreement to round-off) and by quadrature in
2-D; the draws by the component frequencies (a chi-square test) and the
per-component moments, with tolerances set by the sample size.
"""

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

import sktt_flow.flows.gaussian as gaussian_module
from sktt_flow.flows import GaussianMixtureBase
from tests.conftest import requires_cuda


def fitted_mixture(n_features=3, seed=0):
    """A full-covariance scikit-learn mixture of three Gaussians fitted to
    three clusters of 100, 200 and 400 rows, and the rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, n_features))
    # unequal clusters, so that the weights are far from uniform (1:2:4)
    rows = np.concatenate(
        [
            centre
            + rng.normal(size=(size, n_features)) @ rng.normal(size=(n_features, n_features)) * 0.5
            for centre, size in zip(centres, (100, 200, 400), strict=True)
        ]
    )
    return GaussianMixture(3, random_state=0).fit(rows), rows


def as_base(mixture):
    return GaussianMixtureBase(
        torch.as_tensor(mixture.weights_),
        torch.as_tensor(mixture.means_),
        torch.as_tensor(np.linalg.cholesky(mixture.covariances_)),
    )


def test_log_prob_matches_scikit_learn():
    mixture, rows = fitted_mixture()
    base = as_base(mixture)
    points = np.concatenate([rows, rows * 3.0])  # far from the components too
    np.testing.assert_allclose(
        base.log_prob(torch.as_tensor(points)).numpy(),
        mixture.score_samples(points),
        rtol=1e-12,
        atol=1e-10,
    )


def test_component_groups_give_the_same_log_density(monkeypatch):
    """The components are standardised in groups bounded by
    MIXTURE_GROUP_ELEMENTS: one component per group (as on a GPU chunk of a
    million rows) gives what all at once gives, to round-off."""
    mixture, rows = fitted_mixture()
    base = as_base(mixture)
    points = torch.as_tensor(rows)
    together = base.log_prob(points)
    monkeypatch.setattr(gaussian_module, "MIXTURE_GROUP_ELEMENTS", rows.shape[1] * len(rows))
    one_by_one = base.log_prob(points)
    torch.testing.assert_close(one_by_one, together, rtol=1e-13, atol=1e-12)


def test_float32_keeps_an_ill_conditioned_component():
    """A covariance of condition number 1e6 (standard deviations 1e-3 and 1
    along two rotated axes) in float32: rounding a point to float32 moves it
    by about 6e-8 * 3 = 2e-7, 2e-4 standard deviations along the narrow axis,
    so the log-density of points a few deviations out can move by about 1e-3.
    Measured: at most 6.4e-4 from the float64 base (a triangular solve per
    component in float32: 4.7e-4); the bound is 2e-3. An inverse factor
    applied wrongly (transposed, or L^T for L^-1) is off by whole nats."""
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    covariance = rotation @ torch.diag(torch.tensor([1e-6, 1.0], dtype=torch.float64)) @ rotation.T
    base = GaussianMixtureBase(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[3.0, -2.0], [0.0, 0.0]], dtype=torch.float64),
        torch.linalg.cholesky(torch.stack([covariance, torch.eye(2, dtype=torch.float64)])),
    )
    generator = torch.Generator().manual_seed(0)
    points = base.sample(2000, generator=generator)
    exact = base.log_prob(points)
    rounded = base.to(torch.float32).log_prob(points.float()).double()
    np.testing.assert_allclose(rounded.numpy(), exact.numpy(), rtol=0, atol=2e-3)


def test_normalised_by_quadrature_in_two_dimensions():
    base = GaussianMixtureBase(
        torch.tensor([0.2, 0.8], dtype=torch.float64),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=torch.float64),
        torch.tensor([[[0.6, 0.0], [0.3, 0.4]], [[1.0, 0.0], [-0.5, 0.7]]], dtype=torch.float64),
    )
    axis = torch.linspace(-8.0, 8.0, 801, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    density = torch.exp(base.log_prob(grid)).reshape(801, 801)
    total = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert float(total) == pytest.approx(1.0, abs=1e-6)


def test_draws_follow_the_mixture():
    """Component frequencies by a chi-square test (3 cells, 2 degrees of
    freedom, p = 0.001 threshold 13.8); each component's mean and covariance
    within 5 standard errors of the true ones at its number of draws."""
    mixture, _ = fitted_mixture(seed=1)
    base = as_base(mixture)
    n_samples = 60_000
    draws = base.sample(n_samples, generator=torch.Generator().manual_seed(0)).numpy()
    # each draw's component, by its largest responsibility (the clusters are far apart)
    labels = mixture.predict(draws)
    counts = np.bincount(labels, minlength=3)
    expected = mixture.weights_ * n_samples
    assert ((counts - expected) ** 2 / expected).sum() < 13.8
    for k in range(3):
        component = draws[labels == k]
        covariance = mixture.covariances_[k]
        standard_errors = np.sqrt(np.diag(covariance) / len(component))
        assert np.all(np.abs(component.mean(0) - mixture.means_[k]) < 5 * standard_errors)
        # var of a sample variance of normals: 2 sigma^4 / n
        variance_errors = np.sqrt(2.0 / len(component)) * np.diag(covariance)
        np.testing.assert_array_less(
            np.abs(np.diag(np.cov(component.T)) - np.diag(covariance)), 5 * variance_errors
        )


def test_draws_do_not_depend_on_the_chunks():
    """One call or chunks of multiples of 16 rows (as the estimator samples):
    the same draws, since each row takes d + 1 normals from one call."""
    mixture, _ = fitted_mixture()
    base = as_base(mixture)
    whole = base.sample(2000, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    chunks = torch.cat(
        [base.sample(704, generator=generator), base.sample(1296, generator=generator)]
    )
    torch.testing.assert_close(chunks, whole, rtol=0, atol=0)


def test_forward_returns_the_log_density_of_its_draws():
    mixture, _ = fitted_mixture()
    base = as_base(mixture)
    z, log_q = base(500, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_q, base.log_prob(z), rtol=0, atol=0)


@requires_cuda
def test_cuda_matches_cpu():
    """On a GPU: scikit-learn's log-density, draws on the GPU's generator with
    the component frequencies of the mixture (the chi-square test above)."""
    mixture, rows = fitted_mixture(seed=1)
    base = as_base(mixture).to("cuda")
    assert base.means.is_cuda and base.cholesky.is_cuda
    np.testing.assert_allclose(
        base.log_prob(torch.as_tensor(rows, device="cuda")).cpu().numpy(),
        mixture.score_samples(rows),
        rtol=1e-12,
        atol=1e-10,
    )
    n_samples = 60_000
    z, log_q = base(n_samples, generator=torch.Generator("cuda").manual_seed(0))
    assert z.is_cuda and log_q.is_cuda
    counts = np.bincount(mixture.predict(z.cpu().numpy()), minlength=3)
    expected = mixture.weights_ * n_samples
    assert ((counts - expected) ** 2 / expected).sum() < 13.8


def test_weights_are_normalised():
    base = GaussianMixtureBase(torch.tensor([2.0, 6.0]), torch.zeros(2, 1), torch.ones(2, 1, 1))
    torch.testing.assert_close(torch.exp(base.log_weights), torch.tensor([0.25, 0.75]))
    assert base.n_components == 2 and base.n_features == 1
    assert float(base.log_prob(torch.zeros(1, 1))) == pytest.approx(-0.5 * math.log(2 * math.pi))


@pytest.mark.parametrize(
    ("weights", "means", "cholesky", "match"),
    [
        ([1.0, 1.0], [[0.0], [1.0]], [[[1.0]]], "cholesky must have shape"),
        ([1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]], "weights must have shape"),
        ([1.0, -1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]], "weights must be finite and positive"),
        ([1.0, 1.0], [[0.0], [1.0]], [[[1.0]], [[0.0]]], "positive diagonal"),
        ([1.0, 1.0], [[0.0], [float("nan")]], [[[1.0]], [[1.0]]], "means must be finite"),
    ],
)
def test_invalid_parameters_are_clear_errors(weights, means, cholesky, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureBase(torch.tensor(weights), torch.tensor(means), torch.tensor(cholesky))

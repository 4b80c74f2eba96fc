"""Fitting a train to samples: the start, the refinement and the quality.

Fit quality is measured on held-out samples of known mixtures against the true
density; with 5,000 test points the standard error of a mean log-likelihood
difference is about 0.01 nats, far below the 0.15-nat budget.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow import TTDistribution
from sktt_flow.tt.algebra import mode_energy_shares, tt_ranks, tt_to_full
from sktt_flow.tt.estimation import (
    coordinate_roughness,
    degree_energy_shares,
    domain_from_samples,
    kmeans,
    separable_mixture_cores,
)
from tests.conftest import random_cores, requires_cuda


class GaussianMixture:
    """A known mixture with exact log-density and samples."""

    def __init__(self, n_features, n_components, correlation, seed):
        rng = np.random.default_rng(seed)
        self.means = rng.uniform(-3, 3, (n_components, n_features))
        factors = rng.normal(size=(n_components, n_features, n_features)) * correlation
        self.covariances = factors @ factors.transpose(0, 2, 1) + 0.3 * np.eye(n_features)
        self.weights = np.full(n_components, 1 / n_components)

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.choice(len(self.weights), n, p=self.weights)
        noise = rng.standard_normal((n, self.means.shape[1]))
        chol = np.linalg.cholesky(self.covariances)
        return self.means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)

    def log_prob(self, x):
        per_component = [
            np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
            for w, m, c in zip(self.weights, self.means, self.covariances, strict=True)
        ]
        return np.logaddexp.reduce(per_component, axis=0)


def held_out_gap(mixture, n_train, **kwargs):
    X = mixture.sample(n_train, seed=1)
    X_test = mixture.sample(5000, seed=2)
    mean, std = X.mean(0), X.std(0)
    distribution = TTDistribution.from_samples((X - mean) / std, random_state=0, **kwargs)
    with torch.no_grad():
        model = distribution.log_prob(torch.as_tensor((X_test - mean) / std)).numpy()
    model = model - np.log(std).sum()  # back to the original coordinates
    truth = mixture.log_prob(X_test)
    gaussian = stats.multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(X_test)
    return truth.mean() - model.mean(), model.mean() - gaussian.mean(), distribution


@pytest.mark.slow
@pytest.mark.parametrize("n_features, n_train", [(2, 10_000), (6, 20_000)])
def test_fit_is_within_015_nats_of_the_truth(n_features, n_train):
    mixture = GaussianMixture(n_features, n_components=4, correlation=0.15, seed=0)
    gap, above_gaussian, distribution = held_out_gap(mixture, n_train)
    assert gap < 0.15, gap
    assert above_gaussian > 0.4, above_gaussian  # four separated modes vs one Gaussian
    history = distribution.training_history
    # Maximum likelihood improved on the optimisation-free start.
    assert max(history.validation_scores) > history.validation_scores[0] + 0.01
    assert history.best_epoch > 0


def test_same_random_state_gives_the_same_train():
    X = GaussianMixture(3, 3, 0.1, seed=3).sample(600, seed=4)
    first = TTDistribution.from_samples(X, tt_rank=3, n_basis=6, max_iter=3, random_state=7)
    second = TTDistribution.from_samples(X, tt_rank=3, n_basis=6, max_iter=3, random_state=7)
    for a, b in zip(first.cores, second.cores, strict=True):
        assert torch.equal(a, b)
    third = TTDistribution.from_samples(X, tt_rank=3, n_basis=6, max_iter=3, random_state=8)
    assert not torch.equal(first.cores[0], third.cores[0])


def test_start_reproduces_separated_product_mixture():
    """For well-separated product components the start alone is already close."""
    rng = np.random.default_rng(5)
    centers = np.array([[-2.0, -2.0, 2.0], [2.0, 2.0, -2.0]])
    labels = rng.integers(2, size=4000)
    X = torch.as_tensor(centers[labels] + 0.4 * rng.standard_normal((4000, 3)))
    low, high = domain_from_samples(X)
    cores = separable_mixture_cores(X, low, high, 16, 2, torch.Generator().manual_seed(0))
    assert tt_ranks(cores) == (1, 2, 2, 1)
    distribution = TTDistribution(cores, torch.stack([low, high], 1).numpy())
    with torch.no_grad():
        model = distribution.log_prob(X).mean().item()
    truth = np.mean(
        np.logaddexp(
            stats.multivariate_normal(centers[0], 0.16 * np.eye(3)).logpdf(X.numpy()),
            stats.multivariate_normal(centers[1], 0.16 * np.eye(3)).logpdf(X.numpy()),
        )
        + np.log(0.5)
    )
    assert truth - model < 0.05


def test_ranks_are_padded_to_the_requested_rank():
    X = torch.randn(500, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    distribution = TTDistribution.from_samples(X, tt_rank=5, n_basis=4, max_iter=0)
    assert distribution.tt_ranks == (1, 4, 5, 4, 1)  # capped by n = 4 at the ends
    one = TTDistribution.from_samples(X[:, :1], tt_rank=5, n_basis=4, max_iter=0)
    assert one.tt_ranks == (1, 1)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(6)
    centers = rng.uniform(-10, 10, (4, 2))
    X = torch.as_tensor(np.repeat(centers, 50, axis=0) + 0.1 * rng.standard_normal((200, 2)))
    labels = kmeans(X, 4, torch.Generator().manual_seed(0))
    for block in labels.reshape(4, 50):
        assert len(set(block.tolist())) == 1
    assert len(set(labels.tolist())) == 4


def test_domain_from_samples_and_constant_columns():
    X = torch.tensor([[0.0, 5.0], [10.0, 5.0]], dtype=torch.float64)
    low, high = domain_from_samples(X)
    np.testing.assert_allclose(low, [-1.0, 4.9])
    np.testing.assert_allclose(high, [11.0, 5.1])
    distribution = TTDistribution.from_samples(
        np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]]), max_iter=2, validation_fraction=0.0
    )
    assert torch.isfinite(distribution.log_prob(torch.tensor([[1.0, 5.0]]).double())).all()


def test_given_domain_is_used():
    X = np.random.default_rng(7).normal(size=(200, 2))
    distribution = TTDistribution.from_samples(X, domain=[[-5, 5], [-6, 6]], max_iter=1)
    np.testing.assert_array_equal(distribution.domain.numpy(), [[-5, 5], [-6, 6]])


@pytest.mark.parametrize(
    "X, kwargs, message",
    [
        ([[0.0, np.nan], [1.0, 2.0]], {}, "NaN or infinity"),
        ([[0.0, 1.0]], {}, "minimum of 2"),
        ([1.0, 2.0, 3.0], {}, "2-D"),
        ([["a", "b"], ["c", "d"]], {}, "real numbers"),
        ([[1 + 1j, 0], [0, 1]], {}, "real numbers"),
        ([[0.0, 1.0], [1.0, 0.0]], {"tt_rank": 0}, "tt_rank"),
        ([[0.0, 1.0], [1.0, 0.0]], {"n_basis": 2.5}, "n_basis"),
        ([[0.0, 1.0], [1.0, 0.0]], {"validation_fraction": 1.0}, "validation_fraction"),
        ([[0.0, 1.0], [1.0, 0.0]], {"domain": [[0, 1]]}, "1 rows"),
        ([[0.0, 1.0], [1.0, 0.0]], {"random_state": "seed"}, "random_state"),
    ],
)
def test_from_samples_errors(X, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TTDistribution.from_samples(X, **kwargs)


def test_float32_fit_and_read_only_input():
    X = np.random.default_rng(8).normal(size=(300, 2))
    X.setflags(write=False)
    distribution = TTDistribution.from_samples(X, dtype=torch.float32, max_iter=2, n_basis=6)
    assert distribution.cores[0].dtype == torch.float32
    assert torch.isfinite(distribution.log_prob(torch.tensor(X, dtype=torch.float32))).all()


@requires_cuda
def test_from_samples_on_cuda():
    mixture = GaussianMixture(3, 3, 0.1, seed=3)
    X, X_test = mixture.sample(3000, seed=4), mixture.sample(2000, seed=5)
    options = {"tt_rank": 4, "n_basis": 10, "max_iter": 30, "random_state": 0}
    gpu = TTDistribution.from_samples(X, device="cuda", **options)
    cpu = TTDistribution.from_samples(X, **options)
    assert gpu.cores[0].is_cuda and gpu.low.is_cuda
    with torch.no_grad():
        gpu_score = gpu.log_prob(torch.as_tensor(X_test, device="cuda")).mean().item()
        cpu_score = cpu.log_prob(torch.as_tensor(X_test)).mean().item()
    # Different random streams on the two devices: close, not identical.
    assert abs(gpu_score - cpu_score) < 0.05
    samples = gpu.sample(5000, generator=torch.Generator("cuda").manual_seed(0))
    assert samples.is_cuda and torch.isfinite(samples).all()


def test_degree_energy_shares_match_the_qr_sweep_and_are_differentiable():
    """Environments give the gauge-invariant shares of mode_energy_shares.

    Fails if a Gram environment is contracted on the wrong bond index or left
    out (the shares then depend on the gauge: the cores here have very
    different scales and are not orthogonal).
    """
    cores = random_cores((1, 3, 4, 2, 1), 6, seed=3)
    cores[1] = cores[1] * 1e5
    cores[2] = cores[2] + 2.0 * cores[2][:, :1, :]  # correlated slices: not orthogonal
    parameters = [core.clone().requires_grad_(True) for core in cores]
    shares = degree_energy_shares(parameters)
    torch.testing.assert_close(shares, mode_energy_shares(cores), rtol=1e-10, atol=1e-12)
    shares[:, -1].sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().max() > 0 for p in parameters)


def test_roughness_is_the_legendre_weighted_energy_of_the_derivatives():
    """R_k = int (1 - t_k^2) (d s / d t_k)^2 / int s^2 on [-1, 1]^2, checked by quadrature.

    Fails for any other weight of the degrees (j^2, or j(j+1) squared) or if
    the coordinates are mixed up.
    """
    n = 7
    cores = random_cores((1, 3, 1), n, seed=4)
    matrix = tt_to_full(cores).numpy()  # C[i, j]
    nodes, weights = np.polynomial.legendre.leggauss(40)
    scale = np.sqrt((2 * np.arange(n) + 1) / 2.0)  # orthonormal on [-1, 1]
    values = np.stack([np.polynomial.legendre.legval(nodes, np.eye(n)[i]) for i in range(n)])
    slopes = np.stack(
        [
            np.polynomial.legendre.legval(nodes, np.polynomial.legendre.legder(np.eye(n)[i]))
            for i in range(n)
        ]
    )
    phi, dphi = scale[:, None] * values, scale[:, None] * slopes  # (n, nodes)
    s = phi.T @ matrix @ phi
    ds_1, ds_2 = dphi.T @ matrix @ phi, phi.T @ matrix @ dphi
    w = weights[:, None] * weights[None, :]
    weight_1 = (1 - nodes**2)[:, None]
    weight_2 = (1 - nodes**2)[None, :]
    expected = (w * (weight_1 * ds_1**2 + weight_2 * ds_2**2)).sum() / (w * s**2).sum()
    roughness = coordinate_roughness(cores)
    assert roughness.shape == (2,)
    assert roughness.sum().item() == pytest.approx(expected, rel=1e-10)
    expected_first = (w * weight_1 * ds_1**2).sum() / (w * s**2).sum()
    assert roughness[0].item() == pytest.approx(expected_first, rel=1e-10)
    # The scale of the cores does not enter.
    torch.testing.assert_close(coordinate_roughness([10.0 * core for core in cores]), roughness)


def test_quantile_box_leaves_a_far_outlier_out():
    """With quantile > 0 one far outlier no longer sets its coordinate's box.

    Fails if the quantile is ignored (the box reaches the outlier) or
    applied to every coordinate's width jointly.
    """
    X = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    X[0, 0] = 1000.0
    bounding_low, bounding_high = domain_from_samples(X)
    low, high = domain_from_samples(X, quantile=0.001)
    assert bounding_high[0] > 1000.0
    assert 3.0 < high[0] < 6.0 and -6.0 < low[0] < -3.0
    # Per coordinate, the box leaves out at most the 0.1% of rows beyond
    # each quantile (the margin brings most of them back).
    outside = ((X < low) | (X > high)).double().mean(dim=0)
    assert outside[0] * len(X) >= 1 and (outside <= 0.002).all()
    assert ((X[1:] >= bounding_low) & (X[1:] <= bounding_high)).all()
    with pytest.raises(ValueError, match="quantile"):
        domain_from_samples(X, quantile=0.5)


def test_degree_energy_shares_have_the_gradient_of_the_full_tensor():
    """The gradient of the shares (the roughness penalty's) against the shares
    computed from the full coefficient tensor, float64, to round-off.

    The environments are divided by their traces as constants to autograd;
    fails if that leaves a term of the gradient out (it is exact only because
    each core's energies share the divisor, which the shares divide out).
    """
    cores = random_cores((1, 3, 3, 3, 2, 1), 4, seed=5)
    cores[1] = cores[1] * 1e4
    weights = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    parameters = [core.clone().requires_grad_(True) for core in cores]
    (degree_energy_shares(parameters) * weights).sum().backward()
    reference = [core.clone().requires_grad_(True) for core in cores]
    energy = tt_to_full(reference).square()
    total = energy.sum()
    dims = range(energy.ndim)
    shares = torch.stack([energy.sum([j for j in dims if j != k]) / total for k in dims])
    (shares * weights).sum().backward()
    for parameter, expected in zip(parameters, reference, strict=True):
        torch.testing.assert_close(parameter.grad, expected.grad, rtol=1e-9, atol=1e-14)

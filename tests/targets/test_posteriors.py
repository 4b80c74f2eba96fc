"""Real posteriors: logistic regression on bundled data and eight schools.

Every value is checked against an implementation written here from the model's
definition with numpy and scipy, sharing no code with the package.
"""

import itertools
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sktt_flow.targets import EightSchools, LogisticRegressionPosterior, Target
from tests.conftest import requires_cuda

DATASETS = ("breast_cancer", "wine")
REFERENCE_FILE = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "posterior_reference.json"
)


@pytest.fixture(scope="module", params=DATASETS)
def logistic(request):
    return LogisticRegressionPosterior(request.param)


def _design_and_labels(dataset):
    """Standardised features with an intercept column, and 0/1 labels, via sklearn."""
    if dataset == "breast_cancer":
        features, labels = datasets.load_breast_cancer(return_X_y=True)
    else:
        features, labels = datasets.load_wine(return_X_y=True)
        labels = (labels == 0).astype(int)
    standardised = StandardScaler().fit_transform(features)
    return np.hstack([np.ones((len(labels), 1)), standardised]), labels


def _logistic_log_posterior(beta, dataset, prior_scale=1.0):
    """The unnormalised log posterior (likelihood times normalised prior), in scipy."""
    design, labels = _design_and_labels(dataset)
    margins = (beta @ design.T) * (2 * labels - 1)
    log_prior = stats.norm.logpdf(beta, scale=prior_scale).sum(-1)
    return special.log_expit(margins).sum(-1) + log_prior


def _near_map(target, m, seed, spread=1.0):
    """Points at ``spread`` Laplace standard deviations around the MAP."""
    rng = np.random.default_rng(seed)
    factor = np.linalg.cholesky(target.laplace_covariance)
    return target.map_estimate + spread * rng.standard_normal((m, target.n_features)) @ factor.T


# -- logistic regression: the density --------------------------------------------------
def test_logistic_log_prob_matches_scipy(logistic):
    """Catches wrong labels, standardisation (ddof), intercept or prior constant."""
    beta = np.vstack([np.zeros(logistic.n_features), _near_map(logistic, 20, seed=0, spread=3)])
    expected = _logistic_log_posterior(beta, logistic.dataset)
    actual = logistic.log_prob(torch.from_numpy(beta)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-12)
    assert isinstance(logistic, Target) and logistic.log_normalizer is None


def test_logistic_prior_scale_enters_as_a_normalised_gaussian():
    target = LogisticRegressionPosterior("wine", prior_scale=2.5)
    beta = _near_map(target, 5, seed=1, spread=2)
    expected = _logistic_log_posterior(beta, "wine", prior_scale=2.5)
    actual = target.log_prob(torch.from_numpy(beta)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_log_prob_is_stable_for_huge_margins(dtype):
    """A naive log(sigmoid) gives -inf (or NaN gradients) once margins pass ~100."""
    target = LogisticRegressionPosterior("wine")
    beta = 200.0 * np.random.default_rng(2).standard_normal((4, target.n_features))
    x = torch.tensor(beta, dtype=dtype, requires_grad=True)
    values = target.log_prob(x)
    values.sum().backward()
    assert values.dtype == dtype and bool(torch.isfinite(values).all())
    assert bool(torch.isfinite(x.grad).all())
    expected = _logistic_log_posterior(beta, "wine")
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(values.detach().double().numpy(), expected, rtol=rtol)


def test_logistic_gradients_gradcheck(logistic):
    """Autograd against finite differences, including beta = 0 (every margin 0),
    where a softplus built from relu/abs would have a wrong subgradient."""
    beta = np.vstack([np.zeros(logistic.n_features), _near_map(logistic, 1, seed=3)])
    x = torch.from_numpy(beta).requires_grad_(True)
    assert torch.autograd.gradcheck(
        logistic.log_prob, (x,), eps=1e-6, atol=1e-6, rtol=1e-6, fast_mode=True
    )


def test_logistic_float32_and_block_boundaries(logistic):
    """float32 in, float32 out; more rows than one evaluation block (a block bug
    drops or repeats rows)."""
    block = (1 << 22) // logistic.n_samples
    beta = _near_map(logistic, block + 3, seed=4, spread=2)
    values = logistic.log_prob(torch.from_numpy(beta))
    assert values.shape == (block + 3,)
    np.testing.assert_allclose(
        values.numpy()[[0, block - 1, block, block + 2]],
        _logistic_log_posterior(beta[[0, block - 1, block, block + 2]], logistic.dataset),
        rtol=1e-12,
    )
    single = logistic.log_prob(torch.from_numpy(beta[:50]).float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), values[:50], rtol=1e-5, atol=1e-4)


@requires_cuda
def test_logistic_on_cuda(logistic):
    x = torch.from_numpy(_near_map(logistic, 8, seed=5)).cuda().requires_grad_(True)
    values = logistic.log_prob(x)
    assert values.device == x.device
    torch.testing.assert_close(values.cpu(), logistic.log_prob(x.detach().cpu()))
    values.sum().backward()
    assert x.grad.device == x.device
    clone = pickle.loads(pickle.dumps(logistic))  # the CUDA copies are not pickled
    assert clone._data_cache == {} and clone._design.device.type == "cpu"


def test_logistic_pickle_round_trip(logistic):
    x = torch.from_numpy(_near_map(logistic, 4, seed=6))
    clone = pickle.loads(pickle.dumps(logistic))
    torch.testing.assert_close(clone.log_prob(x), logistic.log_prob(x))
    assert (
        repr(clone)
        == repr(logistic)
        == (f"LogisticRegressionPosterior(dataset={logistic.dataset!r}, prior_scale=1.0)")
    )


# -- logistic regression: MAP, Laplace, domain -----------------------------------------
def test_logistic_map_has_zero_gradient_and_laplace_is_inverse_negative_hessian(logistic):
    """Checks the closed-form Newton derivatives against autograd of log_prob."""
    mode = torch.from_numpy(logistic.map_estimate).requires_grad_(True)
    (gradient,) = torch.autograd.grad(logistic.log_prob(mode[None]).sum(), mode)
    assert float(gradient.abs().max()) < 1e-9
    hessian = torch.autograd.functional.hessian(
        lambda b: logistic.log_prob(b[None]).sum(), mode.detach()
    ).numpy()
    np.testing.assert_allclose(
        logistic.laplace_covariance @ -hessian, np.eye(logistic.n_features), atol=1e-9
    )
    covariance = logistic.laplace_covariance
    np.testing.assert_array_equal(covariance, covariance.T)
    half = 8.0 * np.sqrt(np.diag(covariance))
    np.testing.assert_allclose(logistic.domain[:, 0], logistic.map_estimate - half, rtol=1e-14)
    np.testing.assert_allclose(logistic.domain[:, 1], logistic.map_estimate + half, rtol=1e-14)


def test_logistic_map_matches_scikit_learn(logistic):
    """sklearn's L2 logistic regression on the same design (intercept as a column,
    so that it is penalised too) minimises ||w||^2 / 2 + C * loss: C = s^2."""
    design, labels = _design_and_labels(logistic.dataset)
    model = LogisticRegression(
        C=1.0, fit_intercept=False, solver="newton-cholesky", tol=1e-12, max_iter=100
    )
    model.fit(design, labels)
    np.testing.assert_allclose(logistic.map_estimate, model.coef_[0], atol=1e-9)


def test_logistic_accessors_return_copies(logistic):
    logistic.map_estimate[0] = 1e9
    logistic.laplace_covariance[0, 0] = 1e9
    assert logistic.map_estimate[0] != 1e9 and logistic.laplace_covariance[0, 0] != 1e9
    assert logistic.feature_names[0] == "intercept"
    assert len(logistic.feature_names) == logistic.n_features


def test_logistic_bad_arguments():
    with pytest.raises(ValueError, match="dataset must be one of"):
        LogisticRegressionPosterior("iris")
    with pytest.raises(ValueError, match="dataset must be one of"):
        LogisticRegressionPosterior(3)
    with pytest.raises(ValueError, match="prior_scale"):
        LogisticRegressionPosterior("wine", prior_scale=0.0)
    with pytest.raises(ValueError, match="columns"):
        LogisticRegressionPosterior("wine").log_prob(torch.zeros(2, 31))


# -- eight schools ---------------------------------------------------------------------
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _eight_schools_log_joint(mu, log_tau, theta):
    """log p(y, mu, tau, theta) + log tau, from scipy's densities."""
    tau = np.exp(log_tau)
    return (
        stats.norm.logpdf(mu, scale=5.0)
        + stats.halfcauchy.logpdf(tau, scale=5.0)
        + log_tau
        + stats.norm.logpdf(theta, loc=mu[:, None], scale=tau[:, None]).sum(1)
        + stats.norm.logpdf(Y, loc=theta, scale=SIGMA).sum(1)
    )


def _eight_schools_points(m, seed):
    rng = np.random.default_rng(seed)
    mu = rng.normal(4.0, 4.0, m)
    log_tau = rng.uniform(-4.0, 3.0, m)
    theta = mu[:, None] + np.exp(log_tau)[:, None] * rng.standard_normal((m, 8))
    return mu, log_tau, theta


def test_eight_schools_log_prob_matches_scipy():
    """Both forms; catches a missing log-Jacobian (of tau, or of theta = mu + tau eta)."""
    mu, log_tau, theta = _eight_schools_points(30, seed=0)
    expected = _eight_schools_log_joint(mu, log_tau, theta)
    centred = torch.from_numpy(np.column_stack([mu, log_tau, theta]))
    np.testing.assert_allclose(EightSchools().log_prob(centred).numpy(), expected, rtol=1e-12)
    eta = (theta - mu[:, None]) / np.exp(log_tau)[:, None]
    noncentred = torch.from_numpy(np.column_stack([mu, log_tau, eta]))
    np.testing.assert_allclose(
        EightSchools(centered=False).log_prob(noncentred).numpy(),
        expected + 8 * log_tau,  # d theta = tau^8 d eta
        rtol=1e-12,
    )


@pytest.mark.parametrize("centered", [True, False])
def test_eight_schools_gradcheck_and_dtypes(centered):
    target = EightSchools(centered)
    mu, log_tau, theta = _eight_schools_points(3, seed=1)
    rest = theta if centered else (theta - mu[:, None]) / np.exp(log_tau)[:, None]
    x = torch.from_numpy(np.column_stack([mu, log_tau, rest])).requires_grad_(True)
    assert torch.autograd.gradcheck(target.log_prob, (x,), eps=1e-6, atol=1e-6, rtol=1e-6)
    corners = torch.from_numpy(target.domain.T.copy())
    single = target.log_prob(corners.float())
    assert single.dtype == torch.float32 and bool(torch.isfinite(single).all())
    torch.testing.assert_close(single.double(), target.log_prob(corners), rtol=1e-5, atol=1e-3)


@requires_cuda
def test_eight_schools_on_cuda():
    target = EightSchools()
    x = target.sample(16, random_state=0).cuda().requires_grad_(True)
    values = target.log_prob(x)
    values.sum().backward()
    assert values.device == x.device and x.grad.device == x.device
    torch.testing.assert_close(values.cpu(), target.log_prob(x.detach().cpu()))
    pickle.loads(pickle.dumps(target))


def test_eight_schools_centred_form_has_no_mode():
    """Along theta_j = mu the density grows like tau^-7 as log tau -> -inf (the
    benchmark's Laplace method relies on this being detected, not hidden)."""
    target = EightSchools()
    x = torch.zeros(4, 10, dtype=torch.float64)
    x[:, 0] = 4.0
    x[:, 2:] = 4.0
    x[:, 1] = torch.tensor([-5.0, -10.0, -20.0, -40.0])
    values = target.log_prob(x).numpy()
    np.testing.assert_allclose(np.diff(values), 7 * np.array([5.0, 10.0, 20.0]), rtol=1e-6)


def _log_evidence_by_nested_quad():
    """log Z with theta integrated analytically but mu numerically (300-node
    Gauss–Legendre in mu, exact for these Gaussians of std >= 3 on [-40, 50],
    inside scipy's adaptive quad in log tau): a reduction different from the
    class's, which integrates mu in closed form."""
    mu_nodes, mu_weights = np.polynomial.legendre.leggauss(300)
    mu, mu_weights = 45.0 * mu_nodes + 5.0, 45.0 * mu_weights

    def over_mu(log_tau):
        scale = np.sqrt(SIGMA**2 + math.exp(2.0 * log_tau))
        log_integrand = (
            stats.norm.logpdf(mu, scale=5.0)
            + stats.norm.logpdf(Y, loc=mu[:, None], scale=scale).sum(1)
            + stats.halfcauchy.logpdf(math.exp(log_tau), scale=5.0)
            + log_tau
            + 31.0  # keeps the integrand near 1 (log Z is about -31)
        )
        return mu_weights @ np.exp(log_integrand)

    pieces = [-40.0, -10.0, -3.0, 0.0, 2.0, 4.0, 12.0]
    total = sum(
        integrate.quad(over_mu, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
        for a, b in itertools.pairwise(pieces)
    )
    return math.log(total) - 31.0


def test_eight_schools_log_normalizer_matches_nested_quadrature():
    assert EightSchools().log_normalizer == pytest.approx(_log_evidence_by_nested_quad(), abs=1e-8)
    assert EightSchools(centered=False).log_normalizer == EightSchools().log_normalizer


@pytest.mark.parametrize("centered", [True, False])
def test_eight_schools_log_normalizer_by_importance_sampling(centered):
    """Brute force on the full 10-D density: (mu, log tau) from Student-t's, theta
    given them from the prior N(mu, tau^2) (eta ~ N(0, 1) in the non-centred form),
    so that every weight is bounded. Tolerance: 4 delta-method standard errors
    (0.003 each with 200,000 draws: ESS 0.47)."""
    target = EightSchools(centered)
    rng = np.random.default_rng(7)
    n = 200_000
    mu_q = stats.t(df=5, loc=4.4, scale=4.0)
    log_tau_q = stats.t(df=5, loc=0.8, scale=1.5)
    mu, log_tau = mu_q.rvs(n, random_state=rng), log_tau_q.rvs(n, random_state=rng)
    eta = rng.standard_normal((n, 8))
    rest = mu[:, None] + np.exp(log_tau)[:, None] * eta if centered else eta
    log_q = mu_q.logpdf(mu) + log_tau_q.logpdf(log_tau) + stats.norm.logpdf(eta).sum(1)
    if centered:  # density of theta = mu + tau eta
        log_q = log_q - 8 * log_tau
    x = torch.from_numpy(np.column_stack([mu, log_tau, rest]))
    log_w = target.log_prob(x).numpy() - log_q
    estimate = special.logsumexp(log_w) - math.log(n)
    weights = np.exp(log_w - log_w.max())
    ess = weights.sum() ** 2 / (weights**2).sum()
    std_error = math.sqrt((n / ess - 1) / (n - 1))
    assert std_error < 0.005
    assert abs(estimate - target.log_normalizer) < 4 * std_error


def _log_tau_marginal(log_tau):
    """p(log tau | y) up to Z, written out (theta and mu integrated analytically)."""
    variance = SIGMA**2 + np.exp(2.0 * np.asarray(log_tau))[..., None]
    precision = 1 / 25 + np.sum(1 / variance, -1)
    mean = np.sum(Y / variance, -1) / precision
    log_like = (
        stats.norm.logpdf(Y, loc=mean[..., None], scale=np.sqrt(variance)).sum(-1)
        + stats.norm.logpdf(mean, scale=5.0)
        + 0.5 * np.log(2 * math.pi / precision)
    )
    return log_like + stats.halfcauchy.logpdf(np.exp(log_tau), scale=5.0) + log_tau


def _mixture_moments_over_log_tau():
    """Posterior mean and standard deviation of every coordinate, by quadrature over
    log tau of the conditional Gaussians of mu and theta, and the normalised weights."""
    nodes, weights = np.polynomial.legendre.leggauss(400)
    log_tau = 26.0 * nodes - 14.0  # [-40, 12]
    weights = 26.0 * weights * np.exp(_log_tau_marginal(log_tau) + 31.0)
    weights /= weights.sum()
    variance = SIGMA**2 + np.exp(2 * log_tau)[:, None]
    precision = 1 / 25 + np.sum(1 / variance, 1)
    mu_mean, mu_var = np.sum(Y / variance, 1) / precision, 1 / precision
    shrink = np.exp(2 * log_tau)[:, None] / variance  # theta = shrink y + (1 - shrink) mu + ...
    theta_mean = shrink * Y + (1 - shrink) * mu_mean[:, None]
    theta_var = shrink * SIGMA**2 + (1 - shrink) ** 2 * mu_var[:, None]
    means = np.column_stack([mu_mean, log_tau, theta_mean])
    second = np.column_stack([mu_mean**2 + mu_var, log_tau**2, theta_mean**2 + theta_var])
    mean = weights @ means
    return mean, np.sqrt(weights @ second - mean**2), (log_tau, weights, theta_mean, theta_var)


def test_eight_schools_exact_samples():
    """Means and standard deviations of 20,000 draws against quadrature (5 standard
    errors each, that of a std from the sample kurtosis), and a KS test of log tau
    against its marginal CDF; catches a wrong conditional of mu or theta."""
    target = EightSchools()
    n = 20_000
    samples = target.sample(n, random_state=0).numpy()
    mean, std, _ = _mixture_moments_over_log_tau()
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * std / math.sqrt(n))
    kurtosis = stats.kurtosis(samples, axis=0, fisher=False)
    std_error_of_std = std * np.sqrt((kurtosis - 1) / (4 * n))
    np.testing.assert_array_less(np.abs(samples.std(0) - std), 5 * std_error_of_std)
    grid = np.linspace(-40.0, 12.0, 200_001)
    density = np.exp(_log_tau_marginal(grid) + 31.0)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
    cdf /= cdf[-1]
    result = stats.kstest(samples[:, 1], lambda v: np.interp(v, grid, cdf))
    assert result.pvalue > 1e-3
    noncentred = EightSchools(centered=False).sample(1000, random_state=0).numpy()
    same = target.sample(1000, random_state=0).numpy()  # the same noise, centred
    eta = (same[:, 2:] - same[:, :1]) / np.exp(same[:, 1:2])
    np.testing.assert_allclose(noncentred[:, :2], same[:, :2])
    np.testing.assert_allclose(noncentred[:, 2:], eta, rtol=1e-9, atol=1e-9)


def test_eight_schools_domain_holds_the_documented_mass():
    """Mass outside the box by coordinate, from the mixture over log tau: the
    docstring's numbers (2e-4 in all) must stay true if the box is edited."""
    _, _, (_, weights, theta_mean, theta_var) = _mixture_moments_over_log_tau()
    target = EightSchools()
    (mu_low, mu_high), (u_low, u_high) = target.domain[0], target.domain[1]

    def mass(a, b):
        return integrate.quad(lambda u: math.exp(_log_tau_marginal(u) + 31.0), a, b)[0]

    total = mass(-40.0, 0.8) + mass(0.8, 12.0)
    below, above = mass(-40.0, u_low) / total, mass(u_high, 12.0) / total
    assert 1.8e-4 < below < 1.9e-4 and 1.4e-6 < above < 1.5e-6
    theta_low, theta_high = target.domain[2]
    scale = np.sqrt(theta_var)
    outside = weights @ (
        stats.norm.cdf(theta_low, theta_mean, scale) + stats.norm.sf(theta_high, theta_mean, scale)
    )
    assert outside.max() < 1e-5
    assert np.all(target.domain[2:] == target.domain[2])
    assert mu_low < -15 and mu_high > 25  # 4.4 +- 3.3: over 6 sd each way


def test_eight_schools_arguments_and_repr():
    assert repr(EightSchools()) == "EightSchools(centered=True)"
    assert repr(EightSchools(centered=False)) == "EightSchools(centered=False)"
    with pytest.raises(TypeError, match="centered"):
        EightSchools("yes")
    with pytest.raises(ValueError, match="columns"):
        EightSchools().log_prob(torch.zeros(2, 9))


# -- the reference file of benchmarks/reference_log_z.py --------------------------------
def test_reference_file_agrees_with_the_classes():
    """The script re-implements the models without sktt_flow: its MAPs, boxes and
    eight-schools values must agree with the classes (a drift in either shows here)."""
    if not REFERENCE_FILE.exists():
        pytest.skip("benchmarks/results/posterior_reference.json is not in this checkout")
    reference = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))
    entries = reference["targets"]
    for dataset in DATASETS:
        entry = entries[f"logreg-{dataset}"]
        target = LogisticRegressionPosterior(dataset, prior_scale=entry["prior_scale"])
        assert entry["n_features"] == target.n_features
        assert entry["std_error"] <= 0.01 and math.isfinite(entry["log_z"])
        np.testing.assert_allclose(entry["map_estimate"], target.map_estimate, atol=1e-8)
        np.testing.assert_allclose(entry["domain"], target.domain, atol=1e-8)
    for key, centered in (("eight-schools", True), ("eight-schools-noncentered", False)):
        entry = entries[key]
        target = EightSchools(centered)
        assert entry["log_z_quadrature"] == pytest.approx(target.log_normalizer, abs=1e-8)
        assert abs(entry["log_z"] - target.log_normalizer) < 5 * entry["std_error"]
        np.testing.assert_array_equal(entry["domain"], target.domain)

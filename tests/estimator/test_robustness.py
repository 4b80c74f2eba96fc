"""Bad input, numerical faults, interruption and parallel model selection:
clear errors, and a fitted model that nothing of this can break."""

from __future__ import annotations

import os
from unittest import mock

import joblib
import normflows as nf
import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_info, threadpool_limits

from sktt_flow import TensorizingFlowDensity
from sktt_flow.flows import TensorizingFlow
from sktt_flow.utils.threads import thread_limit

SMALL = {
    "tt_rank": 3,
    "n_basis": 8,
    "n_flow_layers": 2,
    "hidden_units": 8,
    "max_iter": 3,
    "random_state": 0,
}
VARIATIONAL = {**SMALL, "domain": [[-4.0, 4.0], [-4.0, 4.0]], "tt_rank": 6, "n_basis": 16}


def standard_normal_log_target(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(dim=1)


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(300, 2)) * [1.0, 3.0]


@pytest.fixture
def fitted(X):
    return TensorizingFlowDensity(**SMALL).fit(X)


def assert_unchanged(model, before_scores, before_keys, X):
    assert set(vars(model)) == before_keys
    np.testing.assert_array_equal(model.score_samples(X[:50]), before_scores)


# ------------------------------------------------------------------ bad data
BAD_DATA = {
    "nan": (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), "NaN"),
    "inf": (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 7, np.inf, X), "infinity"),
    "empty": (lambda X: X[:0], "0 sample"),
    "one sample": (lambda X: X[:1], "minimum of 2"),
    "1-D": (lambda X: X[:, 0], "2D array"),
    "3-D": (lambda X: X[:, :, None], "dim 3"),
    "complex": (lambda X: X + 1j, "omplex"),
    "strings": (lambda X: X.astype(str).astype(object) + "a", "could not convert|string"),
    "sparse": (lambda X: scipy.sparse.csr_matrix(X), "dense data is required"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_a_clear_error_and_keeps_the_model(case, fitted, X):
    make_bad, message = BAD_DATA[case]
    before, keys = fitted.score_samples(X[:50]), set(vars(fitted))
    with pytest.raises((ValueError, TypeError), match=message):
        fitted.fit(make_bad(X))
    assert_unchanged(fitted, before, keys, X)


def test_wrong_number_of_features_when_scoring(fitted, X):
    message = "X has 3 features, but TensorizingFlowDensity is expecting 2 features"
    for method in (fitted.score_samples, fitted.score):
        with pytest.raises(ValueError, match=message):
            method(np.hstack([X, X[:, :1]]))


# ------------------------------------------------------------ bad parameters
BAD_PARAMETERS = [
    ("tt_rank", 0),
    ("tt_rank", -2),
    ("tt_rank", 2.5),
    ("tt_rank", "many"),
    ("n_basis", 1),
    ("smoothness", -1.0),
    ("smoothness", "high"),
    ("max_iter", -1),
    ("max_iter", 3.0),
    ("validation_fraction", 1.0),
    ("validation_fraction", -0.1),
    ("flow", "glow"),
    ("device", "tpu"),
    ("device", "cuda:x"),
    ("dtype", "float16"),
    ("learning_rate", 0.0),
    ("log_target", "not callable"),
    ("mass_covering_batch_size", 0),
]


@pytest.mark.parametrize(("name", "value"), BAD_PARAMETERS)
def test_invalid_parameters_name_the_parameter(name, value, fitted, X):
    before, keys = fitted.score_samples(X[:50]), set(vars(fitted))
    model = fitted.set_params(**{name: value})
    with pytest.raises(ValueError, match=f"'{name}' parameter of TensorizingFlowDensity"):
        model.fit(X)
    model.set_params(**{name: SMALL.get(name, TensorizingFlowDensity().get_params()[name])})
    assert_unchanged(fitted, before, keys, X)


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ([[1.0, -1.0], [0.0, 1.0]], "low < high"),
        ([[-1.0, 1.0]] * 3, "3 rows but there are 2 features"),
        ([[-1.0, np.inf], [0.0, 1.0]], "finite"),
    ],
)
def test_bad_domain(domain, message, fitted, X):
    before, keys = fitted.score_samples(X[:50]), set(vars(fitted))
    with pytest.raises(ValueError, match=message):
        fitted.set_params(domain=domain).fit(X)
    fitted.set_params(domain=None)
    assert_unchanged(fitted, before, keys, X)


def test_too_few_samples_for_the_validation_split(X):
    with pytest.raises(ValueError, match="validation_fraction"):
        TensorizingFlowDensity(**SMALL, validation_fraction=0.5).fit(X[:3])


# ------------------------------------------------------------ bad log_target
def wrong_shape(x):
    return standard_normal_log_target(x)[:-1]


def returns_nan(x):
    values = standard_normal_log_target(x)
    return torch.where(x[:, 0] > 1.0, torch.nan, values)


def returns_plus_inf(x):
    values = standard_normal_log_target(x)
    return torch.where(x[:, 0] > 1.0, torch.inf, values)


class TargetError(Exception):
    pass


def raises(x):
    raise TargetError("the simulator crashed")


@pytest.mark.parametrize(
    ("log_target", "message"),
    [
        (wrong_shape, "must return .* values for a batch of"),
        (returns_nan, "returned NaN or \\+inf"),
        (returns_plus_inf, "returned NaN or \\+inf"),
        (raises, "log_target raised TargetError on a batch of \\d+ float32 points"),
    ],
)
def test_bad_log_target_is_a_clear_error(log_target, message):
    fitted = TensorizingFlowDensity(log_target=standard_normal_log_target, **VARIATIONAL).fit()
    before = fitted.score_samples(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=message) as info:
        fitted.set_params(log_target=log_target).fit()
    if log_target is raises:
        assert isinstance(info.value.__cause__, TargetError)
    np.testing.assert_array_equal(fitted.score_samples(np.zeros((3, 2))), before)


_FLOAT32_PRECISION = torch.tensor([[1.0, 0.3], [0.3, 0.5]]).inverse()


def float32_constants_log_target(x):
    """A Gaussian written with a float32 matrix: fine on float32 points only."""
    return -0.5 * ((x @ _FLOAT32_PRECISION) * x).sum(dim=1)


def test_float64_points_of_the_mode_search_are_named_in_the_error():
    """With an automatic box the mode search calls log_target on float64
    points (documented in the contract); a target that can only take float32
    fails there with an error that says which dtype it was given, and fits
    on an explicit box, where it receives float32 while training; the final
    diagnostics, which evaluate it on float64 draws, then fall back to
    float32 with a warning."""
    with pytest.warns(UserWarning, match="failed on the model's float64 draws"):
        model = TensorizingFlowDensity(log_target=float32_constants_log_target, **VARIATIONAL)
        model.fit()
    assert np.isfinite(model.log_normalizer_)
    automatic = {**VARIATIONAL, "domain": "auto", "n_features": 2}
    with pytest.raises(ValueError, match=r"on a batch of \d+ float64 points"):
        TensorizingFlowDensity(log_target=float32_constants_log_target, **automatic).fit()


# ---------------------------------------------------------- numerical faults
class _NaNGradientOutsideTheUnitBall(torch.autograd.Function):
    """Finite values, NaN gradients wherever |x| > 1: a target whose gradient
    breaks down in a region that the samples visit at every step."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return -0.5 * x.square().sum(dim=1)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        gradient = -x * grad_output[:, None]
        outside = x.square().sum(dim=1, keepdim=True) > 1.0
        return torch.where(outside, torch.nan, gradient)


def nan_gradient_log_target(x):
    return _NaNGradientOutsideTheUnitBall.apply(x)


def test_non_finite_gradients_stop_with_a_warning_and_a_valid_model():
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        model = TensorizingFlowDensity(
            log_target=nan_gradient_log_target, **{**VARIATIONAL, "max_iter": 10}
        ).fit()
    base_alone = TensorizingFlowDensity(
        log_target=nan_gradient_log_target, **{**VARIATIONAL, "flow": "none"}
    ).fit()
    points = np.random.default_rng(1).normal(size=(100, 2))
    scores = model.score_samples(points)
    assert np.isfinite(scores).all() and np.isfinite(model.elbo_)
    # no step was taken: the flow is still the identity, the model is its base
    np.testing.assert_allclose(scores, base_alone.score_samples(points), atol=1e-12)


def test_keyboard_interrupt_keeps_the_best_state(X, monkeypatch):
    calls = {"n": 0}
    forward_kld = TensorizingFlow.forward_kld

    def interrupted_after_ten_steps(self, x):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return forward_kld(self, x)

    monkeypatch.setattr(TensorizingFlow, "forward_kld", interrupted_after_ten_steps)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        model = TensorizingFlowDensity(**{**SMALL, "max_iter": 50}).fit(X)
    assert np.isfinite(model.score(X)) and model.n_iter_ < 50
    assert model.sample(5, random_state=0).shape == (5, 2)


def test_keyboard_interrupt_before_training_keeps_the_previous_model(fitted, X, monkeypatch):
    before, keys = fitted.score_samples(X[:50]), set(vars(fitted))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sktt_flow.tt.distribution.TTDistribution.from_samples", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fitted.fit(X)
    assert_unchanged(fitted, before, keys, X)


# ------------------------------------------------------------------ threads
class ThreadCountingIdentity(nf.flows.Flow):
    """An identity layer that records torch's thread count when the flow is built."""

    def __init__(self):
        super().__init__()
        self.threads = torch.get_num_threads()

    def forward(self, z):
        return z, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def inverse(self, x):
        return self.forward(x)


def thread_counting_flow(n_features):
    return [ThreadCountingIdentity()]


def test_fit_caps_torch_threads_at_the_callers_limit(X):
    previous = torch.get_num_threads()
    with threadpool_limits(1):
        model = TensorizingFlowDensity(**{**SMALL, "flow": thread_counting_flow}).fit(X)
    assert model.flow_.flows[0].threads == 1
    assert torch.get_num_threads() == previous


def test_n_jobs_sets_torch_threads_in_fit(X):
    """n_jobs=None (the default) fits with one thread whatever torch's own
    setting, as scikit-learn reads None; an int asks for that many, within
    the caller's limits; torch's setting is restored after. Fails if fit
    runs with torch's default threads (two on a two-core machine, where
    that made a default fit 3.3 times slower under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        default = TensorizingFlowDensity(**{**SMALL, "flow": thread_counting_flow}).fit(X)
        assert default.flow_.flows[0].threads == 1
        assert torch.get_num_threads() == 2
        two = TensorizingFlowDensity(**{**SMALL, "flow": thread_counting_flow, "n_jobs": 2})
        assert two.fit(X).flow_.flows[0].threads == min(2, thread_limit())
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ValueError, match=r"'n_jobs' parameter .* Got 0"):
        TensorizingFlowDensity(**{**SMALL, "n_jobs": 0}).fit(X)


def test_joblib_workers_do_not_oversubscribe(X):
    """loky gives each of 2 workers cpu_count // 2 threads; torch inside fit
    must not use more."""

    def fit_and_count(seed):
        model = TensorizingFlowDensity(**{**SMALL, "flow": thread_counting_flow})
        return model.set_params(random_state=seed).fit(X).flow_.flows[0].threads

    counts = joblib.Parallel(n_jobs=2)(joblib.delayed(fit_and_count)(seed) for seed in (0, 1))
    assert max(counts) <= max(1, (os.cpu_count() or 1) // 2)


def test_grid_search_with_two_jobs_matches_one_job(X):
    grid = {"tt_rank": [1, 3]}
    serial = GridSearchCV(TensorizingFlowDensity(**SMALL), grid, cv=2).fit(X)
    parallel = GridSearchCV(TensorizingFlowDensity(**SMALL), grid, cv=2, n_jobs=2).fit(X)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )


@pytest.mark.slow
def test_grid_search_on_a_dask_cluster(X):
    """A LocalCluster with two worker processes: the same scores as in
    process (each fit is deterministic given random_state)."""
    distributed = pytest.importorskip("dask.distributed")
    grid = {"tt_rank": [1, 3]}
    serial = GridSearchCV(TensorizingFlowDensity(**SMALL), grid, cv=2).fit(X)
    # The nanny sets OMP_NUM_THREADS=1 (and more) in this process's
    # environment to pass it to its workers, and leaves it there: every later
    # test would run with one thread.
    with (
        mock.patch.dict(os.environ),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_config(backend="dask"),
    ):
        search = GridSearchCV(TensorizingFlowDensity(**SMALL), grid, cv=2, n_jobs=-1).fit(X)
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    assert clone(search.best_estimator_).get_params()["tt_rank"] in (1, 3)


def test_fit_caps_the_blas_of_the_companions_mixture_search(two_threads, monkeypatch):
    """The Gaussian mixtures of the companion's search (numpy's BLAS, and
    scikit-learn's OpenMP k-means for their starts) run with the estimator's
    one thread, not one per core: n_jobs=None means one core for the whole
    fit. Fails if fit caps torch alone."""
    seen = []
    original_fit = GaussianMixture.fit

    def recording_fit(self, *args, **kwargs):
        seen.append({library["num_threads"] for library in threadpool_info()})
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(GaussianMixture, "fit", recording_fit)
    rows = np.random.default_rng(1).normal(size=(400, 2))
    rows[:200] += 4.0  # two clusters: the search fits mixtures
    TensorizingFlowDensity(**{**SMALL, "max_iter": 1}).fit(rows)
    assert seen, "the companion's mixture search did not run"
    assert all(counts == {1} for counts in seen)

"""The adversarial suite: inputs that look harmless and once gave silent
garbage or errors that did not name the problem (issue 12).

Each case names the bug it catches. The central check is an invariance: the
model of ``a * X + b`` is the model of ``X`` moved by the same affine map, so
its log-densities are those of ``X`` minus ``sum(log a)``, whatever the offset
``b`` and the scale ``a`` (standardisation in float64 makes the standardised
data equal up to rounding). Converting raw features to float32 before
standardising broke this by tens of thousands of nats.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.mixture import GaussianMixture

from sktt_flow import TensorizingFlowDensity

SMALL = {
    "tt_rank": 3,
    "n_basis": 8,
    "n_flow_layers": 2,
    "hidden_units": 8,
    "max_iter": 3,
    "random_state": 0,
}
BOX = [[-4.0, 4.0], [-4.0, 4.0]]


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(300, 2)) * [1.0, 0.5]


@pytest.fixture(scope="module")
def reference_scores(X):
    """Scores of models of X itself, per dtype."""
    return {
        dtype: TensorizingFlowDensity(**SMALL, dtype=dtype).fit(X).score_samples(X)
        for dtype in ("float32", "float64")
    }


def standard_normal_log_target(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(dim=1)


# ----------------------------------------------------- offsets and scales
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("scale", "offset"),
    [
        ([1.0, 1.0], [1e3, 1e3]),
        ([1.0, 1.0], [1e6, -1e6]),
        ([1.0, 1.0], [1e9, 1e9]),
        ([1.0, 1.0], [1e12, -1e12]),
        ([1e-3, 1e6], [1e5, -1e3]),  # mixed scales and offsets across columns
        ([1e154, 1e-170], [0.0, 0.0]),  # squares overflow / underflow float64
        ([1e200, 1.0], [3e201, 0.0]),  # beyond float32's range
    ],
)
def test_affine_change_of_units_moves_the_model_exactly(X, reference_scores, dtype, scale, offset):
    """Catches standardisation in the training dtype (float32 collapses 1e9 +
    N(0, 1) onto a few values), squares that overflow (1e154), and raw values
    beyond float32's range refused as "NaN or infinity"."""
    scale, offset = np.array(scale), np.array(offset)
    moved = TensorizingFlowDensity(**SMALL, dtype=dtype).fit(X * scale + offset)
    scores = moved.score_samples(X * scale + offset)
    expected = reference_scores[dtype] - np.log(scale).sum()
    # Standardised data equal up to float64 rounding of offset / scale
    # (1e-4 at 1e12 over unit spread): the models differ by that, not by nats.
    assert np.all(np.isfinite(scores))
    assert np.abs(scores - expected).mean() < 1e-2
    samples = moved.sample(200, random_state=0)
    assert np.all(np.isfinite(samples))
    # the samples are in the moved units: standardised back, of order one
    assert np.abs((samples - offset) / scale).max() < 10


def test_timestamps_next_to_a_gaussian_match_a_gaussian_mixture():
    """The reported case: Unix timestamps within one minute plus a normal
    column gave -71,062 nats per row against -5.6 for one Gaussian."""
    rng = np.random.default_rng(1)
    X = np.column_stack([1.7e9 + rng.uniform(0, 60, 500), rng.normal(size=500)])
    model = TensorizingFlowDensity(**SMALL).fit(X)
    gaussian = GaussianMixture(1, random_state=0).fit(X)
    # a uniform column: the TT does better than one Gaussian, never far worse
    assert model.score(X) > gaussian.score(X) - 0.1


@pytest.mark.parametrize("sentinel", [1e10, 1e30])
@pytest.mark.parametrize("n_rows", [1000, 2000])
def test_a_sentinel_value_does_not_spoil_the_fit_of_the_other_rows(sentinel, n_rows):
    """One row at 1e10 (a code for a missing value) among standard normal
    ones. Standardised by the mean and standard deviation, which it
    dominates, the other rows sat at -0.022 with a spread of 4.5e-9 (2,000
    rows), a handful of float32 values: the test rows scored 0.07 and 58
    nats lower than without the sentinel, and a default fit to such rows
    stopped with a ValueError from deep inside the TT's fit (the train was
    zero). Now the model of the other rows is the one without the sentinel
    to 0.01 nats: the column is standardised by its median and the spread
    of its bulk (utils.standardize.MAX_SCALE_TO_BULK_SPREAD). On 1,000 rows
    (900 for training) the 0.001 quantiles that mark the bulk interpolate
    between the two largest values, to 1e9, and hid the sentinel from that
    rule (12 nats per test row lost): they stay between the second
    smallest and second largest values (inner_quantile_level)."""
    rng = np.random.default_rng(2)
    X, test = rng.normal(size=(n_rows, 2)), rng.normal(size=(2000, 2))
    clean = TensorizingFlowDensity(**SMALL).fit(X).score(test)
    X[0, 0] = sentinel
    model = TensorizingFlowDensity(**SMALL).fit(X)
    assert abs(model.score(test) - clean) < 0.01
    assert np.isfinite(model.score_samples(X[:1])).all()


def test_a_range_that_overflows_float64_is_refused(X):
    X = np.array([[-1.7e308, 0.0], [1.7e308, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match=r"Feature 0 of X .* overflow.* float64"):
        TensorizingFlowDensity(**SMALL).fit(X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_data_domain_far_from_zero_is_mapped_in_float64(X, reference_scores, dtype):
    """Catches the domain standardised in float32 (its rows collapse)."""
    offset = 1e9
    domain = [[offset - 5.0, offset + 5.0], [offset - 5.0, offset + 5.0]]
    model = TensorizingFlowDensity(**SMALL, dtype=dtype, domain=domain).fit(X + offset)
    reference = TensorizingFlowDensity(**SMALL, dtype=dtype, domain=[[-5, 5], [-5, 5]]).fit(X)
    np.testing.assert_allclose(
        model.score_samples(X + offset), reference.score_samples(X), atol=0.05
    )


def test_a_variational_box_that_float32_cannot_resolve_is_refused():
    """[1e8 - 1, 1e8 + 1] holds less than one float32 step: every point of the
    box would be the same point. float64 resolves it and fits."""

    def log_target(x):
        return -0.5 * ((x - 1e8) / 0.2).square().sum(dim=1)

    domain = [[1e8 - 1.0, 1e8 + 1.0]] * 2
    with pytest.raises(ValueError, match=r'domain row 0 .* dtype="float64"'):
        TensorizingFlowDensity(log_target=log_target, domain=domain, **SMALL).fit()
    model = TensorizingFlowDensity(
        log_target=log_target, domain=domain, **{**SMALL, "flow": "none", "n_basis": 16}
    ).set_params(dtype="float64")
    model.fit()
    assert model.ess_ > 0.9
    assert abs(model.sample(500, random_state=0).mean() - 1e8) < 0.1


# ----------------------------------------------- fits under no_grad / inference_mode
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_fit_under_no_grad_or_inference_mode_is_the_same_fit(X, context):
    """Catches training that relies on the caller's grad mode: a raw
    RuntimeError on data and a false "not differentiable" in VI."""
    expected = TensorizingFlowDensity(**SMALL).fit(X).score_samples(X[:20])
    with context():
        model = TensorizingFlowDensity(**SMALL).fit(X)
    np.testing.assert_array_equal(model.score_samples(X[:20]), expected)
    variational = {
        **SMALL,
        "log_target": standard_normal_log_target,
        "domain": BOX,
        "max_iter": 1,
    }
    expected_elbo = TensorizingFlowDensity(**variational).fit().elbo_
    with context():
        model = TensorizingFlowDensity(**variational).fit()
    assert model.elbo_ == expected_elbo


# ------------------------------------------ log_targets that detach or leave torch
def numpy_inside(x):
    return torch.as_tensor(-0.5 * (x.numpy() ** 2).sum(axis=1))


def scipy_inside(x):
    return torch.as_tensor(scipy.stats.norm.logpdf(x).sum(axis=1))


def detached(x):
    return standard_normal_log_target(x).detach()


def through_python_floats(x):
    return torch.tensor([-0.5 * sum(v * v for v in row) for row in x.tolist()])


def under_no_grad(x):
    with torch.no_grad():
        return standard_normal_log_target(x)


def through_item(x):
    return torch.stack([torch.tensor(standard_normal_log_target(row[None]).item()) for row in x])


NOT_DIFFERENTIABLE = [
    numpy_inside,
    scipy_inside,
    detached,
    through_python_floats,
    under_no_grad,
    through_item,
]


@pytest.mark.parametrize("log_target", NOT_DIFFERENTIABLE)
def test_a_log_target_without_gradient_is_named_and_keeps_its_cause(log_target):
    """Catches the raw torch RuntimeError of x.numpy() (and scipy) on points
    that require gradient, and errors that do not name log_target."""
    model = TensorizingFlowDensity(log_target=log_target, domain=BOX, **SMALL)
    with pytest.raises(ValueError, match="log_target must be differentiable") as info:
        model.fit()
    assert 'flow="none"' in str(info.value)
    if log_target in (numpy_inside, scipy_inside):
        root = info.value
        while root.__cause__ is not None:
            root = root.__cause__
        assert isinstance(root, RuntimeError)  # torch's own error, kept


@pytest.mark.parametrize("log_target", NOT_DIFFERENTIABLE)
def test_the_same_log_targets_fit_the_base_alone(log_target):
    """flow="none" needs no gradient: each of them must fit and give a
    near-exact base of the standard normal."""
    model = TensorizingFlowDensity(
        log_target=log_target, domain=BOX, **{**SMALL, "flow": "none", "n_basis": 16}
    ).fit()
    assert model.ess_ > 0.95
    # scipy's log-density is normalised; the others miss 2 pi
    log_normalizer = 0.0 if log_target is scipy_inside else np.log(2 * np.pi)
    assert abs(model.log_normalizer_ - log_normalizer) < 0.01


def test_a_log_target_that_is_minus_infinity_everywhere_is_named():
    model = TensorizingFlowDensity(
        log_target=lambda x: torch.full((x.shape[0],), -torch.inf, dtype=x.dtype),
        domain=BOX,
        **SMALL,
    )
    with pytest.raises(ValueError, match="log_target was -inf at every evaluated point"):
        model.fit()


# ------------------------------------------------------- unclear messages
def test_fit_without_X_in_data_mode_says_what_to_pass():
    """Was scikit-learn's "Expected 2D array, got scalar array ... nan"."""
    with pytest.raises(ValueError, match=r"fit\(X\).*log_target"):
        TensorizingFlowDensity(**SMALL).fit()


@pytest.mark.parametrize("log_target", [None, standard_normal_log_target])
def test_a_ragged_domain_names_domain(X, log_target):
    """Was numpy's "inhomogeneous shape" without the parameter's name."""
    model = TensorizingFlowDensity(**SMALL, log_target=log_target, domain=[[-3, 3], [1]])
    with pytest.raises(ValueError, match="domain must be numeric"):
        model.fit(None if log_target else X)


@pytest.mark.parametrize(
    ("domain", "dtype", "message"),
    [
        ([[1000.0, 1001.0], [-3.0, 3.0]], "float64", r"domain holds none .* feature\(s\) \[0\]"),
        ([[-3.0, 3.0], [5.0, 6.0]], "float32", r"domain holds none .* feature\(s\) \[1\]"),
        ([[0.5, 0.5 + 1e-9], [-3.0, 3.0]], "float32", "holds only about"),
    ],
)
def test_a_data_domain_without_the_data_names_domain(X, domain, dtype, message):
    """Was "The train is zero" from deep inside the TT's fit, or a
    LinAlgError of an SVD, for a box the data never reach or that float32
    cannot resolve."""
    model = TensorizingFlowDensity(**SMALL, domain=domain, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        model.fit(X)


def test_warm_start_refuses_a_switch_of_mode_and_keeps_the_model(X):
    """Was accepted, and failed later blaming set_params."""
    model = TensorizingFlowDensity(**SMALL, warm_start=True).fit(X)
    before = model.score_samples(X[:10])
    with pytest.raises(ValueError, match=r"warm_start=True .* data mode.* variational mode"):
        model.set_params(log_target=standard_normal_log_target, domain=BOX).fit()
    np.testing.assert_array_equal(model.score_samples(X[:10]), before)
    variational = TensorizingFlowDensity(
        **SMALL, log_target=standard_normal_log_target, domain=BOX, warm_start=True
    ).fit()
    with pytest.raises(ValueError, match=r"warm_start=True .* variational mode.* data mode"):
        variational.set_params(log_target=None, domain=None).fit(X)


@pytest.mark.parametrize(
    "change", [{"flow": "nsf"}, {"n_flow_layers": 3}, {"hidden_units": 4}, {"flow": "none"}]
)
def test_warm_start_refuses_other_flow_layers_and_keeps_the_model(X, change):
    """Was a fit that kept the old layers without a word, and an estimator
    that save() then refused; the parameters set back, it continues."""
    model = TensorizingFlowDensity(**SMALL, warm_start=True).fit(X)
    before = model.score_samples(X[:10])
    with pytest.raises(ValueError, match="warm_start=True continues the fitted flow"):
        model.set_params(**change).fit(X)
    np.testing.assert_array_equal(model.score_samples(X[:10]), before)
    model.set_params(**{name: SMALL.get(name, "realnvp") for name in change}).fit(X)


def test_a_variational_warm_start_refuses_other_flow_layers():
    """The same for a variational model (its flow is built as a data
    model's, between fixed maps)."""
    model = TensorizingFlowDensity(
        **SMALL, log_target=standard_normal_log_target, domain=BOX, warm_start=True
    ).fit()
    with pytest.raises(ValueError, match="warm_start=True continues the fitted flow"):
        model.set_params(n_flow_layers=3).fit()
    model.set_params(n_flow_layers=SMALL["n_flow_layers"]).fit()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_basis": 12}, "n_basis=12, but the cores have \\[8\\]"),
        ({"tt_rank": 3}, "tt_rank=3, but the cores have rank 4"),
    ],
)
def test_warm_start_refuses_base_parameters_the_cores_contradict(X, change, message):
    """Was a fit that kept the fitted TT without a word, and an estimator
    that save() then refused; a larger tt_rank, which the cores still
    satisfy (ranks are bounds), and "auto" are continued as before."""
    model = TensorizingFlowDensity(
        **{**SMALL, "base": "tt", "tt_rank": 4, "warm_start": True}
    ).fit(X)
    before = model.score_samples(X[:10])
    with pytest.raises(ValueError, match=f"keeps the fitted TT base.*{message}"):
        model.set_params(**change).fit(X)
    np.testing.assert_array_equal(model.score_samples(X[:10]), before)
    model.set_params(tt_rank=6, n_basis="auto").fit(X)
    assert model.tt_.n_basis == 8 and max(model.tt_.tt_ranks) == 4


def test_a_fit_does_not_depend_on_torch_default_dtype(X):
    """The flow's layers were initialised in torch's default dtype: under
    torch.set_default_dtype(torch.float64) the same random_state drew other
    initial weights, and the fitted scores differed by up to 7e-3."""
    expected = TensorizingFlowDensity(**SMALL).fit(X).score_samples(X[:20])
    caller = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        scores = TensorizingFlowDensity(**SMALL).fit(X).score_samples(X[:20])
        assert torch.get_default_dtype() == torch.float64  # the caller's, restored
    finally:
        torch.set_default_dtype(caller)
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.parametrize(
    "change", [{"n_features": 2}, {"mode_starts": [[0.0, 0.0]]}, {"cross_options": {"tol": 1e-3}}]
)
def test_variational_only_parameters_are_refused_in_data_mode(X, change):
    """Were accepted and ignored by a fit to data (as symmetry,
    mass_covering_iter and base="tempered" are not)."""
    (name,) = change
    with pytest.raises(ValueError, match=f"{name} set for variational inference"):
        TensorizingFlowDensity(**SMALL, **change).fit(X)


def test_arrays_of_negative_strides_are_scored_and_fitted(X):
    """X[::-1] and np.flip reached torch.from_numpy and torch.tensor, which
    refuse negative strides: scoring, and fits through feature_bounds."""
    model = TensorizingFlowDensity(**SMALL).fit(X)
    np.testing.assert_array_equal(model.score_samples(X[::-1]), model.score_samples(X)[::-1])
    np.testing.assert_array_equal(model.score_samples(X[:, ::-1][:, ::-1]), model.score_samples(X))
    positive = np.exp(X)
    bounded = {**SMALL, "feature_bounds": (0.0, np.inf)}
    np.testing.assert_array_equal(
        TensorizingFlowDensity(**bounded).fit(positive[::-1].copy()).score_samples(positive),
        TensorizingFlowDensity(**bounded).fit(positive[::-1]).score_samples(positive),
    )


def test_warm_start_continues_a_model_of_the_data(X):
    """The standardisation is kept and training goes on from the fitted flow."""
    model = TensorizingFlowDensity(**SMALL, warm_start=True).fit(X + 1e9)
    first = model.score(X + 1e9)
    model.fit(X + 1e9)
    assert np.isfinite(model.score(X + 1e9))
    assert model.score(X + 1e9) >= first - 0.05

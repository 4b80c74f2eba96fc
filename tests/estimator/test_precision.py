"""TensorizingFlowDensity(inference_dtype=...): scoring and sampling in float32
or float64, with the fixed maps into the features in float64 either way.

Tolerances: float32 has a relative rounding unit of 6e-8, and a log-density is
a sum of terms of the size of ``|log q| + d`` (each layer's log-determinant,
the base's log-normaliser), each a few roundings off. Scores of the two
precisions are therefore compared to ``1e-5 * (1 + |log q|)``: measured
differences reach 2e-6 of that here, and a standardisation rounded to float32
(a feature at 1e5) misses by 0.04.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import sktt_flow.estimator._density as density_module
from sktt_flow import TensorizingFlowDensity

SMALL = {
    "base": "tt",
    "preconditioner": "diagonal",
    "tt_rank": 4,
    "n_basis": 12,
    "n_flow_layers": 2,
    "hidden_units": 16,
    "max_iter": 10,
    "random_state": 0,
}

#: Relative tolerance between float32 and float64 log-densities (see above).
SCORE_TOLERANCE = 1e-5


def far_from_zero(n: int, seed: int) -> np.ndarray:
    """A bimodal, curved 3-D sample whose first feature sits at 1e5 with a
    spread of 2: float32 holds it only to 0.008."""
    rng = np.random.default_rng(seed)
    x0 = rng.choice([-2.0, 2.0], size=n) + 0.4 * rng.standard_normal(n)
    x1 = 0.5 * x0**2 + 0.3 * rng.standard_normal(n)
    return np.column_stack([1e5 + x0, 0.01 * x1, rng.standard_normal(n)])


@pytest.fixture(scope="module")
def data():
    return far_from_zero(600, seed=0), far_from_zero(600, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    """Trained in float32 and, by default, evaluated in float32."""
    return TensorizingFlowDensity(**SMALL).fit(data[0])


@pytest.fixture(scope="module")
def gaussian_fitted(data):
    return TensorizingFlowDensity(**{**SMALL, "base": "gaussian"}).fit(data[0])


def in_precision(model, dtype):
    """A copy of ``model`` evaluated in ``dtype`` (module fixtures stay as they are)."""
    return copy.deepcopy(model).set_params(inference_dtype=dtype)


def assert_scores_close(scores, reference):
    """Within SCORE_TOLERANCE of the log-density scale, and not identical
    (identical would mean that both ran in the same precision)."""
    error = np.abs(scores - reference) / (1.0 + np.abs(reference))
    assert error.max() <= SCORE_TOLERANCE, error.max()
    assert not np.array_equal(scores, reference)


def test_flow_stays_float64(fitted):
    """The documented ``flow_`` (and ``tt_``), which persistence and warm
    starts read, stays the float64 model when scoring runs in float32. Fails if
    the float32 model were made by casting ``flow_`` itself."""
    assert fitted.inference_dtype is None and fitted.dtype == "float32"
    state = fitted.flow_.state_dict()
    assert all(t.dtype == torch.float64 for t in state.values() if t.is_floating_point())
    assert fitted.tt_ is fitted.flow_.q0


@pytest.mark.parametrize("model_name", ["fitted", "gaussian_fitted"])
def test_float32_scores_agree_with_float64(model_name, data, request):
    """On held-out rows and on rows far out in the tails. Fails if the
    standardisation were applied in float32 (the first feature at 1e5 loses
    its digits: 0.04 relative error), or if ``inference_dtype`` were ignored."""
    model = request.getfixturevalue(model_name)
    points = np.concatenate([data[1], data[1][:50] * [1.0, 30.0, 10.0]])
    assert_scores_close(
        in_precision(model, "float32").score_samples(points),
        in_precision(model, "float64").score_samples(points),
    )


@pytest.mark.parametrize("model_name", ["fitted", "gaussian_fitted"])
def test_samples_of_both_precisions_are_the_same_draws(model_name, data, request):
    """Same random_state, same draws up to float32 rounding, in units of each
    feature's spread. The TT base solves its conditional CDFs in float32 too,
    exact to about 1e-7 of each total, so a draw moves by more where an early
    coordinate's rounding shifts a later conditional (measured: median 3e-7,
    99% within 1e-5, largest 7e-5). Fails if a precision drew another stream:
    the TT base's uniforms or a Gaussian base's normals drawn in float32 (torch
    draws other normals in float32 than in float64). Each float32 draw's
    log-density is its float64 score to the scores' tolerance."""
    model = request.getfixturevalue(model_name)
    x32, log_q32 = in_precision(model, "float32").sample_and_score(2000, random_state=5)
    x64 = in_precision(model, "float64").sample(2000, random_state=5)
    gap = (np.abs(x32 - x64) / data[0].std(axis=0)).max(axis=1)
    assert np.median(gap) <= 2e-6
    assert np.quantile(gap, 0.99) <= 1e-4
    assert_scores_close(log_q32, in_precision(model, "float64").score_samples(x32))
    assert x32.dtype == log_q32.dtype == np.float64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scores_do_not_depend_on_the_batch(dtype, fitted, data, monkeypatch):
    """Bit for bit: single rows, 7-row batches and a permutation score as the
    whole array; samples do not depend on the chunk size. The scores fail in
    float32 without the padding to ROW_MULTIPLE rows (an ulp, 3e-6 nats, moves
    with the batch size: torch's scalar tails and the BLAS's size-dependent
    kernels); the samples fail if the padding drew before returned rows."""
    model = in_precision(fitted, dtype)
    X = data[1][:210]
    whole = model.score_samples(X)
    one_by_one = np.concatenate([model.score_samples(X[i : i + 1]) for i in range(30)])
    np.testing.assert_array_equal(one_by_one, whole[:30])
    in_sevens = np.concatenate([model.score_samples(X[i : i + 7]) for i in range(0, 210, 7)])
    np.testing.assert_array_equal(in_sevens, whole)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(model.score_samples(X[order]), whole[order])
    # Sampling: the padded draws of the last chunk come after every returned
    # one. Not bit for bit in float64, where the TT sampler's float64 rounding
    # depends on the batch (4e-15) and no cast to float32 absorbs it; nor are
    # the float32 log-densities everywhere: with MKL on AVX-512 (an Intel
    # Xeon, 2026-12-05) the sampler's float32 products rounded differently
    # with the chunk's size, 1.2e-8 nats on 5 of the 300 draws, so they are
    # compared to 1e-6 nats, a few float32 ulps. Draws handed out in the
    # wrong order differ by whole nats.
    samples, log_q = model.sample_and_score(300, random_state=0)
    monkeypatch.setitem(density_module.CHUNK_SIZE, "cpu", 64)
    chunked_samples, chunked_log_q = model.sample_and_score(300, random_state=0)
    np.testing.assert_allclose(chunked_samples, samples, rtol=1e-12)
    np.testing.assert_allclose(chunked_log_q, log_q, rtol=1e-12, atol=1e-6)


def test_float32_scores_of_large_calls_do_not_depend_on_the_batch(fitted, data):
    """Bit for bit also where the TT base contracts chunks of more than
    BROADCAST_MAX_POINTS rows (the estimator's chunks of 4,096 rows, at
    tt_rank 4): fails with fused multiply-adds in that contraction, which
    moved float32 scores by up to 9e-7 nats on 10% of these rows against the
    same rows scored a few hundred at a time. Not in float64, where the TT
    base's products round by the size of the call (by about 1e-14 nats; no
    cast to float32 absorbs it): with fused multiply-adds 8% of these rows
    moved, without them one row, by 4e-16."""
    model = in_precision(fitted, "float32")
    assert max(fitted.tt_.tt_ranks) <= 4  # chunks of 8,192 rows: the long path
    rows = np.resize(data[1], (5000, data[1].shape[1]))
    rows = rows + 0.01 * np.random.default_rng(0).standard_normal(rows.shape)
    whole = model.score_samples(rows)
    in_pieces = np.concatenate([model.score_samples(piece) for piece in np.array_split(rows, 9)])
    np.testing.assert_array_equal(in_pieces, whole)


def far_rows(data, standard_deviations):
    """Rows of held-out data with one feature moved ``standard_deviations`` of
    the training data out (feature k for row k, cycling)."""
    train, held_out = data
    rows = held_out[: 3 * len(standard_deviations)].copy()
    for i, distance in enumerate(np.repeat(standard_deviations, 3)):
        rows[i, i % 3] += distance * train[:, i % 3].std()
    return rows


@pytest.mark.parametrize("model_name", ["fitted", "gaussian_fitted"])
def test_rows_beyond_float32_range_are_scored_in_float64(model_name, data, request):
    """A row 1e20 standard deviations out squares to beyond float32's range
    in the TT base's Gaussian tails (capped there: log-densities 14 to 56
    times too high), one 1e39 out is infinite in float32 and NaN through the
    coupling networks: both are scored by the float64 model, and the rows
    within range keep their float32 scores to the bit. Fails without the
    second pass (NaN, or the cap), or if it rescored every row (the near
    rows would then be float64's)."""
    model = in_precision(request.getfixturevalue(model_name), "float32")
    far = far_rows(data, [1e20, 1e39, 1e100])
    near = data[1][:40]
    scores = model.score_samples(np.concatenate([near, far]))
    np.testing.assert_array_equal(scores[: len(near)], model.score_samples(near))
    assert_scores_close(scores[: len(near)], in_precision(model, "float64").score_samples(near))
    exact = in_precision(model, "float64").score_samples(far)
    assert np.isfinite(exact).all() and (exact < -1e38).all()
    np.testing.assert_allclose(scores[len(near) :], exact, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_beyond_float64_range_score_minus_infinity(dtype, fitted, data):
    """Rows whose standardised coordinates overflow float64 (1e310 standard
    deviations of the second feature, whose spread is 0.01) have density zero
    in floating point: log-density -inf, as GaussianMixture gives, not the
    NaN of the coupling networks' inf - inf; the other rows are finite.
    Fails without the last step of _log_density_in_chunks."""
    model = in_precision(fitted, dtype)
    rows = data[1][:6].copy()
    rows[:3, 1] = [1.7e308, -1.7e308, 1e308]
    scores = model.score_samples(rows)
    assert (scores[:3] == -np.inf).all()
    assert np.isfinite(scores[3:]).all()
    assert model.score(rows) == -np.inf


def test_chunk_sizes_are_multiples_of_the_row_multiple():
    """Padding only the last chunk keeps every batch a multiple of ROW_MULTIPLE
    only if the chunks are."""
    for size in density_module.CHUNK_SIZE.values():
        assert size % density_module.ROW_MULTIPLE == 0


def test_precision_is_read_at_each_call(fitted, data):
    """set_params switches a fitted model without refitting, both ways, and an
    invalid value set after fit is refused instead of silently ignored."""
    model = in_precision(fitted, "float64")
    X = data[1][:50]
    float64_scores = model.score_samples(X)
    float32_scores = model.set_params(inference_dtype="float32").score_samples(X)
    np.testing.assert_array_equal(float32_scores, fitted.score_samples(X))
    np.testing.assert_array_equal(
        model.set_params(inference_dtype=None, dtype="float64").score_samples(X), float64_scores
    )
    model.set_params(inference_dtype="float16")
    with pytest.raises(InvalidParameterError, match="inference_dtype"):
        model.score_samples(X)
    with pytest.raises(InvalidParameterError, match="inference_dtype"):
        model.sample(3)


# ------------------------------------------------------------ variational
#: A correlated Gaussian whose mode is at 1000.123456789, not a float32 number
#: (float32 steps by 6e-5 there; a mode at 1e4 is refused in float32 training).
MODE = torch.tensor([1e3 + 0.123456789, -2.0], dtype=torch.float64)
COVARIANCE = torch.tensor([[0.01, 0.475], [0.475, 25.0]], dtype=torch.float64)


def far_log_target(x: torch.Tensor) -> torch.Tensor:
    # the offset in float64 whatever x's dtype, as a user's target would do
    centred = (x.double() - MODE).to(x.dtype)
    precision = torch.linalg.inv(COVARIANCE).to(x.dtype)
    return -0.5 * ((centred @ precision) * centred).sum(dim=1)


@pytest.fixture(scope="module")
def variational_pair():
    common = {
        "log_target": far_log_target,
        "n_features": 2,
        "base": "tt",
        "preconditioner": "full",
        "tt_rank": 1,
        "n_basis": 12,
        "n_flow_layers": 2,
        "hidden_units": 8,
        "max_iter": 1,
        "random_state": 0,
    }
    return {
        dtype: TensorizingFlowDensity(**common, inference_dtype=dtype).fit()
        for dtype in ("float32", "float64")
    }


def test_variational_diagnostics_are_float64_whatever_the_precision(variational_pair):
    """The ELBO, ESS and log Z of fit come from the float64 model: the same bits
    with either inference_dtype. Fails if they were computed with the float32
    copy."""
    float32, float64 = variational_pair["float32"], variational_pair["float64"]
    for name in ("elbo_", "ess_", "log_normalizer_", "log_normalizer_std_error_"):
        assert getattr(float32, name) == getattr(float64, name), name


def test_variational_map_into_the_target_stays_float64(variational_pair):
    """Points near a mode at 1000.12 (the map into the target's coordinates
    carries it) score alike in both precisions, and the float32 model's draws
    land on the float64 model's. Fails if that map ran in float32: its 6e-5
    steps are 6e-4 standard deviations of the narrow direction, about 1e-4
    relative error in the log-density and 3e-4 in the samples."""
    float32, float64 = variational_pair["float32"], variational_pair["float64"]
    samples64 = float64.sample(1000, random_state=1)
    samples32, log_q32 = float32.sample_and_score(1000, random_state=1)
    assert_scores_close(float32.score_samples(samples64), float64.score_samples(samples64))
    assert_scores_close(log_q32, float64.score_samples(samples32))
    # In units of the standard deviations, 0.1 and 5. The base solves in
    # float32, so a few draws move further (see
    # test_samples_of_both_precisions_are_the_same_draws); the map's error
    # would move all of them.
    gap = (np.abs(samples32 - samples64) / [0.1, 5.0]).max(axis=1)
    assert np.median(gap) <= 1e-5, np.median(gap)


#: A summed log-likelihood's size: float32 spaces its values by a whole nat.
LARGE_OFFSET = 1e7 + 0.4


def offset_log_target(x: torch.Tensor) -> torch.Tensor:
    """A standard 2-D Gaussian plus LARGE_OFFSET, in the dtype of ``x`` (as a
    user's float64-minded target would be): log Z = offset + log(2 pi)."""
    return -0.5 * (x**2).sum(dim=1) + LARGE_OFFSET


def test_variational_diagnostics_evaluate_log_target_in_float64():
    """A model trained in float32 still gets float64 diagnostics: the target
    at its draws is evaluated in float64. Fails if it is evaluated in the
    training dtype, where it rounds to whole nats: log_normalizer_ was 0.33
    off the truth (reported standard error 3e-3) and elbo_ above the true
    log Z. The model here is a rank-1 TT without flow layers on a wide box,
    exact to far below 1e-3 nats (its ESS rounds to 1)."""
    model = TensorizingFlowDensity(
        log_target=offset_log_target,
        n_features=2,
        domain=(-8.0, 8.0),
        base="tt",
        tt_rank=1,
        n_basis=24,
        flow="none",
        random_state=0,
    ).fit()
    true_log_z = LARGE_OFFSET + np.log(2 * np.pi)
    assert abs(model.log_normalizer_ - true_log_z) <= 1e-3, model.log_normalizer_ - true_log_z
    assert model.elbo_ <= true_log_z + 1e-6
    assert model.ess_ > 0.99

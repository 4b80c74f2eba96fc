"""The float64 standardisation of data mode, against numpy on ordinary data
and on data where the naive formulas overflow or lose the spread."""

from __future__ import annotations

import numpy as np
import pytest

from sktt_flow.utils.standardize import (
    MAX_SCALE_TO_BULK_SPREAD,
    inner_quantile_level,
    standardization,
    standardize,
)


def test_matches_numpy_on_ordinary_data():
    X = np.random.default_rng(0).normal(size=(500, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    mean, scale = standardization(X)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(scale, X.std(axis=0, ddof=1), rtol=1e-13)


def test_huge_values_do_not_overflow():
    """numpy's std of 1e154-sized values squares them to inf; dividing by the
    range first keeps every intermediate bounded."""
    unit = np.random.default_rng(1).normal(size=(400, 2))
    mean, scale = standardization(unit * 1e154)
    with np.errstate(over="ignore"):
        assert not np.isfinite((unit * 1e154).std(axis=0)).all()  # the naive way fails
    np.testing.assert_allclose(scale / 1e154, unit.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(mean / 1e154, unit.mean(axis=0), atol=1e-14)


def test_a_large_offset_keeps_the_spread():
    """1e9 + N(0, 1): the spread survives in float64 (it would not in float32)."""
    unit = np.random.default_rng(2).normal(size=(400, 1))
    mean, scale = standardization(1e9 + unit)
    np.testing.assert_allclose(scale, unit.std(axis=0, ddof=1), rtol=1e-6)
    standardized = standardize(1e9 + unit, mean, scale)
    np.testing.assert_allclose(standardized, (unit - unit.mean()) / unit.std(ddof=1), atol=1e-6)


def test_constant_columns_and_single_rows_keep_unit_scale():
    X = np.array([[3.0, 1.0], [3.0, 2.0]])
    mean, scale = standardization(X)
    np.testing.assert_array_equal(scale, [1.0, np.std([1.0, 2.0], ddof=1)])
    mean, scale = standardization(X[:1])
    np.testing.assert_array_equal(mean, X[0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])


def test_a_range_beyond_float64_is_refused():
    X = np.array([[-1e308, 0.0], [1e308, 1.0]])
    with pytest.raises(ValueError, match=r"Feature 0 of X spans .* overflows float64"):
        standardization(X)


def test_rows_beyond_the_training_range_are_refused_when_they_overflow():
    mean, scale = standardization(np.array([[0.0], [1e-300]]))
    with pytest.raises(ValueError, match="Feature 0 of X has values that overflow"):
        standardize(np.array([[1e300]]), mean, scale)


def test_a_column_that_a_few_rows_dominate_is_standardised_by_its_bulk():
    """A sentinel at 1e10 in column 0: that column gets its median and the
    spread of its bulk (its 0.001 to 0.999 quantiles over those of a
    standard normal, 6.18), the other column its mean and standard deviation
    to the bit, and so does column 0 without bulk_quantile. A Cauchy column
    of 10,000 rows (heavy tails, no sentinel) keeps its mean and standard
    deviation. Fails if the switch were missing, applied to every column, or
    triggered by heavy tails."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 2))
    X[0, 0] = 1e10
    plain_mean, plain_scale = standardization(X)
    mean, scale = standardization(X, bulk_quantile=0.001)
    low, median, high = np.quantile(X[:, 0], [0.001, 0.5, 0.999])
    assert plain_scale[0] > MAX_SCALE_TO_BULK_SPREAD * scale[0]
    assert mean[0] == pytest.approx(median, rel=1e-12)
    assert scale[0] == pytest.approx((high - low) / 6.180464609, rel=1e-9)
    assert 0.8 < scale[0] < 1.2
    assert mean[1] == plain_mean[1] and scale[1] == plain_scale[1]
    cauchy = rng.standard_cauchy(size=(10_000, 1))
    assert standardization(cauchy, bulk_quantile=0.001) == standardization(cauchy)


@pytest.mark.parametrize("n_rows", [3, 10, 900, 1000, 1001, 5000])
def test_quantiles_near_the_ends_stay_inside_the_second_extreme_values(n_rows):
    """The 0.001 and 0.999 quantiles of n values with a far value at each
    end: from 1,001 values on, numpy's own quantiles (interpolated between
    order statistics that are not the extremes) are kept to the bit; below,
    they lie between the second smallest and second largest values, where
    numpy's reach towards the far values. Fails if the level were not moved
    (the quantile at 1e9) or moved where it need not be."""
    values = np.sort(np.random.default_rng(4).normal(size=n_rows))
    values[0], values[-1] = -1e10, 1e10
    levels = [inner_quantile_level(level, n_rows) for level in (0.001, 0.999)]
    low, high = np.quantile(values, levels)
    assert values[1] <= low and high <= values[-2]
    if n_rows >= 1001:
        assert levels == [0.001, 0.999]
    else:
        assert np.quantile(values, 0.999) > 1e6

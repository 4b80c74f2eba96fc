"""The fixed standardisation of data mode, computed so that it cannot lose the data.

Raw features can sit far from zero relative to their spread (Unix timestamps,
geographic coordinates, sensor readings) or be huge (``1e154`` squares to
``1e308``). Converting them to the training precision first would collapse
them onto a few values, and squaring them first would overflow. Here the
location and scale are computed in float64 with every intermediate bounded by
the range of the column, so that only the standardised values, of order one,
meet the training precision.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["MAX_SCALE_TO_BULK_SPREAD", "inner_quantile_level", "standardization", "standardize"]

#: A column whose standard deviation exceeds this many times the spread of
#: its bulk (with ``bulk_quantile``) is standardised by its median and that
#: spread instead: its variance then comes from a few rows far from all the
#: others, a sentinel value such as 1e10 among values of order one. Its mean
#: and standard deviation put the bulk at a distance from zero that the
#: training precision cannot tell its values apart at: one row at 1e10 among
#: 2,000 standard normal ones put the others at -0.022 with a spread of
#: 4.5e-9, two float32 values, and the TT fitted to them was zero. Heavy
#: tails stay well below the ratio: a standard Cauchy sample of 10,000 rows
#: has a standard deviation of about 0.3 times the spread of its bulk
#: (0.001 quantile) and exceeds 1,000 with probability about 3e-4.
MAX_SCALE_TO_BULK_SPREAD = 1e3


def inner_quantile_level(level: float, n_rows: int) -> float:
    """``level`` moved, where needed, so that the quantile of ``n_rows``
    values interpolated between order statistics (as :func:`numpy.quantile`
    does by default) lies between the second smallest and the second
    largest of them (with three or more).

    A quantile near 0 or 1 of fewer than about ``1 / level`` values would
    otherwise interpolate between the two most extreme ones, and a far
    outlier pulls it towards itself: a sentinel at 1e10 among 900 standard
    normal values put their 0.999 quantile at 1e9.
    """
    if n_rows < 3:
        return level
    return min(max(level, 1.0 / (n_rows - 1)), (n_rows - 2.0) / (n_rows - 1))


def standardization(
    X: np.ndarray, *, bulk_quantile: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every column, without overflow.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), float64, finite
        At least one row.
    bulk_quantile : float in (0, 0.5), optional
        With it, a column whose standard deviation exceeds
        :data:`MAX_SCALE_TO_BULK_SPREAD` times the spread of its bulk (the
        range between its ``bulk_quantile`` and ``1 - bulk_quantile``
        quantiles, :func:`inner_quantile_level`, divided by that range for
        a standard normal) is
        standardised by its median and that spread instead.

    Returns
    -------
    mean, scale : float64 arrays of shape (n_features,)
        ``scale`` is the standard deviation (``ddof=1`` with two rows or
        more), or 1 for a constant column, as in
        :class:`~sklearn.preprocessing.StandardScaler`; ``mean`` and
        ``scale`` are the median and the spread of the bulk for a column
        that a few rows dominate (``bulk_quantile``).

    Raises
    ------
    ValueError
        If the range ``max - min`` of a column overflows float64 (values of
        both signs near the largest float): no standardisation can represent
        it; the message names the column and asks for rescaled data.
    """
    X = np.asarray(X, dtype=np.float64)
    low, high = X.min(axis=0), X.max(axis=0)
    with np.errstate(over="ignore"):
        extent = high - low
    too_wide = np.flatnonzero(~np.isfinite(extent))
    if too_wide.size:
        k = int(too_wide[0])
        raise ValueError(
            f"Feature {k} of X spans [{low[k]:.3g}, {high[k]:.3g}], a range that overflows "
            f"float64 ({too_wide.size} such feature(s)); divide X by a common factor first."
        )
    # Divide by the range before summing or squaring: every intermediate then
    # lies in [-1, 1] (times n for the sums), whatever the magnitude of X.
    unit = np.where(extent > 0, extent, 1.0)
    mean = low + unit * ((X - low) / unit).mean(axis=0)
    mean = np.clip(mean, low, high)  # rounding must not push it out of the data
    ddof = 1 if X.shape[0] > 1 else 0
    scale = unit * ((X - mean) / unit).std(axis=0, ddof=ddof)
    scale = np.where(scale > 0, scale, 1.0)
    if bulk_quantile is not None:
        # in units of the range, as above: numpy's interpolation between
        # order statistics of both signs near the largest float overflows
        levels = [
            inner_quantile_level(level, X.shape[0])
            for level in (bulk_quantile, 0.5, 1.0 - bulk_quantile)
        ]
        low_bulk, median, high_bulk = low + unit * np.quantile((X - low) / unit, levels, axis=0)
        spread = (high_bulk - low_bulk) / (2.0 * NormalDist().inv_cdf(1.0 - bulk_quantile))
        dominated = (spread > 0) & (scale / MAX_SCALE_TO_BULK_SPREAD > spread)
        mean = np.where(dominated, median, mean)
        scale = np.where(dominated, spread, scale)
    return mean, scale


def standardize(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(X - mean) / scale`` in float64, or a ValueError if it overflows.

    ``mean`` and ``scale`` may come from other rows (the training split, or
    an earlier fit continued by a warm start), so the result is checked.

    Raises
    ------
    ValueError
        Naming the first feature whose standardised values are not finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        standardized = (np.asarray(X, dtype=np.float64) - mean) / scale
    bad = np.flatnonzero(~np.isfinite(standardized).all(axis=0))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"Feature {k} of X has values that overflow float64 once standardised by the "
            f"training data (mean {mean[k]:.3g}, standard deviation {scale[k]:.3g}); divide "
            "X by a common factor first."
        )
    return standardized

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

import numpy as np

__all__ = ["standardization", "standardize"]


def standardization(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every column, without overflow.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), float64, finite
        At least one row.

    Returns
    -------
    mean, scale : float64 arrays of shape (n_features,)
        ``scale`` is the standard deviation (``ddof=1`` with two rows or
        more), or 1 for a constant column, as in
        :class:`~sklearn.preprocessing.StandardScaler`.

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
    return mean, np.where(scale > 0, scale, 1.0)


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

"""Input checks that give clear errors before any numerical work starts."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = [
    "check_domain",
    "check_domain_resolution",
    "check_num_samples",
    "check_points",
    "check_positive_float",
    "check_positive_int",
    "check_samples",
]

#: Distinct values of the training precision that a box must hold across each
#: coordinate: far above any ``n_basis`` (the grid and the Legendre functions
#: must be resolved), far below float32's 2^24.
MIN_STEPS_ACROSS_BOX = 10_000


def check_domain(domain, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a box given as ``(d, 2)`` rows of ``(low, high)``.

    Array-likes and tensors on any device are accepted.

    A single pair ``(low, high)`` is broadcast to ``n_features`` coordinates
    when ``n_features`` is given.

    Returns
    -------
    low, high : float64 arrays of shape (d,)
    """
    if isinstance(domain, torch.Tensor):  # on any device
        domain = domain.detach().cpu()
    try:
        box = np.asarray(domain, dtype=np.float64)
    except (TypeError, ValueError) as error:
        # numpy's "inhomogeneous shape" for a ragged list does not say which
        # argument is wrong
        raise ValueError(
            f"domain must be numeric (d, 2) bounds, one (low, high) row per feature, "
            f"got {domain!r}."
        ) from error
    if box.shape == (2,) and n_features is not None:
        box = np.tile(box, (n_features, 1))
    if box.ndim != 2 or box.shape[1] != 2:
        raise ValueError(f"domain must have shape (n_features, 2), got shape {box.shape}.")
    if n_features is not None and box.shape[0] != n_features:
        raise ValueError(f"domain has {box.shape[0]} rows but there are {n_features} features.")
    if not np.all(np.isfinite(box)):
        raise ValueError("domain bounds must be finite.")
    bad = np.flatnonzero(box[:, 0] >= box[:, 1])
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"domain needs low < high in every row; row {k} is "
            f"({box[k, 0]:g}, {box[k, 1]:g}) ({bad.size} bad rows)."
        )
    return box[:, 0].copy(), box[:, 1].copy()


def check_domain_resolution(
    low: np.ndarray,
    high: np.ndarray,
    dtype: torch.dtype,
    name: str = "domain",
    remedy: str = "shift the coordinates of log_target closer to zero",
) -> None:
    """Refuse a box that ``dtype`` cannot resolve: far from zero and narrow.

    In float32 the box ``[1e8 - 1, 1e8 + 1]`` holds one representable value,
    so every point the model sees would collapse onto it and the fit would
    be silently wrong. A ValueError names the row and the remedy instead.

    Parameters
    ----------
    low, high : float64 arrays of shape (d,)
        A valid box (see :func:`check_domain`).
    dtype : torch.dtype
        The precision in which points of the box are computed.
    name : str
        What the message calls the box.
    remedy : str
        What the message suggests besides float64.
    """
    spacing = np.spacing(np.maximum(np.abs(low), np.abs(high)).astype(_NUMPY_DTYPES[dtype]))
    steps = (high - low) / spacing.astype(np.float64)
    coarse = np.flatnonzero(steps < MIN_STEPS_ACROSS_BOX)
    if coarse.size:
        k = int(coarse[0])
        raise ValueError(
            f"{name} row {k} is [{low[k]:.10g}, {high[k]:.10g}]: in {dtype} it holds only "
            f"about {steps[k]:.2g} distinct values (fewer than {MIN_STEPS_ACROSS_BOX}), so "
            f"the model could not tell its points apart ({coarse.size} such row(s)). Use "
            f'dtype="float64", or {remedy}.'
        )


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def check_points(z, n_features: int, like: torch.Tensor) -> torch.Tensor:
    """Points at which a distribution is evaluated: a tensor of shape
    ``(N, n_features)`` on the device of ``like``, returned in its dtype.

    A tensor on another device is refused rather than copied: a silent
    device round trip in a training loop costs more than the evaluation.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor of points, got {type(z).__name__}.")
    if z.ndim != 2 or z.shape[1] != n_features:
        raise ValueError(f"Expected points of shape (N, {n_features}), got {tuple(z.shape)}.")
    if z.device != like.device:
        raise ValueError(
            f"The points are on {z.device} but the distribution is on "
            f"{like.device}; move one of them (no silent copies)."
        )
    return z.to(like.dtype)


def check_num_samples(num_samples) -> int:
    """The number of draws a base is asked for, as an int (as ``int()``
    makes it), or a ValueError when it is negative."""
    num_samples = int(num_samples)
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}.")
    return num_samples


def check_samples(
    X, *, dtype: torch.dtype = torch.float64, device=None, min_samples: int = 2
) -> torch.Tensor:
    """A finite 2-D float tensor of samples, as a new copy on ``device``.

    Accepts numpy arrays (read-only ones too), array-likes and tensors.
    """
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
    else:
        try:
            array = np.asarray(X)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Could not convert X to an array: {error}") from error
        if array.dtype.kind not in "biuf":
            raise ValueError(f"X must hold real numbers, got an array of dtype {array.dtype}.")
        tensor = torch.tensor(array)
    if tensor.is_complex() or not (
        tensor.is_floating_point()
        or tensor.dtype
        in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)
    ):
        raise ValueError(f"X must hold real numbers, got dtype {tensor.dtype}.")
    if tensor.ndim != 2:
        raise ValueError(f"Expected a 2-D array (n_samples, n_features), got {tensor.ndim}-D.")
    if tensor.shape[0] < min_samples:
        raise ValueError(
            f"Found {tensor.shape[0]} sample(s) while a minimum of {min_samples} is required."
        )
    if tensor.shape[1] < 1:
        raise ValueError("X has 0 features; at least 1 is required.")
    tensor = tensor.to(dtype=dtype, device=device, copy=True)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("Input X contains NaN or infinity.")
    return tensor


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_positive_float(value, name: str) -> float:
    """``value`` as a positive finite float, or a ValueError naming ``name``."""
    try:
        out = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a positive number, got {value!r}.") from error
    if not np.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return out

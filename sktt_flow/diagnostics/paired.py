"""Whether one model beats another on the same points, beyond noise.

Two models scored on common points (held-out rows, or draws made with the
same random numbers) differ by the paired differences of their per-point
scores, whose mean has the standard error ``std / sqrt(N)``: far smaller
than that of either mean alone when the scores are correlated, as they are
for two fits of the same data.
"""

from __future__ import annotations

import math

import torch

__all__ = ["clearly_better"]


def clearly_better(
    challenger: torch.Tensor, incumbent: torch.Tensor, n_standard_errors: float
) -> bool:
    """Whether per-point scores ``challenger`` beat ``incumbent`` by
    ``n_standard_errors`` standard errors of their paired differences.

    Any gain counts with a single point. Where some differences are not
    finite, the challenger wins only if all its scores are finite and some of
    the incumbent's are not.
    """
    gains = (challenger - incumbent).double()
    if not bool(torch.isfinite(gains).all()):
        return bool(torch.isfinite(challenger).all()) and not bool(torch.isfinite(incumbent).all())
    margin = 0.0
    if gains.numel() > 1:
        margin = n_standard_errors * float(gains.std()) / math.sqrt(gains.numel())
    return float(gains.mean()) > margin

"""A fixed map of each feature onto normal-looking coordinates, and back.

Issue 14's base "knows only its coordinates": a TT on standardised features
spends Legendre functions, rank and fit time on a feature that is skewed,
heavy-tailed or piled up near a bound. A marginal Gaussianization maps each
feature through ``g = Phi^{-1}(F(x))``, with ``F`` a smooth estimate of the
feature's distribution, so that every feature of the training data looks
standard normal (their dependence is left to the model). Here ``F`` is an
equal-weight mixture of normals at the training column's quantiles
(:class:`QuantileNormalMixture`), and the layer that a model carries
(:class:`FixedMarginalNormalMap`, the last layer of an estimator fitted with
``marginal_gaussianization``) is a monotone rational-quadratic spline
through points of that map: the mixture's CDF costs ``n_centers`` normal
CDFs per value and has no closed-form inverse, the spline costs a binary
search and a few products either way.

The spline *is* the map: its log-determinant is exact for the spline, so a
model behind it has an exactly normalised density whatever the knots; the
mixture only places them (how closely the spline follows it is a test, not
a property the density relies on).

References
----------
Durkan, Bekasov, Murray and Papamakarios, "Neural Spline Flows", NeurIPS
2019 (the monotone rational-quadratic spline and its inverse).
Chen and Gopinath, "Gaussianization", NeurIPS 2000 (marginal Gaussianization).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from normflows.flows import Flow

__all__ = [
    "FLOOR_KINDS",
    "FixedMarginalNormalMap",
    "QuantileNormalMixture",
]

#: How the smallest width of a mixture's normals is set: ``"smooth"``, a
#: quarter of Silverman's bandwidth of the column (no spikes on rounded or
#: discrete columns); ``"sharp"``, a thousandth of the column's standard
#: deviation (closer to rows piled up near a bound, but where many rows
#: share a value the quantiles coincide and the map puts a narrow spike
#: there).
FLOOR_KINDS = ("smooth", "sharp")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class QuantileNormalMixture:
    """Per feature, an equal-weight mixture of normals at the column's quantiles.

    Centre ``m`` of ``n_centers`` is the column's ``(m + 1/2) / n_centers``
    quantile; its width is the local spacing of the centres, at least the
    floor of ``floor`` (:data:`FLOOR_KINDS`). Everything is float64.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The rows to fit to (at least 2; finite).
    n_centers : int, default=128
        Most centres per feature (fewer when there are fewer rows).
    floor : {"smooth", "sharp"}, default="smooth"
        The smallest width (:data:`FLOOR_KINDS`).

    Attributes
    ----------
    centers, widths : tensors of shape (n_features, n_centers)
    """

    def __init__(self, X, n_centers: int = 128, floor: str = "smooth"):
        if floor not in FLOOR_KINDS:
            raise ValueError(f"floor must be one of {FLOOR_KINDS}; got {floor!r}.")
        if isinstance(n_centers, bool) or not isinstance(n_centers, int) or n_centers < 2:
            raise ValueError(f"n_centers must be an int >= 2; got {n_centers!r}.")
        X = torch.as_tensor(X, dtype=torch.float64).cpu()
        if X.ndim != 2 or X.shape[0] < 2:
            raise ValueError(f"X must be 2-D with at least 2 rows; got shape {tuple(X.shape)}.")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("X must be finite.")
        n = X.shape[0]
        m = min(n_centers, n)
        levels = (np.arange(m) + 0.5) / m
        # numpy's quantiles: torch.quantile refuses inputs of over 2^24 values
        rows = X.numpy()
        centers = torch.from_numpy(np.quantile(rows, levels, axis=0).T.copy())
        gaps = torch.diff(centers, dim=1)
        if m > 2:
            spacing = torch.cat([gaps[:, :1], 0.5 * (gaps[:, 1:] + gaps[:, :-1]), gaps[:, -1:]], 1)
        else:
            spacing = torch.cat([gaps, gaps], dim=1)
        std = X.std(dim=0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        if floor == "sharp":
            smallest = 1e-3 * std
        else:
            quartiles = torch.from_numpy(np.quantile(rows, [0.25, 0.75], axis=0))
            iqr = (quartiles[1] - quartiles[0]) / 1.349
            spread = torch.minimum(std, torch.where(iqr > 0, iqr, std))
            smallest = 0.25 * 0.9 * spread * n ** (-0.2)
        self.centers = centers
        self.widths = torch.maximum(spacing, smallest[:, None])

    def _standardized(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - center) / width`` of every centre: (n_features, n_values, n_centers)
        for ``x`` of shape (n_features, n_values)."""
        return (x[:, :, None] - self.centers[:, None, :]) / self.widths[:, None, :]

    def normal_coordinates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g = Phi^{-1}(F(x))`` and ``log dg/dx`` of ``x`` (n_features, n_values),
        exactly (float64, each tail from its own side, in log space)."""
        u = self._standardized(x.to(torch.float64))
        log_m = math.log(self.centers.shape[1])
        log_cdf = torch.logsumexp(torch.special.log_ndtr(u), dim=2) - log_m
        log_survival = torch.logsumexp(torch.special.log_ndtr(-u), dim=2) - log_m
        log_density = (
            torch.logsumexp(-0.5 * u**2 - torch.log(self.widths)[:, None, :], dim=2)
            - log_m
            - _LOG_SQRT_2PI
        )
        # 1 - F does not round to 0 near the top when taken from its own side
        g = torch.where(log_cdf < log_survival, _ndtri_exp(log_cdf), -_ndtri_exp(log_survival))
        return g, log_density + 0.5 * g**2 + _LOG_SQRT_2PI

    def features_near(self, g: torch.Tensor) -> torch.Tensor:
        """Strictly increasing ``x`` (n_features, n_values) where
        ``Phi^{-1}(F(x))`` is near the strictly increasing rows of ``g``
        (float64; ``|g|`` at most 37, where ``Phi`` resolves in float64).

        No root finding: the map is evaluated once on candidates around
        every centre (and out into both tails) and interpolated linearly in
        ``g``. Knots need to be near their targets, not on them, and Newton's
        method on this map stalls where a wide normal meets a pile of narrow
        ones (the centres of a feature near its bound).
        """
        g = g.to(torch.float64)
        if not bool((g.abs() <= 37).all()):
            raise ValueError("g must lie within [-37, 37] (Phi underflows beyond).")
        widest = self.widths.max(dim=1, keepdim=True).values
        around = torch.tensor([-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 3.0], dtype=torch.float64)
        near_centers = self.centers[:, :, None] + self.widths[:, :, None] * around
        # No normal's CDF exceeds Phi(-t) at t of the widest width below the
        # lowest centre, so g(x) <= -t there: the tails reach every target.
        tail = torch.linspace(0.0, float(g.abs().max()) + 1.0, 64, dtype=torch.float64)
        candidates = (
            torch.cat(
                [
                    near_centers.flatten(1),
                    self.centers[:, :1] - widest * tail,
                    self.centers[:, -1:] + widest * tail,
                ],
                dim=1,
            )
            .sort(dim=1)
            .values
        )
        values = self.normal_coordinates(candidates)[0]
        # the first candidate at or above each target, and the one before it
        # (strictly below, so the interval has a positive length)
        above = torch.searchsorted(values, g.contiguous()).clamp(1, values.shape[1] - 1)
        below = above - 1
        value_low, value_high = values.gather(1, below), values.gather(1, above)
        fraction = ((g - value_low) / (value_high - value_low)).clamp(0, 1)
        return torch.lerp(candidates.gather(1, below), candidates.gather(1, above), fraction)


def _ndtri_exp(log_p: torch.Tensor) -> torch.Tensor:
    """``Phi^{-1}(exp(log_p))`` for ``log_p <= log(1/2)`` (the lower half,
    where float64 keeps the digits of small probabilities), finite for any
    finite ``log_p``: below ``exp(-700)``, where ``exp`` would underflow,
    Newton's method on ``log Phi(z) = log_p`` from the tail's asymptote
    ``z^2 = y - log(2 pi y)``, ``y = -2 log_p`` (three steps reach
    round-off there)."""
    far = log_p < -700.0
    direct = torch.special.ndtri(torch.exp(log_p))
    if not bool(far.any()):
        return direct
    y = torch.where(far, -2.0 * log_p, torch.full_like(log_p, 1400.0))
    z = -torch.sqrt(y - torch.log(2.0 * math.pi * y))
    for _ in range(3):
        log_cdf = torch.special.log_ndtr(z)
        log_ratio = -0.5 * z * z - _LOG_SQRT_2PI - log_cdf
        z = z - (log_cdf - torch.where(far, log_p, log_cdf)) / torch.exp(log_ratio)
    return torch.where(far, z, direct)


class FixedMarginalNormalMap(Flow):
    r"""A fixed, strictly increasing map of each feature, without parameters:
    ``forward`` from normal-looking coordinates ``g`` to the features ``x``,
    ``inverse`` from ``x`` to ``g`` (normflows' convention: latent to data).

    Feature by feature, ``g(x)`` is the monotone rational-quadratic spline
    (Durkan et al. 2019) through the knots ``(feature_knots, normal_knots)``
    with slopes ``slopes`` (``dg/dx``) there, and linear beyond the outer
    knots with the outer slopes: a bijection of the real line, smooth
    inside (continuous first derivative), with exact log-determinants both
    ways. :meth:`from_data` places the knots on a marginal Gaussianization of
    the training rows.

    Parameters
    ----------
    feature_knots, normal_knots : tensors of shape (d, n_knots)
        Strictly increasing along each row; ``n_knots >= 2``.
    slopes : tensor of shape (d, n_knots)
        Positive and finite.

    Raises
    ------
    ValueError
        On shapes that disagree, knots that do not increase, or slopes that
        are not positive and finite.
    """

    def __init__(self, feature_knots, normal_knots, slopes):
        super().__init__()
        feature_knots = torch.as_tensor(feature_knots, dtype=torch.float64)
        normal_knots = torch.as_tensor(normal_knots, dtype=torch.float64)
        slopes = torch.as_tensor(slopes, dtype=torch.float64)
        if (
            feature_knots.ndim != 2
            or feature_knots.shape[1] < 2
            or normal_knots.shape != feature_knots.shape
            or slopes.shape != feature_knots.shape
        ):
            raise ValueError(
                "feature_knots, normal_knots and slopes must be 2-D of one shape (d, n_knots) "
                f"with n_knots >= 2; got {tuple(feature_knots.shape)}, "
                f"{tuple(normal_knots.shape)} and {tuple(slopes.shape)}."
            )
        for name, knots in (("feature_knots", feature_knots), ("normal_knots", normal_knots)):
            if not bool(torch.isfinite(knots).all() and (torch.diff(knots, dim=1) > 0).all()):
                raise ValueError(f"{name} must be finite and strictly increasing in every row.")
        if not bool((torch.isfinite(slopes) & (slopes > 0)).all()):
            raise ValueError("slopes must be positive and finite.")
        self.register_buffer("feature_knots", feature_knots.clone())
        self.register_buffer("normal_knots", normal_knots.clone())
        self.register_buffer("slopes", slopes.clone())

    @classmethod
    def from_data(
        cls,
        X,
        *,
        n_centers: int = 128,
        n_knots: int = 1024,
        normal_reach: float = 6.0,
        floor: str = "smooth",
    ) -> FixedMarginalNormalMap:
        """The map through ``n_knots`` points of the marginal Gaussianization of
        ``X`` by :class:`QuantileNormalMixture` (``n_centers``, ``floor``),
        evenly spaced in ``g`` over ``[-normal_reach, normal_reach]``: the
        knots crowd where the data do, and the spline's tails are linear
        beyond ``|g| = normal_reach`` (six standard deviations: beyond the
        data of any table that fits in memory)."""
        if isinstance(n_knots, bool) or not isinstance(n_knots, int) or n_knots < 2:
            raise ValueError(f"n_knots must be an int >= 2; got {n_knots!r}.")
        if not (math.isfinite(normal_reach) and normal_reach > 0):
            raise ValueError(f"normal_reach must be positive and finite; got {normal_reach!r}.")
        mixture = QuantileNormalMixture(X, n_centers=n_centers, floor=floor)
        n_features = mixture.centers.shape[0]
        targets = torch.linspace(-normal_reach, normal_reach, n_knots, dtype=torch.float64)
        feature_knots = mixture.features_near(targets.expand(n_features, n_knots))
        # the knots' own g, not the targets: the spline then passes through
        # the mixture's map exactly where it is evaluated
        normal_knots, log_slopes = mixture.normal_coordinates(feature_knots)
        return cls(feature_knots, normal_knots, torch.exp(log_slopes))

    @property
    def n_features(self) -> int:
        return self.feature_knots.shape[0]

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_knots={self.feature_knots.shape[1]}"

    def _spline(self, values: torch.Tensor, *, from_features: bool):
        """The spline applied to ``values`` (n_values, d), from the features to
        ``g`` or back, and ``log`` of its derivative (``dg/dx`` or ``dx/dg``)
        per value, in the dtype of ``values``.

        Computed in float64 whatever the values' dtype: knots a float32 ulp
        apart (the crowded ones of a feature piled up near a bound) would
        round onto each other and leave bins of zero width.
        """
        dtype = values.dtype
        x_knots, g_knots, slopes = self.feature_knots, self.normal_knots, self.slopes
        source = x_knots if from_features else g_knots
        columns = values.T.to(torch.float64).contiguous()
        n_knots = source.shape[1]
        bins = (torch.searchsorted(source, columns) - 1).clamp(0, n_knots - 2)
        below, above = columns < source[:, :1], columns > source[:, -1:]

        x_low, x_high = x_knots.gather(1, bins), x_knots.gather(1, bins + 1)
        g_low, g_high = g_knots.gather(1, bins), g_knots.gather(1, bins + 1)
        slope_low, slope_high = slopes.gather(1, bins), slopes.gather(1, bins + 1)
        width, height = x_high - x_low, g_high - g_low
        mean_slope = height / width
        curvature = slope_high + slope_low - 2 * mean_slope
        if from_features:
            xi = ((columns - x_low) / width).clamp(0, 1)
        else:
            # the quadratic of Durkan et al.'s inverse, its stable root
            offset = columns - g_low
            a = height * (mean_slope - slope_low) + offset * curvature
            b = height * slope_low - offset * curvature
            c = -mean_slope * offset
            discriminant = (b * b - 4 * a * c).clamp_min(0)
            xi = (2 * c / (-b - torch.sqrt(discriminant))).clamp(0, 1)
        one_minus = 1 - xi
        mixed = xi * one_minus
        denominator = mean_slope + curvature * mixed
        log_slope_inside = (
            2 * torch.log(mean_slope)
            + torch.log(
                slope_high * xi * xi + 2 * mean_slope * mixed + slope_low * one_minus * one_minus
            )
            - 2 * torch.log(denominator)
        )
        # beyond the outer knots: the straight lines of the outer slopes
        if from_features:
            inside = g_low + height * (mean_slope * xi * xi + slope_low * mixed) / denominator

            def outer_line(end: slice) -> torch.Tensor:
                return g_knots[:, end] + slopes[:, end] * (columns - x_knots[:, end])

        else:
            inside = x_low + xi * width

            def outer_line(end: slice) -> torch.Tensor:
                return x_knots[:, end] + (columns - g_knots[:, end]) / slopes[:, end]

        first, last = slice(0, 1), slice(n_knots - 1, None)
        result = torch.where(
            below, outer_line(first), torch.where(above, outer_line(last), inside)
        )
        log_slope = torch.where(
            below,
            torch.log(slopes[:, first]).expand_as(columns),
            torch.where(above, torch.log(slopes[:, last]).expand_as(columns), log_slope_inside),
        )
        sign = 1.0 if from_features else -1.0
        return result.T.to(dtype), (sign * log_slope.sum(dim=0)).to(dtype)

    def forward(self, z: torch.Tensor):
        return self._spline(z, from_features=False)

    def inverse(self, x: torch.Tensor):
        return self._spline(x, from_features=True)

r"""A base built from tempered tensor-train layers: deep inverse Rosenblatt transport.

One squared tensor train on one box is a poor base for targets whose mass is
curved, scale-varying or concentrated far below the box's resolution (funnels,
ridges, long coupled chains): the train needs a rank and a degree it cannot
afford. Cui and Dolgov [1]_ build the transport instead as a composition of
train-based maps, each of which only *corrects* the ones before it:

.. math::

    T_K = F \circ S_1 \circ \dots \circ S_K, \qquad
    x = T_K(v_K), \quad v_K \sim \rho = \mathcal{U}([-1, 1]^d),

- ``F`` is a fixed outer map from the cube to :math:`\mathbb{R}^d`,
  ``x = shift + matrix @ Phi^{-1}((v + 1) / 2)`` (``Phi`` the standard normal
  CDF): the push-forward of :math:`\rho` by ``F`` is the Gaussian
  ``g = N(shift, matrix matrix^T)``; or, with ``outer="affine"``,
  ``x = shift + matrix @ v`` and ``g`` uniform on that parallelepiped (the
  box setting of [1]_, zero density outside it);
- ``S_k`` is the inverse Rosenblatt transport of a layer density on the cube,
  :math:`p_k = (1 - \tau) s_k^2 / \lVert C_k \rVert^2 + \tau 2^{-d}`, a
  squared train plus a defensive uniform part (:math:`\tau` =
  ``defensive_weight``) that keeps every layer density positive, so that each
  ``S_k`` is a bijection of the cube with a finite Jacobian
  (:func:`~sktt_flow.tt.sampling.inverse_rosenblatt_right_orthogonal`).

Layer ``k`` is a TT-cross approximation of the *pulled-back bridge*

.. math::

    \pi_k(u) = h_k(T_{k-1}(u))\, |\det \nabla T_{k-1}(u)|
             = \frac{h_k}{q_{k-1}}(T_{k-1}(u))\, \rho(u),
    \qquad h_k = h^{\beta_k} g^{1 - \beta_k},

with :math:`q_{k-1} = (T_{k-1})_\# \rho`, ``g`` the push-forward by the
outer map alone (:math:`q_0 = g`) and tempering exponents
:math:`\beta_1 \le \beta_2 \le \dots \le 1`: when the layers before are good,
:math:`\pi_k` is close to uniform, of low rank and degree, whatever the shape
of ``h``.

*Why the geometric bridge* :math:`h^{\beta} g^{1-\beta}` *and not*
:math:`h^{\beta}` *alone* (a measured deviation from the plain power of
[1]_, which tempers a likelihood against a prior): :math:`\pi_1` for
:math:`h^{\beta}` is :math:`h^{\beta} / g` on the cube, unbounded at its faces
unless ``g`` is at least as wide as :math:`h^{\beta}`, i.e. widened by
:math:`\beta^{-1/2}`; and a widened Gaussian does not approach
:math:`h^{\beta}` as :math:`\beta \to 0` for a curved target (the banana's
ridge bends more in whitened units as it is flattened). On ``Banana`` the ESS
of the widened Gaussian fell with :math:`\beta`, the first exponent hit its
floor 1e-3 and eight layers ended at ESS 0.001. With the geometric bridge
:math:`\beta = 0` is ``g`` itself (ESS 1), the ESS against the bridge falls
from 1 as :math:`\beta` grows, and the bisection below is well posed (the same
settings: four layers, ESS 0.999, see :func:`fit_tempered_base`).

**Which targets need it, measured** (``benchmarks/bench_tempered.py``, the
base alone, 20,000 draws, one thread; the single train is the estimator's
``TensorizingFlowDensity(domain="auto", flow="none")`` at the same rank and
``n_basis``):

- curved ridges: ``Banana(2, curvature=0.1)``, rank 8, ``n_basis`` 32, nine
  layers: reverse KL 0.0024, ESS 1.000, ``|log Z error|`` 0.0002 in 5 s,
  against 0.26, 0.951 and 0.22 for the single train;
- ``DoubleRosenbrock(11)``, rank 8, ``n_basis`` 24, seven layers: KL 0.148,
  ESS 0.68, ``|log Z error|`` 0.0015 in 63 s, against KL 1.17 and
  ``|log Z error|`` 0.72 (a mode missed) for the single train;
- not ``GinzburgLandau1D(50)``: its steps of :math:`\beta` are tiny (``log h``
  spans hundreds of nats), each layer costs minutes at ``d = 50``, and one
  layer at :math:`\beta = 1` through the Gaussian map (KL 0.13, ESS 0.87) is
  worse than the single train on its box (KL 0.070, ESS 0.90); refinements at
  :math:`\beta = 1` did not raise the ELBO (the spurious mass of a train is in
  small pockets that cross on the ratio does not see);
- not ``NealsFunnel(10)`` with these bridges: they drift away from the neck.
  Integrating out the ``x_i`` of :math:`h^{\beta} g^{1-\beta}` leaves
  :math:`(1 - \beta) \tfrac{d-1}{2} v` in the log-marginal of ``v`` (the
  volume term that :math:`\beta = 1` cancels), until ``g``'s tails take over
  near :math:`v = \log(s^2 \beta / (1 - \beta))` (``s`` the outer standard
  deviation of ``x_i``: about 6.6 at :math:`\beta = 0.67`). Measured at
  :math:`\beta = 0.67`: the median of ``v`` under the layers was 5.1 and its 1%
  quantile 2.3, where the funnel has half its mass below 0; the ratio at
  :math:`\beta = 1` is huge in the neck, where the layers left no mass, and
  bounded layer densities cannot bring it back. The schedule stalls near
  :math:`\beta = 0.65` (KL 2.4 against 34 for the single train, ESS 0.03 for
  both; rank 16, 236 s). A path that tempers the ``x_i | v`` part only, or
  an outer map adapted to the funnel, would be needed.

**What it costs.** ``K`` layers cost about ``K`` times one train's cross
evaluations, and every evaluation of layer ``k`` pushes its points through the
``k - 1`` layers before it (a Rosenblatt solve per coordinate and layer: about
50-200 microseconds per point and layer at ``d = 50``, rank 8, ``n_basis`` 16
on one core); sampling costs ``K`` inverse sweeps per draw and
:meth:`TemperedTTBase.log_prob` ``K`` forward sweeps.

*The outer Gaussian's tails.* Every layer density is bounded, so ``q_K``
cannot have heavier tails than ``g`` by more than a constant factor: choose
``matrix`` at least as wide as the target (a few times its covariance's
Cholesky factor for heavy or curved tails). Too wide a ``g`` costs resolution
and puts a little spurious mass far out, which the reverse KL sees before the
ESS does.

**Exactness.** For a triangular monotone transport,
:math:`|\det \nabla S_j(v)| = \rho(v) / p_j(S_j(v))`, so with
``v_0 = F^{-1}(x)`` and ``v_j = S_j^{-1}(v_{j-1})`` (forward Rosenblatt maps)

.. math::

    \log q_K(x) = \sum_{j=1}^{K} \log p_j(v_{j-1}) + d (K - 1) \log 2
                  - \log |\det \nabla F(v_0)|,

every term exact: sampling uses the inverse maps and reads each ``p_j`` off the
same sweep, the density uses the forward maps (one Clenshaw evaluation per
coordinate and layer, no solve). Nothing is estimated.

**Schedule.** :func:`fit_tempered_base` chooses each :math:`\beta_{k+1}` as
the largest value in :math:`[\beta_k, 1]` at which the importance-sampling ESS
of :math:`q_k` against :math:`h_{k+1}` stays above ``min_ess``, by bisection on
one set of exact draws of :math:`q_k` (one evaluation of ``log h`` per draw, no
more); the first exponent likewise on draws of ``g``.

References
----------
.. [1] T. Cui and S. Dolgov, "Deep composition of tensor-trains using squared
   inverse Rosenblatt transports", Found. Comput. Math. 22 (2022) 1863-1922.
.. [2] T. Cui, S. Dolgov and R. Scheichl, "Deep importance sampling using
   tensor trains with application to a priori and a posteriori rare events",
   SIAM J. Sci. Comput. 46 (2024).
"""

from __future__ import annotations

import functools
import math
import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from normflows.distributions import BaseDistribution
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sktt_flow.diagnostics.importance import importance_diagnostics
from sktt_flow.tt.algebra import check_cores, right_orthogonalize, scale_to_unit_max
from sktt_flow.tt.fit_log_density import fit_log_density
from sktt_flow.tt.sampling import (
    _check_defensive_weight,
    conditional_cdf_operators,
    inverse_rosenblatt_right_orthogonal,
    rosenblatt_right_orthogonal,
)
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.validation import check_num_samples, check_points, check_positive_int

__all__ = ["TemperedLayerReport", "TemperedReport", "TemperedTTBase", "fit_tempered_base"]

#: Points per pass through the layers: bounds the memory of a sweep (about
#: ``(2 n_basis + 40) r^2`` float64 numbers per point) whatever the caller asks.
CHUNK_SIZE = 65536

#: Bisection steps of the schedule: the exponent to within 2^-30 of the
#: interval, far below anything the ESS can resolve.
BISECTION_STEPS = 30

_LOG_2PI = math.log(2.0 * math.pi)

#: The outer maps from the cube: the Gaussian quantile map (full support) and
#: the affine map onto a parallelepiped (a box; zero density outside).
OUTER_MAPS = ("gaussian", "affine")


def _standard_normal_quantile(v: torch.Tensor) -> torch.Tensor:
    """``Phi^{-1}((v + 1) / 2)`` for ``v`` in [-1, 1], accurate in both tails.

    Each half uses the side where ``(1 -+ v) / 2`` is exact (Sterbenz), so a
    point within rounding of ``+1`` keeps its full relative precision; the
    argument is kept at least ``tiny``, where the quantile is about -37.5
    (finite), as ``v`` can reach the faces of the cube by rounding.
    """
    tiny = torch.finfo(v.dtype).tiny
    lower = torch.special.ndtri(((1.0 + v) / 2.0).clamp_min(tiny))
    upper = -torch.special.ndtri(((1.0 - v) / 2.0).clamp_min(tiny))
    return torch.where(v <= 0.0, lower, upper)


def _standard_normal_cdf_centered(z: torch.Tensor) -> torch.Tensor:
    """``2 Phi(z) - 1`` (the inverse of :func:`_standard_normal_quantile`)."""
    return torch.where(
        z <= 0.0, 2.0 * torch.special.ndtr(z) - 1.0, 1.0 - 2.0 * torch.special.ndtr(-z)
    )


class TemperedTTBase(BaseDistribution):
    r"""Exact base distribution: the uniform on the cube pushed by tempered TT layers.

    The push-forward ``(F o S_1 o ... o S_K)_# U([-1, 1]^d)`` of the uniform
    by the layers' transports and the outer map.

    See :mod:`sktt_flow.flows.tempered` for the construction and the formula
    of the density. Build one with :func:`fit_tempered_base`, or let
    ``TensorizingFlowDensity(base="tempered")`` place and build it with the
    flow on top; the constructor assembles given layers.

    It is a :class:`normflows.distributions.BaseDistribution`, a drop-in base
    for :class:`~sktt_flow.flows.TensorizingFlow` in variational mode (the
    reverse-KL loop draws from the frozen base).

    Parameters
    ----------
    layers : sequence of sequences of tensors
        The trains ``s_1, ..., s_K`` (layer 1 is applied last when sampling,
        first when evaluating: next to the outer map), each a list of ``d``
        cores ``(r_{j-1}, n, r_j)`` of Legendre coefficients on ``[-1, 1]``.
        Their scale is irrelevant; they are right-orthogonalised and
        normalised here. May be empty: the base is then the Gaussian of the
        outer map.
    shift : array-like (d,)
    matrix : array-like (d, d)
        The outer map ``x = shift + matrix @ Phi^{-1}((v + 1) / 2)``;
        ``matrix`` must be invertible (a Cholesky factor of a covariance, say).
    defensive_weight : float, default=1e-9
        Weight ``tau`` in (0, 1) of the uniform part of every layer density:
        ``log p_j >= log tau - d log 2``, which bounds the Jacobians. Its cost
        in reverse KL is about ``tau`` times the mean of ``log q - log h`` over
        the uniform part's draws, per layer: small as it must be for targets
        with very light tails somewhere. Measured on ``Banana()`` (n_basis 16,
        four layers, 20,000 draws): reverse KL 0.51 at 1e-2, 0.0074 at 1e-4,
        0.0071 at 1e-6, the ESS 0.999 throughout.
    outer : {"gaussian", "affine"}, default="gaussian"
        The outer map ``F``: ``shift + matrix @ Phi^{-1}((v + 1) / 2)`` (full
        support, ``g`` Gaussian), or ``shift + matrix @ v``, the cube onto a
        parallelepiped (``g`` uniform on it, the tempering of [1]_ on a box,
        ``log_prob = -inf`` outside: for reverse-KL training only, and only
        for targets with essentially all their mass inside).
    betas : sequence of float, optional
        The tempering exponents the layers were built for (for the record).
    report : TemperedReport, optional
        Set by :func:`fit_tempered_base`.

    Attributes
    ----------
    shift, matrix, matrix_inverse : buffers
        The outer map and its inverse.
    log_abs_det : buffer (scalar)
        ``log |det matrix|``.
    betas : tuple of float
    report : TemperedReport or None

    Notes
    -----
    All the work is done in float64 (a copy of the buffers), whatever the
    module's dtype; results are returned in the dtype of :attr:`shift`.
    :meth:`log_prob` is computed without gradient: the base is frozen, which
    is what reverse-KL training needs (samples and their ``log q`` from
    :meth:`forward`). Data mode, which differentiates ``log q_0`` with
    respect to the points, is not supported.

    Cost: sampling runs ``K`` inverse Rosenblatt sweeps (a safeguarded Newton
    solve per coordinate), about ``K`` times a single train's cost;
    :meth:`log_prob` runs ``K`` forward sweeps, cheaper (one Clenshaw
    evaluation per coordinate instead of a solve).

    References
    ----------
    .. [1] T. Cui and S. Dolgov, "Deep composition of tensor-trains using
       squared inverse Rosenblatt transports", Found. Comput. Math. 22 (2022)
       1863-1922.
    .. [2] T. Cui, S. Dolgov and R. Scheichl, "Deep importance sampling using
       tensor trains with application to a priori and a posteriori rare
       events", SIAM J. Sci. Comput. 46 (2024).

    Examples
    --------
    >>> import torch
    >>> from sktt_flow.flows import TemperedTTBase
    >>> generator = torch.Generator().manual_seed(0)
    >>> layer = [torch.randn(1, 6, 2, dtype=torch.float64, generator=generator),
    ...          torch.randn(2, 6, 1, dtype=torch.float64, generator=generator)]
    >>> base = TemperedTTBase([layer], torch.zeros(2), torch.eye(2))
    >>> x, log_q = base.forward(4, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(log_q, base.log_prob(x)))
    True
    """

    def __init__(
        self,
        layers: Sequence[Sequence[torch.Tensor]],
        shift,
        matrix,
        *,
        defensive_weight: float = 1e-9,
        outer: str = "gaussian",
        betas: Sequence[float] | None = None,
        report: TemperedReport | None = None,
    ):
        super().__init__()
        shift = torch.as_tensor(shift)
        if not shift.is_floating_point():
            shift = shift.to(torch.get_default_dtype())
        dtype, device = shift.dtype, shift.device
        if shift.ndim != 1 or shift.shape[0] < 1:
            raise ValueError(f"shift must be a 1-D tensor (d,), got shape {tuple(shift.shape)}.")
        n_features = shift.shape[0]
        matrix = torch.as_tensor(matrix, dtype=torch.float64, device=device)
        if matrix.shape != (n_features, n_features):
            raise ValueError(
                f"matrix must have shape ({n_features}, {n_features}) to match shift, "
                f"got {tuple(matrix.shape)}."
            )
        if not bool(torch.isfinite(matrix).all()) or not bool(torch.isfinite(shift).all()):
            raise ValueError("shift and matrix must be finite.")
        sign, log_abs_det = torch.linalg.slogdet(matrix)
        if float(sign) == 0.0 or not math.isfinite(float(log_abs_det)):
            raise ValueError("matrix must be invertible (its determinant is 0).")
        if isinstance(defensive_weight, (int, float)) and defensive_weight == 0:
            raise ValueError(
                "defensive_weight must be > 0: without the uniform part a layer density "
                "vanishes where its train does, and the transports lose their inverse."
            )
        self.defensive_weight = _check_defensive_weight(defensive_weight)
        if outer not in OUTER_MAPS:
            raise ValueError(f"outer must be one of {OUTER_MAPS}, got {outer!r}.")
        self.outer = outer
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("matrix", matrix.to(dtype))
        self.register_buffer("matrix_inverse", torch.linalg.inv(matrix).to(dtype))
        self.register_buffer("log_abs_det", log_abs_det.to(dtype))
        self.layers = nn.ModuleList()
        for index, cores in enumerate(layers):
            self.layers.append(_Layer(cores, n_features, index, dtype, device))
        self.betas = tuple(float(beta) for beta in betas) if betas is not None else ()
        if betas is not None and len(self.betas) != len(self.layers):
            raise ValueError(f"betas has {len(self.betas)} entries for {len(self.layers)} layers.")
        self.report = report

    # ------------------------------------------------------------------ shape
    @property
    def n_features(self) -> int:
        """Number of coordinates ``d``."""
        return int(self.shift.shape[0])

    @property
    def n_layers(self) -> int:
        """Number of train layers ``K``."""
        return len(self.layers)

    def extra_repr(self) -> str:
        ranks = [max(layer.tt_ranks) for layer in self.layers]
        return (
            f"n_features={self.n_features}, n_layers={self.n_layers}, max_ranks={ranks}, "
            f"defensive_weight={self.defensive_weight:g}, outer={self.outer!r}"
        )

    def truncated(self, n_layers: int) -> TemperedTTBase:
        """The base of the first ``n_layers`` layers (the same outer map)."""
        n_layers = check_positive_int(n_layers, "n_layers", 0)
        if n_layers > self.n_layers:
            raise ValueError(f"n_layers must be at most {self.n_layers}, got {n_layers}.")
        return TemperedTTBase(
            [layer.cores() for layer in self.layers[:n_layers]],
            self.shift,
            self.matrix.double(),
            defensive_weight=self.defensive_weight,
            outer=self.outer,
            betas=self.betas[:n_layers] if self.betas else None,
        )

    # ------------------------------------------------------------ transports
    def _outer(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = F(v)`` and ``log |det grad F(v)|``, float64."""
        z = v if self.outer == "affine" else _standard_normal_quantile(v)
        x = self.shift.double() + z @ self.matrix.double().T
        return x, self._outer_log_det(z)

    def _outer_inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v = F^{-1}(x)`` and ``log |det grad F(v)|``, float64 (from ``z``
        directly, so exact even where ``v`` rounds onto a face)."""
        z = (x - self.shift.double()) @ self.matrix_inverse.double().T
        if self.outer == "affine":
            return z, self._outer_log_det(z)
        return _standard_normal_cdf_centered(z), self._outer_log_det(z)

    def _outer_log_det(self, z: torch.Tensor) -> torch.Tensor:
        log_abs_det = self.log_abs_det.double()
        if self.outer == "affine":
            return log_abs_det.expand(z.shape[0])
        # dx/dv = matrix diag(1 / (2 phi(z))): log|det| = log|det A| - d log 2 - sum log phi(z)
        d = self.n_features
        return log_abs_det - d * math.log(2.0) + 0.5 * z.square().sum(dim=1) + 0.5 * d * _LOG_2PI

    def reference_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log g(x)`` of the push-forward ``g`` of the uniform by the outer map
        alone, float64: ``N(shift, matrix matrix^T)``, or with
        ``outer="affine"`` the uniform density on the parallelepiped
        (``-inf`` outside)."""
        z = (x.double() - self.shift.double()) @ self.matrix_inverse.double().T
        d = self.n_features
        if self.outer == "affine":
            inside = (z.abs() <= 1.0).all(dim=1)
            value = -d * math.log(2.0) - self.log_abs_det.double()
            return torch.where(inside, value, -math.inf)
        return -0.5 * z.square().sum(dim=1) - 0.5 * d * _LOG_2PI - self.log_abs_det.double()

    def from_latent(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = T_K(v)`` and ``log q_K(x)`` for points ``v`` of ``[-1, 1]^d``, float64.

        The inverse Rosenblatt maps of the layers from the last to the first,
        each returning its layer density at its output, then the outer map.
        """
        v = v.double()
        n_points, d = v.shape
        log_q = v.new_full((n_points,), d * (self.n_layers - 1) * math.log(2.0))
        for layer in reversed(self.layers):
            v, log_density = layer.inverse(v, self.defensive_weight)
            log_q += log_density
        x, log_det = self._outer(v)
        return x, log_q - log_det

    def to_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v = T_K^{-1}(x)`` and ``log q_K(x)``, float64: the outer map's
        inverse, then the forward Rosenblatt maps of the layers in order."""
        v, log_det = self._outer_inverse(x.double())
        d = v.shape[1]
        log_q = (d * (self.n_layers - 1) * math.log(2.0)) - log_det
        # Only the affine outer map has points outside the cube (zero density).
        inside = (v.abs() <= 1.0).all(dim=1)
        for layer in self.layers:
            v, log_density = layer.forward_map(v, self.defensive_weight)
            log_q = log_q + log_density
        return v, torch.where(inside, log_q, -math.inf)

    # ---------------------------------------------------------------- density
    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        """Exact normalised ``log q_K(z)``, shape (N,), without gradient.

        Finite for every finite ``z`` with the Gaussian outer map; ``-inf``
        outside the parallelepiped with the affine one. ``context`` is
        ignored (normflows compatibility).
        """
        z = check_points(z, self.n_features, self.shift)
        with torch.no_grad():
            parts = [self.to_latent(block)[1] for block in z.split(CHUNK_SIZE)]
        if not parts:
            return z.new_zeros(0)
        return torch.cat(parts).to(self.shift.dtype)

    # --------------------------------------------------------------- sampling
    def forward(self, num_samples: int = 1, context=None, generator=None):
        """Exact samples and their exact log-density ``(z, log q(z))``.

        One pass: the inverse maps return the layer densities at their
        outputs, so ``log q`` costs nothing beyond the draw.

        Parameters
        ----------
        num_samples : int
        context : ignored
        generator : torch.Generator, optional
            On the distribution's device; fixes the draw.
        """
        num_samples = check_num_samples(num_samples)
        device = self.shift.device
        chunks, log_parts = [], []
        with torch.no_grad():
            for start in range(0, num_samples, CHUNK_SIZE):
                size = min(CHUNK_SIZE, num_samples - start)
                uniforms = torch.rand(
                    size, self.n_features, generator=generator, dtype=torch.float64, device=device
                )
                x, log_q = self.from_latent(2.0 * uniforms - 1.0)
                chunks.append(x)
                log_parts.append(log_q)
        if not chunks:
            empty = torch.empty(0, self.n_features, dtype=self.shift.dtype, device=device)
            return empty, empty.new_zeros(0)
        dtype = self.shift.dtype
        return torch.cat(chunks).to(dtype), torch.cat(log_parts).to(dtype)

    def sample(self, num_samples: int = 1, context=None, generator=None) -> torch.Tensor:
        """Exact samples, shape (num_samples, d); see :meth:`forward`."""
        return self.forward(num_samples, generator=generator)[0]


class _Layer(nn.Module):
    """One layer's right-orthogonal train on ``[-1, 1]^d``, as buffers."""

    def __init__(self, cores, n_features: int, index: int, dtype, device):
        super().__init__()
        cores = [torch.as_tensor(core, device=device) for core in cores]
        if len(cores) != n_features:
            raise ValueError(
                f"layer {index} has {len(cores)} cores but the base has n_features={n_features}."
            )
        check_cores(cores)
        n_basis = cores[0].shape[1]
        if any(core.shape[1] != n_basis for core in cores):
            raise ValueError(f"layer {index}: all cores must have the same n_basis.")
        cores = [core.detach().double() for core in cores]
        if not all(bool(torch.isfinite(core).all()) for core in cores):
            raise ValueError(f"layer {index} has non-finite cores.")
        cores, _ = scale_to_unit_max(cores)
        cores = right_orthogonalize(cores)
        norm = cores[0].norm()
        if not bool(norm > 0):
            raise ValueError(f"layer {index} is the zero train.")
        cores[0] = cores[0] / norm
        for k, core in enumerate(cores):
            self.register_buffer(f"core_{k}", core.to(dtype).contiguous())
        self.n_cores = n_features

    @property
    def n_basis(self) -> int:
        return int(self.core_0.shape[1])

    @property
    def tt_ranks(self) -> tuple[int, ...]:
        return (1, *(int(getattr(self, f"core_{k}").shape[2]) for k in range(self.n_cores)))

    def cores(self) -> list[torch.Tensor]:
        return [getattr(self, f"core_{k}").double() for k in range(self.n_cores)]

    def _box(self, like: torch.Tensor):
        ones = torch.ones(self.n_cores, dtype=torch.float64, device=like.device)
        operators = conditional_cdf_operators(self.n_basis, torch.float64, like.device)
        return -ones, ones, operators

    def inverse(self, v: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``S(v)`` and ``log p(S(v))`` (the inverse Rosenblatt map on the cube)."""
        low, high, operators = self._box(v)
        uniforms = ((v + 1.0) / 2.0).clamp(0.0, 1.0)
        return inverse_rosenblatt_right_orthogonal(
            self.cores(), low, high, uniforms, operators, defensive_weight=tau
        )

    def forward_map(self, u: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``S^{-1}(u)`` and ``log p(u)`` (the Rosenblatt map on the cube)."""
        low, high, operators = self._box(u)
        uniforms, log_density = rosenblatt_right_orthogonal(
            self.cores(), low, high, u, operators, defensive_weight=tau
        )
        return 2.0 * uniforms - 1.0, log_density


# ====================================================================== builder
@dataclass(frozen=True)
class TemperedLayerReport:
    """One layer of :func:`fit_tempered_base`.

    Attributes
    ----------
    beta : float
        The exponent of the bridge ``h^beta g^(1 - beta)`` the layer was built for.
    tt_ranks : tuple of int
    n_basis : int
    n_evaluations : int
        Evaluations of ``log h`` spent on this layer: its TT-cross (with
        cross's own self-checks) and the schedule's draws after it.
    cross_ess : float
        Cross's self-check ESS of the layer against its pulled-back bridge.
    ess : float
        ESS of ``q_k`` (all layers so far) against the bridge on the
        schedule's draws.
    elbo : float
        ``mean(log h_beta - log q_k)`` on the same draws.
    seconds : float
    """

    beta: float
    tt_ranks: tuple[int, ...]
    n_basis: int
    n_evaluations: int
    cross_ess: float
    ess: float
    elbo: float
    seconds: float


@dataclass
class TemperedReport:
    """What :func:`fit_tempered_base` did, and the final self-check against ``h``.

    Attributes
    ----------
    layers : list of TemperedLayerReport
    n_rejected_layers : int
        Layers built and dropped (their evaluations count in
        ``n_evaluations`` only).
    first_beta_ess : float
        ESS of the outer Gaussian against the first bridge.
    reached_target : bool
        Whether the last layer's exponent is 1.
    stop_reason : str
    n_evaluations : int
        All evaluations of ``log h``, the final self-check included.
    ess, kl, elbo, elbo_std_error, log_normalizer, log_normalizer_std_error : float
        Self-check of the returned base against ``h`` on ``n_check_samples``
        exact draws: ESS, reverse-KL estimate ``log Z - ELBO`` (with the
        estimated ``log Z``), ELBO, ``log Z`` estimate and their standard
        errors (:func:`~sktt_flow.diagnostics.importance.importance_diagnostics`).
    n_check_samples : int
    seconds : float
    """

    layers: list[TemperedLayerReport] = field(default_factory=list)
    first_beta_ess: float = math.nan
    n_rejected_layers: int = 0
    reached_target: bool = False
    stop_reason: str = ""
    n_evaluations: int = 0
    ess: float = math.nan
    kl: float = math.nan
    elbo: float = math.nan
    elbo_std_error: float = math.nan
    log_normalizer: float = math.nan
    log_normalizer_std_error: float = math.nan
    n_check_samples: int = 0
    seconds: float = 0.0

    @property
    def betas(self) -> tuple[float, ...]:
        """The exponents of the layers, in order."""
        return tuple(layer.beta for layer in self.layers)


class _CountingTarget:
    """``log h`` on float64 CPU-or-device points, checked, with a count."""

    def __init__(self, log_target: Callable, n_features: int):
        if not callable(log_target):
            raise TypeError(f"log_target must be callable, got {type(log_target).__name__}.")
        self.log_target = log_target
        self.n_features = n_features
        self.n_evaluations = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_evaluations += x.shape[0]
        values = self.log_target(x)
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(np.asarray(values, dtype=np.float64))
        values = values.to(dtype=torch.float64, device=x.device).reshape(-1)
        if values.shape[0] != x.shape[0]:
            raise ValueError(
                f"log_target returned {values.shape[0]} values for {x.shape[0]} points."
            )
        if bool(torch.isnan(values).any()) or bool((values == math.inf).any()):
            raise ValueError("log_target returned NaN or +inf.")
        return values


def _ess(log_weights: torch.Tensor) -> float:
    """Normalised ESS of log-weights (0 when every weight is zero)."""
    if not bool(torch.isfinite(log_weights).any()):
        return 0.0
    normalised = torch.softmax(log_weights, 0)
    return float(1.0 / (log_weights.shape[0] * normalised.square().sum()))


def _per_layer(value, name: str) -> list:
    """``value`` as a non-empty list of per-layer settings."""
    if isinstance(value, (str, numbers.Integral)):
        return [value]
    if isinstance(value, Sequence) and len(value) > 0:
        return list(value)
    raise ValueError(f"{name} must be an integer or a non-empty sequence, got {value!r}.")


def _bridge_ess(
    log_h: torch.Tensor, log_g: torch.Tensor, log_q: torch.Tensor, beta: float
) -> float:
    """ESS of draws with ``log q`` against the bridge ``h^beta g^(1 - beta)``."""
    return _ess(beta * log_h + (1.0 - beta) * log_g - log_q)


def _largest_beta(ess_at: Callable[[float], float], low: float, min_ess: float) -> float:
    """The largest ``beta`` in ``[low, 1]`` with ``ess_at(beta) >= min_ess``
    by bisection in ``log beta`` (``low`` when even the first step fails)."""
    if ess_at(1.0) >= min_ess:
        return 1.0
    lower, upper = math.log(low), 0.0
    for _ in range(BISECTION_STEPS):
        middle = (lower + upper) / 2.0
        if ess_at(math.exp(middle)) >= min_ess:
            lower = middle
        else:
            upper = middle
        if upper - lower < 1e-6:
            break
    return math.exp(lower)


def fit_tempered_base(
    log_target: Callable,
    shift,
    matrix,
    *,
    tt_rank: int | Sequence[int] = 8,
    n_basis: int | str | Sequence[int | str] = 16,
    min_ess: float = 0.5,
    target_ess: float = 0.95,
    target_kl: float = 0.01,
    max_layers: int = 8,
    max_retries: int = 2,
    min_beta: float = 1e-3,
    outer: str = "gaussian",
    defensive_weight: float = 1e-9,
    n_schedule_samples: int = 4000,
    n_check_samples: int = 10000,
    max_evals_per_layer: int | None = None,
    cross_options: dict | None = None,
    random_state=None,
    verbose: int = 0,
) -> TemperedTTBase:
    r"""Build a :class:`TemperedTTBase` for an unnormalised log-density by tempering.

    1. The first exponent :math:`\beta_1`: the largest value in
       ``[min_beta, 1]`` at which ``n_schedule_samples`` draws of the outer
       Gaussian ``g`` have ESS at least ``min_ess`` against the bridge
       :math:`h_\beta = h^{\beta} g^{1 - \beta}` (bisection in
       :math:`\log \beta`, one evaluation of ``log h`` per draw).
    2. Layer ``k``: TT-cross (:func:`~sktt_flow.tt.fit_log_density.fit_log_density`
       on ``[-1, 1]^d``) of the pulled-back bridge
       :math:`\log \pi_k(u) = \log h_{\beta_k}(x) - \log q_{k-1}(x) - d \log 2`,
       ``(x, log q_{k-1}(x)) = T_{k-1}(u)``.
    3. ``n_schedule_samples`` exact draws of :math:`q_k`, one evaluation of
       ``log h`` each; :math:`\beta_{k+1}` = the largest value in
       :math:`[\beta_k, 1]` whose ESS stays at least ``min_ess`` (bisection,
       no more evaluations). When not even :math:`\beta_k` passes, the next
       layer refines at :math:`\beta_k`.
    4. At :math:`\beta = 1`, further layers refine while the ESS is below
       ``target_ess`` or the reverse-KL estimate above ``target_kl``.

    A layer is kept only if it does not lower the ELBO against its bridge
    (compared with the base before it, on that base's schedule draws, beyond
    twice the combined standard error); a refinement (the same exponent as
    the layer before) must raise it beyond that noise. Otherwise the layer is
    dropped: a layer that cross cannot fit makes the composition worse, and
    the next one would start from there. A dropped step of ``beta`` is
    retried at half its length up to ``max_retries`` times in a row; a
    dropped refinement stops the construction.

    Parameters
    ----------
    log_target : callable
        ``log h``: a float64 tensor (m, d) to m values (tensor or array-like);
        ``-inf`` for zero density.
    shift : array-like (d,)
    matrix : array-like (d, d)
        Location and invertible scale matrix of the outer Gaussian, e.g. the
        mode and a Cholesky factor of the Laplace covariance
        (:func:`~sktt_flow.geometry.find_modes`,
        :func:`~sktt_flow.geometry.laplace_covariance`), or the mean and a
        Cholesky factor of a covariance of draws, widened: ``q_K`` cannot
        have heavier tails than ``g = N(shift, matrix matrix^T)`` by more
        than a constant factor (see :mod:`sktt_flow.flows.tempered`).
    tt_rank, n_basis : int or sequence
        Of each layer's cross (``n_basis`` may be ``"auto"``). A sequence
        gives layer ``k`` its ``k``-th entry and every later layer the last
        one: corrections close to uniform need less than the first layer.
    min_ess : float, default=0.5
        ESS kept between consecutive bridges.
    target_ess : float, default=0.95
    target_kl : float, default=0.01
        Refinements at :math:`\beta = 1` stop once the ESS against ``h`` is at
        least ``target_ess`` and the reverse-KL estimate at most
        ``target_kl`` (on the schedule's draws).
    max_layers : int, default=8
        Layers kept, at most.
    max_retries : int, default=2
        Halvings of a step of ``beta`` whose layer was dropped (see below)
        before the construction stops.
    min_beta : float, default=1e-3
        Floor of :math:`\beta_1`.
    defensive_weight : float, default=1e-9
        Uniform weight of every layer density (see :class:`TemperedTTBase`).
    outer : {"gaussian", "affine"}, default="gaussian"
        The outer map (see :class:`TemperedTTBase`); with ``"affine"`` the
        bridges are ``h^beta`` on the parallelepiped, the setting of [1]_.
    n_schedule_samples : int, default=4000
        Exact draws per schedule step.
    n_check_samples : int, default=10000
        Exact draws of the final self-check (0: none).
    max_evals_per_layer : int, optional
        Evaluation budget of each layer's cross.
    cross_options : dict, optional
        More keyword arguments of :func:`~sktt_flow.tt.fit_log_density.fit_log_density`
        (``tol``, ``max_sweeps``, ``cross_method``, ``kick_rank``, ...).
    random_state : int, RandomState, Generator, torch.Generator or None
    verbose : int, default=0
        1: one line per layer.

    Returns
    -------
    TemperedTTBase
        On the CPU in float64, with ``report`` (:class:`TemperedReport`).

    Raises
    ------
    ValueError, TypeError
        For bad arguments or a misbehaving ``log_target``.

    Warns
    -----
    ConvergenceWarning
        When the construction ends below :math:`\beta = 1` (``max_layers``
        reached, or a layer dropped after ``max_retries``): the base then
        approximates the bridge :math:`h_{\beta_K}`, not ``h`` (the report's self-check is
        against ``h``).

    References
    ----------
    .. [1] T. Cui and S. Dolgov, "Deep composition of tensor-trains using
       squared inverse Rosenblatt transports", Found. Comput. Math. 22 (2022)
       1863-1922.
    .. [2] T. Cui, S. Dolgov and R. Scheichl, "Deep importance sampling using
       tensor trains with application to a priori and a posteriori rare
       events", SIAM J. Sci. Comput. 46 (2024).
    """
    started = time.perf_counter()
    shift = torch.as_tensor(np.asarray(shift, dtype=np.float64))
    if shift.ndim != 1 or shift.shape[0] < 1:
        raise ValueError(f"shift must be a 1-D array (d,), got shape {tuple(shift.shape)}.")
    n_features = shift.shape[0]
    matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if matrix.shape != (n_features, n_features):
        raise ValueError(
            f"matrix must have shape ({n_features}, {n_features}), got {tuple(matrix.shape)}."
        )
    tt_ranks = _per_layer(tt_rank, "tt_rank")
    n_bases = _per_layer(n_basis, "n_basis")
    for value in tt_ranks:
        check_positive_int(value, "tt_rank")
    check_positive_int(max_layers, "max_layers")
    check_positive_int(max_retries, "max_retries", 0)
    check_positive_int(n_schedule_samples, "n_schedule_samples", 2)
    check_positive_int(n_check_samples, "n_check_samples", 0)
    if not (isinstance(target_kl, numbers.Real) and target_kl >= 0.0):
        raise ValueError(f"target_kl must be a non-negative number, got {target_kl!r}.")
    for name, value in (("min_ess", min_ess), ("target_ess", target_ess)):
        if not (isinstance(value, numbers.Real) and 0.0 < value <= 1.0):
            raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
    if not (isinstance(min_beta, numbers.Real) and 0.0 < min_beta <= 1.0):
        raise ValueError(f"min_beta must be in (0, 1], got {min_beta!r}.")
    if cross_options is not None and not isinstance(cross_options, dict):
        raise TypeError(f"cross_options must be a dict, got {type(cross_options).__name__}.")
    cross_options = dict(cross_options or {})
    reserved = {"n_basis", "tt_rank", "max_evals", "random_state", "n_features", "domain"}
    if reserved & cross_options.keys():
        raise ValueError(
            f"cross_options may not set {sorted(reserved & cross_options.keys())}: they are "
            "arguments of fit_tempered_base."
        )
    target = _CountingTarget(log_target, n_features)
    generator = torch_generator(random_state)
    report = TemperedReport(n_check_samples=n_check_samples)

    # 1. The first exponent, on draws of the outer Gaussian g = q_0.
    base = TemperedTTBase([], shift, matrix, defensive_weight=defensive_weight, outer=outer)
    x, log_q = base.forward(n_schedule_samples, generator=generator)
    log_h, log_g = target(x), base.reference_log_prob(x)
    beta = _largest_beta(functools.partial(_bridge_ess, log_h, log_g, log_q), min_beta, min_ess)
    report.first_beta_ess = _bridge_ess(log_h, log_g, log_q, beta)
    log_h_before, log_g_before, log_q_before = log_h, log_g, log_q
    n_retries = 0
    layers: list[list[torch.Tensor]] = []
    betas: list[float] = []
    report.stop_reason = f"max_layers={max_layers} reached"
    while len(layers) < max_layers:
        layer_started = time.perf_counter()
        evaluations_before = target.n_evaluations
        pulled_back = _pulled_back_bridge(base, target, beta)
        with warnings.catch_warnings():
            # The layer's own cross self-check is recorded, not warned about:
            # the schedule below judges the composition.
            warnings.simplefilter("ignore", ConvergenceWarning)
            tt = fit_log_density(
                pulled_back,
                [[-1.0, 1.0]] * n_features,
                tt_rank=tt_ranks[min(len(layers), len(tt_ranks) - 1)],
                n_basis=n_bases[min(len(layers), len(n_bases) - 1)],
                max_evals=max_evals_per_layer,
                random_state=generator,
                **cross_options,
            )
        candidate_layers = [*layers, [core.detach().double() for core in tt.cores]]
        candidate = TemperedTTBase(
            candidate_layers,
            shift,
            matrix,
            defensive_weight=defensive_weight,
            outer=outer,
            betas=[*betas, beta],
        )
        x, log_q = candidate.forward(n_schedule_samples, generator=generator)
        log_h, log_g = target(x), candidate.reference_log_prob(x)
        diagnostics = importance_diagnostics(beta * log_h + (1.0 - beta) * log_g, log_q)
        # The base before this layer, scored against the same bridge on its own
        # draws (no new evaluations): a layer must not lower the ELBO, and a
        # refinement (the same beta as the layer before) must raise it beyond
        # the noise of the two estimates.
        previous = importance_diagnostics(
            beta * log_h_before + (1.0 - beta) * log_g_before, log_q_before
        )
        noise_level = max(
            1e-3, 2.0 * math.hypot(diagnostics.elbo_std_error, previous.elbo_std_error)
        )
        refinement = bool(betas) and betas[-1] == beta
        if diagnostics.elbo < previous.elbo - noise_level or (
            refinement and diagnostics.elbo <= previous.elbo + noise_level
        ):
            last_beta = betas[-1] if betas else 0.0
            if not refinement and n_retries < max_retries:
                # A step too long for one layer: retry halfway (a shorter step
                # is a closer ratio to fit).
                n_retries += 1
                beta = (last_beta + beta) / 2.0
                report.n_rejected_layers += 1
                continue
            report.stop_reason = (
                f"layer {len(layers) + 1} (beta = {beta:.4g}) did not raise the ELBO against "
                f"its bridge beyond the noise ({diagnostics.elbo:.4g} after, "
                f"{previous.elbo:.4g} before): dropped"
            )
            break
        n_retries = 0
        log_h_before, log_g_before, log_q_before = log_h, log_g, log_q
        layers, base = candidate_layers, candidate
        betas.append(beta)
        cross_report = tt.cross_report
        report.layers.append(
            TemperedLayerReport(
                beta=beta,
                tt_ranks=tt.tt_ranks,
                n_basis=tt.n_basis,
                n_evaluations=target.n_evaluations - evaluations_before,
                cross_ess=float(cross_report.ess),
                ess=diagnostics.ess,
                elbo=diagnostics.elbo,
                seconds=time.perf_counter() - layer_started,
            )
        )
        if verbose:
            print(
                f"[tempered] layer {len(layers)}: beta={beta:.4g} ranks max "
                f"{max(tt.tt_ranks)} n_basis {tt.n_basis} ess {diagnostics.ess:.3f} "
                f"(cross {cross_report.ess:.3f}) evaluations "
                f"{report.layers[-1].n_evaluations} ({report.layers[-1].seconds:.1f} s)"
            )
        if beta == 1.0:
            kl = diagnostics.log_normalizer - diagnostics.elbo
            if diagnostics.ess >= target_ess and kl <= target_kl:
                report.stop_reason = (
                    f"ESS {diagnostics.ess:.3f} >= target_ess and KL estimate {kl:.3g} <= "
                    "target_kl at beta = 1"
                )
                break
            continue
        beta = _largest_beta(functools.partial(_bridge_ess, log_h, log_g, log_q), beta, min_ess)
    report.reached_target = bool(betas) and betas[-1] == 1.0
    if not report.reached_target:
        warnings.warn(
            f"fit_tempered_base stopped at beta = {betas[-1] if betas else 0.0:.4g} < 1 "
            f"after {len(layers)} layers ({report.stop_reason}): the base approximates "
            "h^beta g^(1 - beta), not h. Raise max_layers, tt_rank or n_basis, or widen "
            "the outer map.",
            ConvergenceWarning,
            stacklevel=2,
        )
    base.report = report
    if n_check_samples >= 2:
        x, log_q = base.forward(n_check_samples, generator=generator)
        check = importance_diagnostics(target(x), log_q)
        report.ess, report.elbo = check.ess, check.elbo
        report.elbo_std_error = check.elbo_std_error
        report.log_normalizer = check.log_normalizer
        report.log_normalizer_std_error = check.log_normalizer_std_error
        report.kl = check.log_normalizer - check.elbo
    report.n_evaluations = target.n_evaluations
    report.seconds = time.perf_counter() - started
    return base


def _pulled_back_bridge(base: TemperedTTBase, target: _CountingTarget, beta: float) -> Callable:
    """``u -> log h_beta(T(u)) - log q(T(u)) - d log 2`` for the base's transport ``T``,
    with the bridge ``log h_beta = beta log h + (1 - beta) log g``."""
    log_reference = -base.n_features * math.log(2.0)

    def log_bridge(u: torch.Tensor) -> torch.Tensor:
        # Through the outer map alone the bridge is differentiable, and cross
        # seeds its index sets by gradient ascent (where the modes are); the
        # Rosenblatt maps of later layers are not (cross then keeps random
        # seeds, see sktt_flow.tt.cross.find_seeds).
        with torch.set_grad_enabled(torch.is_grad_enabled() and base.n_layers == 0):
            values = []
            for block in u.double().split(CHUNK_SIZE):
                x, log_q = base.from_latent(block)
                log_bridge_values = beta * target(x)
                if beta < 1.0:
                    log_bridge_values += (1.0 - beta) * base.reference_log_prob(x)
                values.append(log_bridge_values - log_q + log_reference)
        return torch.cat(values) if values else u.new_zeros(0, dtype=torch.float64)

    return log_bridge

"""Classic variational-inference benchmarks: Rosenbrock, funnel, banana, many-well."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from sktt_flow.targets._base import Target
from sktt_flow.targets._quadrature import ChainQuadrature, PanelInverseCDF, logsumexp
from sktt_flow.utils.validation import check_positive_float, check_positive_int

__all__ = ["Banana", "DoubleRosenbrock", "ManyWell", "NealsFunnel"]

_LOG_2PI = math.log(2.0 * math.pi)


# -- double Rosenbrock ---------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _rosenbrock_chain(n_chain: int, n_nodes: int, half_width: float) -> ChainQuadrature:
    """Chain of ``x_1 .. x_{d-2}`` once ``x_{d-1}`` and ``x_d`` are integrated out."""
    last = n_chain - 1

    def log_unary(k, x):
        value = -0.5 * x * x
        if k == last:  # int exp(-y^2/2 - (y + c)^2/2) dy = sqrt(pi) exp(-c^2/4)
            value = value - 0.25 * (5.0 * (x * x + 1.0)) ** 2
        return value

    def log_pair(k, x, y):
        return -0.5 * (y + 5.0 * (x * x + 1.0)) ** 2

    bounds = np.tile([-half_width, half_width], (n_chain, 1))
    return ChainQuadrature(log_unary, log_pair, bounds, n_nodes=n_nodes, n_panels=128)


class DoubleRosenbrock(Target):
    """The double Rosenbrock density of the tensorizing-flows paper.

    With the Rosenbrock energy of Cui and Dolgov (2022),

    .. math::

        E_\\pm(x) = \\sum_{k=1}^{d-1} \\Big[x_k^2
            + \\big(s_{k+1} x_{k+1} + 5 (x_k^2 + 1)\\big)^2\\Big],
        \\qquad s_{k+1} = 1 \\text{ except } s_d = \\pm 1,

    the target is the equal mixture of the Rosenbrock density and its mirror
    image in the last coordinate,

    .. math::

        \\tilde p(x) = \\tfrac12 e^{-E_+(x)/2} + \\tfrac12 e^{-E_-(x)/2}.

    Each ``x_{k+1}`` is pulled towards the parabola ``-5 (x_k^2 + 1)``, and
    the pull of the next term confines ``x_k`` near 0: ``x_1 .. x_{d-2}`` are
    about ``-0.1 +- 0.14``, ``x_{d-1}`` about ``-2.7 +- 0.7``, and ``|x_d|``
    about ``5 (x_{d-1}^2 + 1)``, i.e. tens to over a hundred: two thin curved
    modes mirrored in ``x_d``, with mass 1/2 each.
    :meth:`mode_of` is 1 where ``x_d > 0`` (the ``E_-`` mode), else 0.

    **Source.** The authors' code (``double_rosen_logpdf`` in
    ``code/training/utils/target.py`` and ``code/sampling/rosenbrock/double``
    of github.com/honglizhaobob/TensorizingFlow, ``d = 11``) writes exactly
    this density in rescaled variables ``theta`` on ``[-1, 1]^d`` with
    ``x_k = 2 theta_k`` (``k <= d - 2``), ``x_{d-1} = 7 theta_{d-1}``,
    ``x_d = 200 theta_d``, i.e. on the box ``[-2, 2]^{d-2} x [-7, 7] x
    [-200, 200]``, which is :attr:`domain` here. This class works in ``x``;
    the density is defined on all of ``R^d`` (the mass outside the box is
    about ``1e-6``, from the tail of ``x_d``).

    **Ground truth.** ``E_-`` is ``E_+`` with ``x_d`` mirrored, so both halves
    have the same integral and ``Z = Z_+``. In ``Z_+``, ``x_d`` and then
    ``x_{d-1}`` integrate in closed form (``sqrt(2 pi)``, then
    ``sqrt(pi) exp(-25 (x_{d-2}^2 + 1)^2 / 4)``); the remaining chain
    ``x_1 .. x_{d-2}`` is integrated by the transfer-matrix quadrature of
    the chain quadrature of ``sktt_flow/targets/_quadrature.py`` on ``[-3, 3]``
    (doubling the nodes changes ``log Z`` by less than ``1e-10``; d = 3, 4
    agree with scipy's adaptive quadrature). Exact samples: the chain by
    backward sampling, then ``x_{d-1} | x_{d-2} ~ N(-5 (x_{d-2}^2 + 1) / 2, 1/2)``,
    ``x_d | x_{d-1} ~ N(-5 (x_{d-1}^2 + 1), 1)`` and a fair coin for the
    sign of ``x_d``.

    Parameters
    ----------
    n_features : int, default=11
        Dimension, at least 3.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    .. [2] Cui and Dolgov, "Deep composition of tensor-trains using squared
       inverse Rosenblatt transports", Found. Comput. Math. 22, 2022.
    """

    #: Two modes, one per sign of the last coordinate (see :meth:`mode_of`).
    n_modes = 2
    _CHAIN_HALF_WIDTH = 3.0
    _CHAIN_NODES = 256

    def __init__(self, n_features: int = 11):
        self.n_features = check_positive_int(n_features, "n_features", minimum=3)
        low = np.full(self.n_features, -2.0)
        low[-2:] = (-7.0, -200.0)
        self._set_domain(low, -low)

    def _energy_terms(self, x):
        """The shared part of ``E_+`` and ``E_-``, and ``x_d + 5 (x_{d-1}^2 + 1)`` pieces."""
        head, nxt = x[:, :-1], x[:, 1:]
        bend = 5.0 * (head.square() + 1.0)
        shared = head.square().sum(1) + (nxt[:, :-1] + bend[:, :-1]).square().sum(1)
        return shared, bend[:, -1], x[:, -1]

    def _log_prob(self, x):
        shared, bend, last = self._energy_terms(x)
        plus = -0.5 * (shared + (last + bend).square())
        minus = -0.5 * (shared + (bend - last).square())
        return torch.logaddexp(plus, minus) - math.log(2.0)

    def _chain(self, n_nodes=None, half_width=None) -> ChainQuadrature:
        return _rosenbrock_chain(
            self.n_features - 2,
            int(n_nodes or self._CHAIN_NODES),
            float(half_width or self._CHAIN_HALF_WIDTH),
        )

    def transfer_matrix_log_normalizer(self, n_nodes=None, half_width=None) -> float:
        """``log Z`` with a chosen quadrature grid for the chain ``x_1 .. x_{d-2}``."""
        chain = self._chain(n_nodes, half_width)
        return chain.log_normalizer + 0.5 * _LOG_2PI + 0.5 * math.log(math.pi)

    @property
    def log_normalizer(self) -> float:
        """``log Z`` by closed-form integrals and a transfer-matrix quadrature."""
        return self.transfer_matrix_log_normalizer()

    def _sample(self, n, generator):
        d = self.n_features
        uniforms = torch.rand(n, d - 2, 2, generator=generator, dtype=torch.float64)
        chain = torch.from_numpy(self._chain().sample(uniforms.numpy()))
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2.0 - 1.0
        x_prev = -2.5 * (chain[:, -1].square() + 1.0) + math.sqrt(0.5) * noise[:, 0]
        x_last = -5.0 * (x_prev.square() + 1.0) + noise[:, 1]
        return torch.cat([chain, x_prev[:, None], (signs * x_last)[:, None]], dim=1)

    def mode_of(self, x):
        """1 where ``x_d > 0``, else 0."""
        x = self._check_input(x)
        return (x[:, -1] > 0).to(torch.int64)


# -- Neal's funnel -------------------------------------------------------------------
class NealsFunnel(Target):
    """Neal's funnel: ``v ~ N(0, scale^2)``, ``x_i | v ~ N(0, exp(v))``, i < d.

    The first feature is ``v``, the other ``d - 1`` are the ``x_i``.
    ``log_prob`` is normalised (``log_normalizer = 0``) and samples are exact.
    The marginals of the ``x_i`` are heavy-tailed, so no moderate box holds
    essentially all the mass: :attr:`domain` is ``[-3 s, 3 s]`` for ``v``
    (0.27% outside) and ``[-5 e^s, 5 e^s]`` for each ``x_i`` (0.11% outside
    per coordinate for ``s = 3``).

    Parameters
    ----------
    n_features : int, default=10
        Dimension ``d`` (at least 2).
    scale : float, default=3.0
        Standard deviation ``s`` of ``v``.

    References
    ----------
    .. [1] Neal, "Slice sampling", Ann. Statist. 31(3), 2003.
    """

    def __init__(self, n_features: int = 10, scale: float = 3.0):
        self.n_features = check_positive_int(n_features, "n_features", minimum=2)
        self.scale = check_positive_float(scale, "scale")
        bound = 5.0 * math.exp(self.scale)
        low = np.full(self.n_features, -bound)
        low[0] = -3.0 * self.scale
        self._set_domain(low, -low)

    def _repr_params(self) -> dict:
        return {"n_features": self.n_features, "scale": self.scale}

    def _log_prob(self, x):
        v, rest = x[:, 0], x[:, 1:]
        k = rest.shape[1]
        log_v = -0.5 * (v / self.scale).square() - math.log(self.scale) - 0.5 * _LOG_2PI
        log_rest = -0.5 * rest.square().sum(1) * torch.exp(-v) - 0.5 * k * (v + _LOG_2PI)
        return log_v + log_rest

    @property
    def log_normalizer(self) -> float:
        """0: the density is normalised."""
        return 0.0

    def _sample(self, n, generator):
        z = torch.randn(n, self.n_features, generator=generator, dtype=torch.float64)
        v = self.scale * z[:, :1]
        return torch.cat([v, torch.exp(0.5 * v) * z[:, 1:]], dim=1)


# -- banana ----------------------------------------------------------------------------
class Banana(Target):
    """Haario's twisted Gaussian ("banana").

    With ``f = N(0, diag(scale^2, 1, ..., 1))`` and
    ``phi(x) = (x_1, x_2 + b (x_1^2 - scale^2), x_3, ..., x_d)``, the density is
    ``f(phi(x))``. ``phi`` has unit Jacobian, so ``log_prob`` is normalised
    (``log_normalizer = 0``), and ``x = phi^{-1}(y)``, ``y ~ f``, gives exact
    samples. ``b = 0.03`` is Haario et al.'s "moderately twisted" and
    ``b = 0.1`` their "strongly twisted" case. :attr:`domain` holds five
    standard deviations of ``y`` in every coordinate (about ``6e-7`` of the
    mass outside per coordinate).

    Parameters
    ----------
    n_features : int, default=2
        Dimension (at least 2).
    curvature : float, default=0.03
        The twist ``b`` (non-negative).
    scale : float, default=10.0
        Standard deviation of ``x_1``.

    References
    ----------
    .. [1] Haario, Saksman and Tamminen, "Adaptive proposal distribution for
       random walk Metropolis algorithm", Comput. Statist. 14, 1999.
    .. [2] Haario, Saksman and Tamminen, "An adaptive Metropolis algorithm",
       Bernoulli 7(2), 2001.
    """

    def __init__(self, n_features: int = 2, curvature: float = 0.03, scale: float = 10.0):
        self.n_features = check_positive_int(n_features, "n_features", minimum=2)
        curvature = float(curvature)
        if not (np.isfinite(curvature) and curvature >= 0):
            raise ValueError(f"curvature must be non-negative, got {curvature!r}.")
        self.curvature = curvature
        self.scale = check_positive_float(scale, "scale")
        low = np.full(self.n_features, -5.0)
        high = np.full(self.n_features, 5.0)
        low[0], high[0] = -5.0 * self.scale, 5.0 * self.scale
        low[1] = -5.0 - 24.0 * self.curvature * self.scale**2
        high[1] = 5.0 + self.curvature * self.scale**2
        self._set_domain(low, high)

    def _repr_params(self) -> dict:
        return {"n_features": self.n_features, "curvature": self.curvature, "scale": self.scale}

    def _log_prob(self, x):
        first = x[:, 0]
        second = x[:, 1] + self.curvature * (first.square() - self.scale**2)
        quadratic = (first / self.scale).square() + second.square() + x[:, 2:].square().sum(1)
        return -0.5 * quadratic - math.log(self.scale) - 0.5 * self.n_features * _LOG_2PI

    @property
    def log_normalizer(self) -> float:
        """0: the density is normalised."""
        return 0.0

    def _sample(self, n, generator):
        y = torch.randn(n, self.n_features, generator=generator, dtype=torch.float64)
        y[:, 0] *= self.scale
        y[:, 1] -= self.curvature * (y[:, 0].square() - self.scale**2)
        return y


# -- many-well -------------------------------------------------------------------------
def _double_well_log_density(x):
    return -(x**4) + 6.0 * x**2 + 0.5 * x


@functools.lru_cache(maxsize=1)
def _double_well_grid() -> tuple[PanelInverseCDF, float]:
    """Panel grid on [-5, 5] for the 1-D quartic and its log-normaliser."""
    grid = PanelInverseCDF(-5.0, 5.0, n_panels=128, order=16)
    log_z = float(logsumexp(_double_well_log_density(grid.points) + grid.log_weights))
    return grid, log_z


class ManyWell(Target):
    """FAB's many-well density: independent two-dimensional double wells.

    For ``d = 2 m`` features, pairs ``(x_{2i}, x_{2i+1})`` (0-based columns)
    are independent with

    .. math::

        \\log \\tilde p(x_1, x_2) = -x_1^4 + 6 x_1^2 + \\tfrac12 x_1 - \\tfrac12 x_2^2,

    unnormalised as in FAB. ``x_1`` has a deep well near ``1.7`` and a
    shallower one near ``-1.7`` (mass 0.844 and 0.156); there are ``2^m``
    modes, labelled by :meth:`mode_of` as ``sum_i [x_{2i} > 0] 2^i``.

    **Ground truth.** ``log Z = m (log Z_1 + log(2 pi) / 2)`` with
    ``Z_1 = int exp(-x^4 + 6 x^2 + x / 2) dx = 11784.50927...`` by composite
    Gauss–Legendre quadrature (128 panels of 16 nodes on ``[-5, 5]``, where
    the integrand has fallen by ``e^-470``; error at rounding level, checked
    against scipy). Samples are exact: ``x_1`` by inverse CDF (a panel drawn
    from the quadrature table, the interpolant's CDF inverted, then Newton
    steps on the exact CDF of the quartic density), ``x_2`` Gaussian.
    :attr:`domain` is ``[-3, 3]`` for the ``x_1`` and ``[-6, 6]`` for the ``x_2``.

    Parameters
    ----------
    n_features : int, default=32
        Even dimension ``d = 2 m``.

    References
    ----------
    .. [1] Midgley, Stimper, Simm, Schölkopf and Hernández-Lobato, "Flow
       annealed importance sampling bootstrap", ICLR 2023 (many-well target;
       code github.com/lollcat/fab-torch, ``ManyWellEnergy``).
    .. [2] Noé, Olsson, Köhler and Wu, "Boltzmann generators", Science 365, 2019
       (the double-well energy).
    """

    def __init__(self, n_features: int = 32):
        n_features = check_positive_int(n_features, "n_features", minimum=2)
        if n_features % 2:
            raise ValueError(f"n_features must be even, got {n_features}.")
        self.n_features = n_features
        self.n_wells = n_features // 2
        self.n_modes = 2**self.n_wells
        low = np.tile([-3.0, -6.0], self.n_wells)
        self._set_domain(low, -low)

    def _log_prob(self, x):
        first, second = x[:, 0::2], x[:, 1::2]
        quartic = -first.pow(4) + 6.0 * first.square() + 0.5 * first
        return (quartic - 0.5 * second.square()).sum(1)

    @property
    def log_normalizer(self) -> float:
        """``m (log Z_1 + log(2 pi) / 2)``."""
        return self.n_wells * (_double_well_grid()[1] + 0.5 * _LOG_2PI)

    def _sample(self, n, generator):
        grid, _ = _double_well_grid()
        m = self.n_wells
        uniforms = torch.rand(2, n * m, generator=generator, dtype=torch.float64).numpy()
        wells = grid.sample(
            _double_well_log_density(grid.points),
            uniforms[0],
            uniforms[1],
            exact_log_density=_double_well_log_density,
        )
        out = torch.randn(n, self.n_features, generator=generator, dtype=torch.float64)
        out[:, 0::2] = torch.from_numpy(wells.reshape(n, m))
        return out

    def mode_of(self, x):
        """``sum_i [x_{2i} > 0] 2^i``: the sign pattern of the double-well coordinates."""
        x = self._check_input(x)
        if self.n_wells > 62:
            raise ValueError("mode labels need n_features <= 124 to fit in int64.")
        powers = 2 ** torch.arange(self.n_wells, device=x.device, dtype=torch.int64)
        return ((x[:, 0::2] > 0).to(torch.int64) * powers).sum(1)

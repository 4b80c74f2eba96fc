"""Quadrature for Markov-chain densities: normalisers and exact sampling.

Two targets of this subpackage are chains: the one-dimensional
Ginzburg–Landau model and the double Rosenbrock density factor as

.. math::

    \\tilde p(x_1, \\dots, x_d) = \\exp\\Big(\\sum_{k=1}^{d} f_k(x_k)
    + \\sum_{k=1}^{d-1} g_k(x_k, x_{k+1})\\Big),

so their normaliser is a product of transfer operators. On Gauss–Legendre
nodes :math:`t_i` with weights :math:`w_i` (``n`` per variable) the forward
messages

.. math::

    \\alpha_1(x) = e^{f_1(x)}, \\qquad
    \\alpha_{k+1}(y) = e^{f_{k+1}(y)} \\sum_i w_i\\, \\alpha_k(t_i)\\, e^{g_k(t_i, y)},
    \\qquad Z \\approx \\sum_i w_i\\, \\alpha_d(t_i)

are accumulated in log space (each step one matrix product of factors shifted
by their maxima), so nothing under- or overflows however long the chain.
Gauss–Legendre quadrature converges geometrically for these analytic
integrands; :class:`ChainQuadrature` is used with node counts checked for
convergence in the tests (doubling ``n`` changes ``log Z`` by less than
``1e-10``).

The same messages give exact samples by backward sampling: draw :math:`x_d`
from :math:`\\alpha_d`, then :math:`x_k` from
:math:`p(x_k \\mid x_{k+1}) \\propto \\alpha_k(x_k) e^{g_k(x_k, x_{k+1})}`.
The recursion above defines :math:`\\alpha_k` at *every* point, not only at the
nodes (Nyström interpolation), so each conditional is known pointwise to the
accuracy of the quadrature. It is inverted on a fixed partition of the
interval into short panels (:class:`PanelInverseCDF`): a panel is drawn with
probability equal to its Gauss–Legendre mass, and inside it the density is
replaced by its interpolating polynomial on the panel's nodes, whose CDF is an
exact Legendre series solved by safeguarded Newton steps. With panels much
shorter than the scale on which the conditional varies, the interpolant agrees
with the density to about machine precision; this is an inverse-CDF sampler,
not a grid draw plus jitter.

This module is numpy-only and deliberately shares no code with
:mod:`sktt_flow.tt` (its Gauss rules, Legendre recurrences and CDF inversion
included): it computes the ground truth that the tensor-train code is checked
against, and a shared bug would cancel out of such a check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ChainQuadrature",
    "PanelInverseCDF",
    "gauss_legendre",
    "log_matvec",
    "logsumexp",
]


def gauss_legendre(n: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights for ``n`` points on ``[low, high]``."""
    nodes, weights = np.polynomial.legendre.leggauss(int(n))
    half = 0.5 * (high - low)
    return 0.5 * (high + low) + half * nodes, half * weights


_UNDERFLOW = -700.0  # exp() is floored here, so that it is never subnormal


def _safe_exp(shifted: np.ndarray) -> np.ndarray:
    """``exp`` of non-positive log-values, floored at ``exp(-700)``.

    Subnormal floats make arithmetic on some CPUs a hundred times slower; a
    floor of ``exp(-700)`` relative to the largest term of a sum of a few
    thousand terms changes nothing at double precision.
    """
    out = np.maximum(shifted, _UNDERFLOW)
    return np.exp(out, out=out)


def logsumexp(a: np.ndarray, axis=None) -> np.ndarray:
    """``log(sum(exp(a)))`` along ``axis``, without subnormal intermediates."""
    a = np.asarray(a, dtype=np.float64)
    shift = np.max(a, axis=axis, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    out = np.log(np.sum(_safe_exp(a - shift), axis=axis, keepdims=True)) + shift
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def log_matvec(log_v: np.ndarray, log_k: np.ndarray) -> np.ndarray:
    """``log sum_i exp(log_v[i] + log_k[i, j])`` for every ``j``, stably.

    Both factors are shifted by their maxima (per column for ``log_k``) and
    multiplied with BLAS.
    """
    v_shift = np.max(log_v)
    k_shift = np.max(log_k, axis=0)
    product = _safe_exp(log_v - v_shift) @ _safe_exp(log_k - k_shift)
    return v_shift + k_shift + np.log(product)


def _legendre_values(s: np.ndarray, n: int) -> np.ndarray:
    """``P_0, ..., P_{n-1}`` at ``s`` (any shape), stacked on a new last axis."""
    values = [np.ones_like(s), s]
    for i in range(1, n - 1):
        values.append(((2 * i + 1) * s * values[i] - i * values[i - 1]) / (i + 1))
    return np.stack(values[:n], axis=-1)


class PanelInverseCDF:
    """Inverse-CDF sampling of 1-D densities given pointwise on a panel grid.

    The interval ``[low, high]`` is cut into ``n_panels`` equal panels, each
    carrying ``order`` Gauss–Legendre nodes (:attr:`points`, shape
    ``(n_panels, order)``). :meth:`sample` takes, per sample, the log-density
    at these points (one row per sample, or one shared row) and returns one draw
    for each row.

    Parameters
    ----------
    low, high : float
        The interval; the density is taken to vanish outside it.
    n_panels : int
        Number of panels.
    order : int
        Gauss–Legendre nodes per panel; the interpolant has degree ``order - 1``.
    """

    def __init__(self, low: float, high: float, n_panels: int = 64, order: int = 12):
        if not high > low:
            raise ValueError(f"need low < high, got ({low}, {high}).")
        self.low, self.high = float(low), float(high)
        self.n_panels, self.order = int(n_panels), int(order)
        self.edges = np.linspace(self.low, self.high, self.n_panels + 1)
        self.half_width = 0.5 * (self.edges[1:] - self.edges[:-1])
        ref_nodes, ref_weights = np.polynomial.legendre.leggauss(self.order)
        midpoints = 0.5 * (self.edges[1:] + self.edges[:-1])
        self.points = midpoints[:, None] + self.half_width[:, None] * ref_nodes[None, :]
        self._weights = self.half_width[:, None] * ref_weights[None, :]
        self.log_weights = np.log(self._weights)
        # Nodal values on [-1, 1] -> Legendre coefficients (exact for degree < order).
        basis = _legendre_values(ref_nodes, self.order)  # (order, order): [node, l]
        scale = (2.0 * np.arange(self.order) + 1.0) / 2.0
        self._to_coefficients = (ref_weights[:, None] * basis) * scale[None, :]

    def _solve(self, coef, target, s, *, tol, max_iter):
        """Solve ``F(s) = target`` on ``[-1, 1]`` for Legendre series CDFs.

        ``F`` is the antiderivative (from -1) of ``sum_l coef[:, l] P_l``. Newton
        steps, replaced by bisection whenever they leave the bracket; only the
        draws not yet converged are updated.
        """
        m = self.order
        denominators = 2.0 * np.arange(1, m) + 1.0
        lo = np.full_like(s, -1.0)
        hi = np.full_like(s, 1.0)
        active = np.arange(s.shape[0])
        for _ in range(max_iter):
            c, x = coef[active], s[active]
            p = _legendre_values(x, m + 1)
            cdf = c[:, 0] * (x + 1.0) + np.sum(c[:, 1:] * (p[:, 2:] - p[:, :-2]) / denominators, 1)
            density = np.sum(c * p[:, :m], axis=1)
            residual = cdf - target[active]
            converged = np.abs(residual) <= tol * 2.0 * c[:, 0]
            below = residual < 0
            lo[active] = a = np.where(below, x, lo[active])
            hi[active] = b = np.where(below, hi[active], x)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = residual / density
            newton = x - step
            bad = ~np.isfinite(newton) | (newton <= a) | (newton >= b) | (density <= 0)
            s[active] = np.where(converged, x, np.where(bad, 0.5 * (a + b), newton))
            done = converged | (b - a <= 1e-15) | (~bad & (np.abs(step) <= 1e-15))
            active = active[~done]
            if active.size == 0:
                break
        return s

    def log_mass(self, log_density: np.ndarray) -> np.ndarray:
        """Log of the quadrature integral of ``exp(log_density)`` per row."""
        return logsumexp(log_density + self.log_weights, axis=(-2, -1))

    def sample(
        self,
        log_density: np.ndarray,
        u_panel: np.ndarray,
        u_inner: np.ndarray,
        *,
        tol: float = 1e-14,
        max_iter: int = 60,
        exact_log_density: Callable[[np.ndarray], np.ndarray] | None = None,
        newton_steps: int = 2,
    ) -> np.ndarray:
        """One draw per row of ``log_density`` from two uniforms per draw.

        Parameters
        ----------
        log_density : array (N, n_panels, order) or (n_panels, order)
            Log of the (unnormalised) density at :attr:`points`, per draw; a
            2-D array is one density shared by all ``N`` draws.
        u_panel, u_inner : arrays (N,)
            Uniform variates on ``[0, 1)``: the first picks the panel, the
            second the point inside it.
        exact_log_density : callable, optional
            For a density shared by all draws and known in closed form: the
            draws are then refined by ``newton_steps`` Newton steps on the
            exact CDF within the panel (Gauss–Legendre quadrature of the exact
            density from the panel's left end), removing the interpolation
            error altogether.
        newton_steps : int
            Number of those steps.
        """
        u_panel = np.asarray(u_panel, dtype=np.float64)
        u_inner = np.asarray(u_inner, dtype=np.float64)
        log_density = np.asarray(log_density, dtype=np.float64)
        if log_density.ndim == 2:
            # One density for every draw: one CDF table, looked up per draw.
            values = _safe_exp(log_density - np.max(log_density))
            cumulative = np.cumsum(np.sum(values * self._weights, axis=1))
            panel = np.searchsorted(cumulative, u_panel * cumulative[-1], side="right")
            panel = np.minimum(panel, self.n_panels - 1)
            table = (values / np.max(values, axis=1, keepdims=True)) @ self._to_coefficients
            coef = table[panel]
        else:
            # 1. The panel, with probability proportional to its quadrature mass.
            values = _safe_exp(log_density - np.max(log_density, axis=(1, 2), keepdims=True))
            panel_mass = np.einsum("npm,pm->np", values, self._weights)
            cumulative = np.cumsum(panel_mass, axis=1)
            threshold = u_panel * cumulative[:, -1]
            panel = np.minimum((cumulative <= threshold[:, None]).sum(axis=1), self.n_panels - 1)
            # 2. Inside the panel: Legendre series of the interpolant, whose CDF
            #    follows from int_{-1}^{s} P_l = (P_{l+1}(s) - P_{l-1}(s)) / (2l + 1).
            local = values[np.arange(u_panel.shape[0]), panel]  # (N, order)
            coef = (local / np.max(local, axis=1, keepdims=True)) @ self._to_coefficients
        total = 2.0 * coef[:, 0]
        target = u_inner * total
        s = self._solve(coef, target, 2.0 * u_inner - 1.0, tol=tol, max_iter=max_iter)
        s = np.clip(s, -1.0, 1.0)
        midpoint = 0.5 * (self.edges[panel] + self.edges[panel + 1])
        x = midpoint + self.half_width[panel] * s
        if exact_log_density is not None:
            x = self._refine(x, panel, u_inner, exact_log_density, newton_steps)
        return x

    def _refine(self, x, panel, u_inner, log_density, steps):
        """Newton steps on the exact within-panel CDF (see :meth:`sample`)."""
        ref_nodes, ref_weights = np.polynomial.legendre.leggauss(self.order)
        left, right = self.edges[panel], self.edges[panel + 1]
        log_panel = log_density(self.points[panel])  # (N, order)
        shift = np.max(log_panel, axis=1)
        mass = np.sum(self._weights[panel] * _safe_exp(log_panel - shift[:, None]), axis=1)
        target = u_inner * mass
        for _ in range(steps):
            half = 0.5 * (x - left)
            nodes = (left + half)[:, None] + half[:, None] * ref_nodes[None, :]
            values = _safe_exp(log_density(nodes) - shift[:, None])
            partial = half * (values @ ref_weights)
            density = _safe_exp(log_density(x) - shift)
            x = np.clip(x - (partial - target) / density, left, right)
        return x


class ChainQuadrature:
    """Transfer-operator quadrature for a chain density, with exact sampling.

    Parameters
    ----------
    log_unary : callable ``(k, x) -> array``
        ``f_k`` evaluated elementwise on an array ``x`` (``k`` is 0-based).
    log_pair : callable ``(k, x, y) -> array``
        ``g_k(x_k, x_{k+1})`` evaluated with numpy broadcasting.
    bounds : array (d, 2)
        Integration interval of every variable; the mass outside is assumed
        negligible (the callers check it).
    n_nodes : int
        Gauss–Legendre nodes per variable for the transfer operators.
    n_panels, panel_order : int
        Panel grid of the samplers (see :class:`PanelInverseCDF`).
    """

    def __init__(
        self,
        log_unary: Callable[[int, np.ndarray], np.ndarray],
        log_pair: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
        bounds: Sequence[Sequence[float]],
        *,
        n_nodes: int = 256,
        n_panels: int = 64,
        panel_order: int = 12,
    ):
        self.log_unary = log_unary
        self.log_pair = log_pair
        self.bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 2)
        self.n_variables = self.bounds.shape[0]
        self.n_nodes = int(n_nodes)
        self.n_panels = int(n_panels)
        self.panel_order = int(panel_order)
        self.nodes, self.log_weights = [], []
        for low, high in self.bounds:
            nodes, weights = gauss_legendre(self.n_nodes, low, high)
            self.nodes.append(nodes)
            self.log_weights.append(np.log(weights))
        self._log_alpha = None
        self._log_normalizer = None
        self._panels = None

    # -- forward messages ---------------------------------------------------
    def _forward(self) -> None:
        log_alpha = [self.log_unary(0, self.nodes[0])]
        for k in range(self.n_variables - 1):
            log_alpha.append(self._message(k + 1, self.nodes[k + 1], log_alpha[k]))
        self._log_alpha = log_alpha
        self._log_normalizer = float(logsumexp(self.log_weights[-1] + log_alpha[-1]))

    def _message(self, k: int, points: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """``log alpha_k`` at arbitrary ``points`` (1-D) from ``log alpha_{k-1}`` at nodes."""
        pair = self.log_pair(k - 1, self.nodes[k - 1][:, None], points[None, :])
        return self.log_unary(k, points) + log_matvec(self.log_weights[k - 1] + previous, pair)

    @property
    def log_normalizer(self) -> float:
        """``log`` of the integral of the chain density over the box."""
        if self._log_normalizer is None:
            self._forward()
        return self._log_normalizer

    # -- sampling -----------------------------------------------------------
    def _panel_tables(self):
        """Panel grids and ``log alpha_k`` on their points, computed once."""
        if self._panels is None:
            if self._log_alpha is None:
                self._forward()
            panels, tables = [], []
            for k, (low, high) in enumerate(self.bounds):
                grid = PanelInverseCDF(low, high, self.n_panels, self.panel_order)
                flat = grid.points.ravel()
                if k == 0:
                    table = self.log_unary(0, flat)
                else:
                    table = self._message(k, flat, self._log_alpha[k - 1])
                panels.append(grid)
                tables.append(table.reshape(grid.points.shape))
            self._panels = (panels, tables)
        return self._panels

    def sample(self, uniforms: np.ndarray, *, chunk_size: int = 2048) -> np.ndarray:
        """Exact draws from the chain, driven by ``uniforms`` of shape (N, d, 2)."""
        uniforms = np.asarray(uniforms, dtype=np.float64)
        n = uniforms.shape[0]
        d = self.n_variables
        panels, tables = self._panel_tables()
        out = np.empty((n, d))
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            u = uniforms[start:stop]
            x_next = None
            for k in range(d - 1, -1, -1):
                log_density = tables[k]  # the last variable: one shared density
                if x_next is not None:
                    pair = self.log_pair(k, panels[k].points[None], x_next[:, None, None])
                    log_density = log_density[None] + pair
                x_next = panels[k].sample(log_density, u[:, k, 0], u[:, k, 1])
                out[start:stop, k] = x_next
        return out

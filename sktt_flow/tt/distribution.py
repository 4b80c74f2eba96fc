"""The squared functional tensor-train distribution, a normflows base."""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from normflows.distributions import BaseDistribution
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sktt_flow.tt.algebra import (
    advance_running_product,
    basis_core_matrices,
    check_cores,
    log_norm_squared,
    nodal_to_coefficients,
    right_orthogonalize,
    round_tt,
    scale_to_unit_max,
)
from sktt_flow.tt.basis import (
    gauss_legendre,
    orthonormal_legendre,
    orthonormal_legendre_scale,
    scaled_legendre_polynomials,
    to_reference_interval,
)
from sktt_flow.tt.cross import CrossReport, SelfCheck, tt_cross
from sktt_flow.tt.estimation import domain_from_samples, separable_mixture_cores
from sktt_flow.tt.sampling import conditional_cdf_operators, sample_right_orthogonal
from sktt_flow.tt.tails import gaussian_cdf, gaussian_icdf, gaussian_log_prob
from sktt_flow.utils.optimize import minimize
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.validation import check_domain, check_positive_int, check_samples

__all__ = ["TTDistribution"]

#: Elements of the largest temporary of :meth:`TTDistribution.log_prob` (the
#: ``r x r`` core value of every point of a chunk), per device type: small on a
#: CPU, where temporaries that fit in cache run several times faster; on a GPU
#: large enough to amortise the kernel launches, within a few hundred MB.
LOG_PROB_CHUNK_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 26}

#: Bounds on the number of rows of a chunk on a CPU (measured best at
#: n_basis 16: 2048 rows at tt_rank 8, 4096 at tt_rank 2).
CPU_LOG_PROB_CHUNK_ROWS = (1024, 8192)

#: Samples processed at once by :meth:`TTDistribution.sample`, per device
#: type: it bounds memory (a peak of about 4 kB per sample at n_basis=16,
#: tt_rank=8) and, on a GPU, amortises the kernel launches of the
#: per-coordinate solver.
SAMPLE_CHUNK_SIZE = {"cpu": 65536, "cuda": 1 << 20}


def log_prob_chunk_size(device: torch.device, max_rank: int) -> int:
    """Rows per chunk of :meth:`TTDistribution.log_prob` on ``device``."""
    budget = LOG_PROB_CHUNK_ELEMENTS.get(device.type, LOG_PROB_CHUNK_ELEMENTS["cpu"])
    rows = budget // max_rank**2
    if device.type == "cpu":
        low, high = CPU_LOG_PROB_CHUNK_ROWS
        rows = min(max(rows, low), high)
    return max(rows, 1)


class TTDistribution(BaseDistribution):
    r"""Exact, normalised density from a squared functional tensor train.

    On the box :math:`B = \prod_k [a_k, b_k]` the train represents

    .. math::

        s(z) = \sum_{i_1 \dots i_d} G_1[:, i_1, :] \cdots G_d[:, i_d, :]\,
        \phi_{i_1}(z_1) \cdots \phi_{i_d}(z_d),
        \qquad p_{TT}(z) = \frac{s(z)^2}{\lVert C \rVert_F^2},

    with :math:`\phi_i` the Legendre polynomials orthonormal on each
    :math:`[a_k, b_k]`, so that the normaliser is one contraction of the cores.
    To give every finite point a finite log-density, the distribution is the
    defensive mixture

    .. math::

        q_0(z) = (1 - \varepsilon)\, p_{TT}(z) + \varepsilon\, g(z)

    with ``g`` a product of Gaussians centred on the box, with standard
    deviations equal to its half-widths (see :mod:`sktt_flow.tt.tails`), and
    :math:`\varepsilon` = ``tail_weight``.

    It is a :class:`normflows.distributions.BaseDistribution`: it can replace
    the Gaussian base of any normflows flow.

    Parameters
    ----------
    cores : sequence of tensors
        Cores ``G_k`` of shape ``(r_{k-1}, n_basis, r_k)`` with
        ``r_0 = r_d = 1``, as Legendre coefficients. Their scale is irrelevant:
        the density is normalised exactly.
    domain : array-like of shape (d, 2)
        The box: ``domain[k] = (a_k, b_k)`` with ``a_k < b_k``.
    tail_weight : float, default=1e-3
        Weight :math:`\varepsilon` of the Gaussian component, in (0, 1).
        Larger values make held-out data outside the box cheaper (data
        mode); smaller ones make the component's reverse KL cost,
        about ``tail_weight * E_g[log g - log h]``, negligible (variational
        inference, where :meth:`from_log_density` defaults to ``1e-9``).

    Attributes
    ----------
    cores : torch.nn.ParameterList
        The cores, as parameters (freeze them with ``requires_grad_(False)``).
    low, high : buffers of shape (d,)
        The box.
    training_history : TrainingHistory or None
        Set by :meth:`from_samples`.
    cross_report : CrossReport or None
        Set by :meth:`from_log_density`.

    See Also
    --------
    TTDistribution.from_samples : Fit the train to data by maximum likelihood.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    .. [2] Ren, Zhao, Khoo and Ying, "High-dimensional density estimation with
       tensorizing flow", Res. Math. Sci. 10:30, 2023.

    Examples
    --------
    >>> import torch
    >>> from sktt_flow import TTDistribution
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> cores = [torch.randn(1, 8, 3), torch.randn(3, 8, 1)]
    >>> base = TTDistribution(cores, domain=[[-1, 1], [-2, 2]])
    >>> z = base.sample(5)
    >>> base.log_prob(z).shape
    torch.Size([5])
    """

    def __init__(
        self,
        cores: Sequence[torch.Tensor],
        domain,
        *,
        tail_weight: float = 1e-3,
    ):
        super().__init__()
        cores = [torch.as_tensor(core) for core in cores]
        check_cores(cores)
        n_basis = cores[0].shape[1]
        if any(core.shape[1] != n_basis for core in cores):
            raise ValueError(
                "All cores must have the same number of basis functions, got "
                f"{[core.shape[1] for core in cores]}."
            )
        if not cores[0].is_floating_point():
            cores = [core.to(torch.get_default_dtype()) for core in cores]
        dtype = cores[0].dtype
        low, high = check_domain(domain, len(cores))
        if not (isinstance(tail_weight, (float, int)) and 0.0 < tail_weight < 1.0):
            raise ValueError(f"tail_weight must be a float in (0, 1), got {tail_weight!r}.")
        self.tail_weight = float(tail_weight)
        self.cores = nn.ParameterList(
            [nn.Parameter(core.detach().clone().to(dtype)) for core in cores]
        )
        device = cores[0].device
        self.register_buffer("low", torch.as_tensor(low, dtype=dtype, device=device))
        self.register_buffer("high", torch.as_tensor(high, dtype=dtype, device=device))
        self.training_history = None
        self.cross_report = None

    # ------------------------------------------------------------------ shape
    @property
    def n_features(self) -> int:
        """Number of coordinates ``d``."""
        return len(self.cores)

    @property
    def n_basis(self) -> int:
        """Number of Legendre functions per coordinate (degree ``n_basis - 1``)."""
        return int(self.cores[0].shape[1])

    @property
    def tt_ranks(self) -> tuple[int, ...]:
        """Bond ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *(int(core.shape[2]) for core in self.cores))

    @property
    def domain(self) -> torch.Tensor:
        """The box as a (d, 2) tensor of ``(low, high)`` rows."""
        return torch.stack([self.low, self.high], dim=1)

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, n_basis={self.n_basis}, "
            f"tt_ranks={self.tt_ranks}, tail_weight={self.tail_weight:g}"
        )

    # ---------------------------------------------------------------- density
    def _tail_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.low + self.high) / 2.0, (self.high - self.low) / 2.0

    def log_norm_squared(self) -> torch.Tensor:
        """``log ||C||_F^2``, the log-normaliser of ``s^2`` (a scalar tensor)."""
        return log_norm_squared(list(self.cores))

    def log_abs_tt(self, z: torch.Tensor) -> torch.Tensor:
        """``log |s(z)|`` for points of the box, shape (N,).

        Points outside the box are clamped onto it first. The computation runs
        with the points along the last axis, so that every elementwise kernel
        is a contiguous sweep: the (scaled) Legendre table is filled in one
        buffer of shape ``(d, n, N)``, the constants of the basis are folded
        into the cores, and per coordinate one GEMM turns the table into the
        ``r_{k-1} x r_k`` core value of every point, which a multiply-and-sum
        contracts with the running vector. The running vector is rescaled at
        every step so that nothing underflows. Rows are processed in chunks
        (:func:`log_prob_chunk_size`), from the points to the result, so that
        the temporaries stay in cache on a CPU; the result and its gradient do
        not depend on the chunking.
        """
        return self._chunked(z, self._log_abs_tt_columns)

    def log_prob_tt(self, z: torch.Tensor) -> torch.Tensor:
        """``log p_TT(z)`` without the tail component; ``-inf`` outside the box."""
        log_norm = self.log_norm_squared()
        return self._chunked(z, functools.partial(self._log_prob_tt_columns, log_norm=log_norm))

    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        """Exact normalised log-density ``log q_0(z)``, shape (N,).

        Finite for every finite ``z``; differentiable in ``z`` and the cores.
        ``context`` is accepted for normflows compatibility and ignored.
        """
        z = self._check_points(z)
        log_norm = self.log_norm_squared()
        center, scale = self._tail_parameters()

        def log_prob_columns(
            columns: torch.Tensor, core_matrices: list[torch.Tensor]
        ) -> torch.Tensor:
            log_tt = self._log_prob_tt_columns(columns, core_matrices, log_norm)
            log_tail = gaussian_log_prob(columns, center[:, None], scale[:, None], dim=0)
            return self._mix_tail(log_tt, log_tail)

        return self._chunked(z, log_prob_columns)

    def _chunked(self, z: torch.Tensor, evaluate) -> torch.Tensor:
        """``evaluate(columns, core_matrices)`` over chunks of the rows of ``z``.

        ``columns`` is a chunk transposed to (d, chunk), points along the last
        axis. Every pass over the points, from the map onto ``[-1, 1]`` to the
        tail density, runs on one chunk at a time: on a CPU, passes over the
        whole ``(N, d)`` array went to main memory and took a quarter of the
        time.
        """
        scale = orthonormal_legendre_scale(self.low, self.high, self.n_basis, scaled_table=True)
        core_matrices = basis_core_matrices(list(self.cores), scale)
        chunk_size = log_prob_chunk_size(z.device, max(self.tt_ranks))
        return torch.cat(
            [evaluate(rows.T.contiguous(), core_matrices) for rows in z.split(chunk_size)]
        )

    def _log_abs_tt_columns(
        self, columns: torch.Tensor, core_matrices: list[torch.Tensor]
    ) -> torch.Tensor:
        reference = to_reference_interval(columns, self.low[:, None], self.high[:, None])
        table = scaled_legendre_polynomials(reference.clamp(-1.0, 1.0), self.n_basis, dim=1)
        tiny = torch.finfo(columns.dtype).tiny
        log_scale = 0.0
        running = None
        for k, matrix in enumerate(core_matrices):
            running = advance_running_product(running, matrix, table[k])
            scale = running.abs().amax(dim=0).clamp_min(tiny)
            # a multiplication by the reciprocal: a division costs several times more
            running = running * scale.reciprocal()
            log_scale = log_scale + torch.log(scale)
        return log_scale + torch.log(running[0].abs().clamp_min(tiny))

    def _log_prob_tt_columns(
        self, columns: torch.Tensor, core_matrices: list[torch.Tensor], log_norm: torch.Tensor
    ) -> torch.Tensor:
        log_density = 2.0 * self._log_abs_tt_columns(columns, core_matrices) - log_norm
        inside = ((columns >= self.low[:, None]) & (columns <= self.high[:, None])).all(dim=0)
        return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))

    def _mix_tail(self, log_tt: torch.Tensor, log_tail: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(
            log_tt + math.log1p(-self.tail_weight), log_tail + math.log(self.tail_weight)
        )

    def _check_points(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"Expected a torch.Tensor of points, got {type(z).__name__}.")
        if z.ndim != 2 or z.shape[1] != self.n_features:
            raise ValueError(
                f"Expected points of shape (N, {self.n_features}), got {tuple(z.shape)}."
            )
        if z.device != self.low.device:
            raise ValueError(
                f"The points are on {z.device} but the distribution is on "
                f"{self.low.device}; move one of them (no silent copies)."
            )
        return z.to(self.low.dtype)

    # --------------------------------------------------------------- sampling
    def sample(
        self,
        num_samples: int = 1,
        context=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact samples, shape (num_samples, d), without gradient.

        Each sample comes from the Gaussian component with probability
        ``tail_weight`` and otherwise from ``p_TT`` by the conditional
        distribution method with exact inversion of every conditional CDF
        (:mod:`sktt_flow.tt.sampling`). The work is done in float64 in chunks
        (:data:`SAMPLE_CHUNK_SIZE`) and cast to the distribution's dtype.

        Parameters
        ----------
        num_samples : int
        context : ignored
        generator : torch.Generator, optional
            On the distribution's device; fixes the draw.
        """
        num_samples = int(num_samples)
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}.")
        device = self.low.device
        with torch.no_grad():
            cores = right_orthogonalize([core.detach().double() for core in self.cores])
            low, high = self.low.double(), self.high.double()
            operators = conditional_cdf_operators(self.n_basis, torch.float64, device)
            center, scale = self._tail_parameters()
            chunks = []
            chunk_size = SAMPLE_CHUNK_SIZE.get(device.type, SAMPLE_CHUNK_SIZE["cpu"])
            for start in range(0, num_samples, chunk_size):
                size = min(chunk_size, num_samples - start)
                uniforms = torch.rand(
                    size,
                    self.n_features + 1,
                    generator=generator,
                    dtype=torch.float64,
                    device=device,
                )
                z = sample_right_orthogonal(cores, low, high, uniforms[:, 1:], operators)
                from_tail = uniforms[:, 0] < self.tail_weight
                if bool(from_tail.any()):
                    # torch.rand can return 0, where the inverse CDF is -inf.
                    open_interval = uniforms[from_tail, 1:].clamp(1e-300, 1.0 - 2**-53)
                    tail = gaussian_icdf(open_interval, center.double(), scale.double())
                    z[from_tail] = tail
                chunks.append(z)
            if not chunks:
                return torch.empty(0, self.n_features, dtype=self.low.dtype, device=device)
            return torch.cat(chunks).to(self.low.dtype)

    def forward(self, num_samples: int = 1, context=None, generator=None):
        """Samples and their log-density, ``(z, log_prob(z))``, as normflows expects."""
        z = self.sample(num_samples, generator=generator)
        return z, self.log_prob(z)

    # -------------------------------------------------------------- marginals
    def marginal_log_prob(self, values: torch.Tensor, dims) -> torch.Tensor:
        """Exact log-density of the marginal on the coordinates ``dims``.

        Parameters
        ----------
        values : tensor (N, len(dims)) or (N,) for one coordinate
            Points in the coordinates ``dims``, in that order.
        dims : int or sequence of int
            One or two (any number works) distinct coordinates.

        Returns
        -------
        tensor (N,)
            Log-density of the marginal of :math:`q_0`, exact: the other
            coordinates are integrated out by contracting their cores with
            themselves (orthonormality), and the Gaussian component has closed
            form marginals.
        """
        dims = [int(dims)] if np.ndim(dims) == 0 else [int(k) for k in dims]
        if len(set(dims)) != len(dims) or not all(0 <= k < self.n_features for k in dims):
            raise ValueError(
                f"dims must be distinct coordinates in [0, {self.n_features}), got {dims}."
            )
        values = torch.as_tensor(values, dtype=self.low.dtype, device=self.low.device)
        if values.ndim == 1:
            values = values.unsqueeze(1)
        if values.ndim != 2 or values.shape[1] != len(dims):
            raise ValueError(
                f"values must have shape (N, {len(dims)}) for dims {dims}, "
                f"got {tuple(values.shape)}."
            )
        order = np.argsort(dims)
        dims = [dims[i] for i in order]
        values = values[:, torch.as_tensor(order, device=values.device)]
        low, high = self.low[dims], self.high[dims]
        inside = ((values >= low) & (values <= high)).all(dim=1)
        clamped = torch.maximum(torch.minimum(values, high), low)
        basis = orthonormal_legendre(clamped, low, high, self.n_basis)
        n_samples = values.shape[0]
        # Environment E (batch, r, r) = contraction of s with itself over the
        # coordinates seen so far; batch is 1 until the first selected one.
        environment = torch.ones(1, 1, 1, dtype=values.dtype, device=values.device)
        log_scale = torch.zeros(1, dtype=values.dtype, device=values.device)
        position = {k: j for j, k in enumerate(dims)}
        for k, core in enumerate(self.cores):
            if k in position:
                matrix = torch.einsum("nm,amb->nab", basis[:, position[k]], core)
                environment = matrix.transpose(1, 2) @ environment @ matrix
            else:
                left = torch.einsum("xab,bic->xaic", environment, core)
                environment = torch.einsum("xaic,aid->xdc", left, core)
            trace = (
                torch.diagonal(environment, dim1=1, dim2=2)
                .sum(-1)
                .clamp_min(torch.finfo(values.dtype).tiny)
            )
            environment = environment / trace[:, None, None]
            log_scale = log_scale + torch.log(trace)
        log_tt = log_scale + torch.log(environment.reshape(-1).clamp_min(0.0))
        log_tt = log_tt.expand(n_samples) - self.log_norm_squared()
        log_tt = torch.where(inside, log_tt, torch.full_like(log_tt, -math.inf))
        center, scale = self._tail_parameters()
        log_tail = gaussian_log_prob(values, center[dims], scale[dims])
        return self._mix_tail(log_tt, log_tail)

    def tail_mass_outside(self) -> torch.Tensor:
        """Probability that ``q_0`` puts outside the box (all from the tail)."""
        center, scale = self._tail_parameters()
        inside = gaussian_cdf(self.high, center, scale) - gaussian_cdf(self.low, center, scale)
        return self.tail_weight * (1.0 - inside.prod())

    # ----------------------------------------------------------- construction
    @classmethod
    def from_samples(
        cls,
        X,
        *,
        tt_rank: int = 8,
        n_basis: int = 16,
        domain=None,
        tail_weight: float = 1e-3,
        max_iter: int = 300,
        batch_size: int = 512,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 20,
        validation=None,
        random_state=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        verbose: int = 0,
    ) -> TTDistribution:
        """Fit a train to samples by maximum likelihood.

        First an optimisation-free start: the sum over ``tt_rank`` clusters of
        products of root-Gaussian marginals (with one cluster, the rank-one
        start from the marginals); then Adam on the mean negative
        log-likelihood of all cores, with early stopping on a held-out
        fraction and restoration of the best cores
        (:mod:`sktt_flow.tt.estimation`).

        Parameters
        ----------
        X : array-like or tensor of shape (n_samples, n_features)
            Samples; at least 2, all finite. Fit in standardised coordinates
            for best results: the estimator does that for you.
        tt_rank : int, default=8
            Maximum bond rank (capped at what each unfolding allows).
        n_basis : int, default=16
            Legendre functions per coordinate.
        domain : array-like of shape (n_features, 2), optional
            The box. By default the bounding box of ``X`` widened by 10% of
            its width on each side.
        tail_weight : float, default=1e-3
            Weight of the Gaussian full-support component (see the class
            docstring).
        max_iter : int, default=300
            Maximum number of epochs of maximum likelihood (0: the start only).
        batch_size : int, default=512
        learning_rate : float, default=1e-3
            Adam's initial step size; halved whenever the held-out score
            stalls for half of ``n_iter_no_change`` epochs.
        validation_fraction : float, default=0.1
            Held-out fraction for early stopping, in [0, 1); 0 uses the
            training log-likelihood instead.
        n_iter_no_change : int, default=20
            Epochs without improvement of the held-out log-likelihood before
            stopping.
        validation : array-like or tensor of shape (n_validation, n_features), optional
            Held-out samples for early stopping. When given, all of ``X`` is
            trained on and ``validation_fraction`` is ignored (the estimator
            uses this to share one split between the base and the flow).
        random_state : int, RandomState, Generator or None
            Fixes the split, the clustering and the mini-batches.
        device : torch device or str, optional
            Where the train lives and is fitted (default: CPU, or the device
            of ``X`` when it is a tensor).
        dtype : torch.dtype, default=torch.float64
        verbose : int, default=0
            1 shows a progress bar.

        Returns
        -------
        TTDistribution
            With ``training_history`` (:class:`~sktt_flow.utils.optimize.TrainingHistory`).
        """
        for name, value, minimum in (
            ("tt_rank", tt_rank, 1),
            ("n_basis", n_basis, 1),
            ("batch_size", batch_size, 1),
            ("max_iter", max_iter, 0),
            ("n_iter_no_change", n_iter_no_change, 1),
        ):
            check_positive_int(value, name, minimum)
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {validation_fraction!r}."
            )
        if device is None:
            device = X.device if isinstance(X, torch.Tensor) else "cpu"
        X = check_samples(X, dtype=dtype, device=device)
        generator = torch_generator(random_state, X.device)
        if domain is None:
            low, high = domain_from_samples(X)
        else:
            low, high = (
                torch.as_tensor(bound, dtype=dtype, device=X.device)
                for bound in check_domain(domain, X.shape[1])
            )
        if validation is not None:
            validation = check_samples(validation, dtype=dtype, device=X.device, min_samples=1)
            if validation.shape[1] != X.shape[1]:
                raise ValueError(
                    f"validation has {validation.shape[1]} features but X has {X.shape[1]}."
                )
            train = X
        else:
            n_validation = round(validation_fraction * X.shape[0])
            if validation_fraction > 0 and not 1 <= n_validation < X.shape[0]:
                raise ValueError(
                    f"validation_fraction={validation_fraction} leaves no validation or no "
                    f"training sample out of {X.shape[0]}."
                )
            order = torch.randperm(X.shape[0], generator=generator, device=X.device)
            train = X[order[n_validation:]]
            validation = X[order[:n_validation]] if n_validation else train
        cores = separable_mixture_cores(train, low, high, n_basis, tt_rank, generator)
        distribution = cls(cores, torch.stack([low, high], dim=1), tail_weight=tail_weight).to(
            device=X.device, dtype=dtype
        )

        def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:
            return -distribution.log_prob(batch).mean()

        def held_out_log_likelihood() -> float:
            with torch.no_grad():
                return float(distribution.log_prob(validation).mean())

        distribution.training_history = minimize(
            distribution,
            negative_log_likelihood,
            train,
            score=held_out_log_likelihood,
            max_iter=max_iter,
            batch_size=batch_size,
            learning_rate=learning_rate,
            n_iter_no_change=n_iter_no_change,
            generator=generator,
            verbose=verbose,
            description="TT maximum likelihood",
        )
        distribution.canonicalize_()
        return distribution

    @classmethod
    def from_log_density(
        cls,
        log_density,
        domain,
        *,
        n_features: int | None = None,
        tt_rank: int = 8,
        n_basis: int | str = 16,
        tol: float = 1e-4,
        max_evals: int | None = None,
        max_sweeps: int = 20,
        batch_size: int = 100_000,
        n_seeds: int = 128,
        n_seed_steps: int = 25,
        cross_method: str = "one-site",
        kick_rank: int = 2,
        patience: int = 3,
        n_check_samples: int = 2000,
        min_ess: float = 0.5,
        resolution_tol: float = 1e-3,
        max_n_basis: int = 128,
        tail_weight: float = 1e-9,
        random_state=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        verbose: int = 0,
        callable_name: str = "log_density",
    ) -> TTDistribution:
        """Build the train from an unnormalised log-density by TT-cross.

        TT-cross (:mod:`sktt_flow.tt.cross`) interpolates ``sqrt(h)`` on the
        product grid of ``n_basis`` Gauss–Legendre nodes per coordinate; the
        nodal values map exactly to Legendre coefficients, and the train is
        rounded to ``tt_rank`` and normalised, so that ``p_TT`` is proportional
        to the square of the polynomial interpolant of ``sqrt(h)``.

        Every half-sweep's train is built into the distribution it would give
        and checked on ``n_check_samples`` exact draws of itself (the
        *self-check*: ESS, ELBO, reverse-KL and ``log Z`` estimates, the
        relative error on off-grid held-out points, and the resolution check
        of the Legendre spectrum; see :func:`~sktt_flow.tt.cross.tt_cross`).
        The train with the largest ELBO is returned; cross stops when it has
        not improved for ``patience`` half-sweeps.

        Parameters
        ----------
        log_density : callable
            ``log_density(x)``: a tensor (m, d) of points (in ``dtype``, on
            ``device``) to m values of ``log h`` (tensor or array-like).
            ``-inf`` means zero density; NaN and ``+inf`` are errors.
        domain : array-like (d, 2), or a pair (low, high) with ``n_features``
            The box; ``h`` outside it is ignored (the tail component covers it).
        n_features : int, optional
            Needed only when ``domain`` is a single pair.
        tt_rank : int, default=8
            Maximum bond rank, during cross and after rounding.
        n_basis : int or "auto", default=16
            Grid nodes and Legendre functions per coordinate. It sets the
            resolution: a bump of width ``w`` needs ``n_basis`` well above
            ``(high - low) / w``. ``"auto"`` starts at 16 and multiplies it
            by 1.5 while the resolution check fails (some coordinate keeps
            more than ``resolution_tol`` of its energy in its top quarter of
            degrees) and the self-check ELBO improves, up to ``max_n_basis``
            and within ``max_evals``; ``cross_report.n_basis_trials`` records
            every size tried.
        tol : float, default=1e-4
            Relative error target on held-out grid points (cross stops when it
            is reached; two-site cross also truncates to it).
        max_evals : int, optional
            Budget of ``log_density`` evaluations (points), self-checks and
            every size tried by ``n_basis="auto"`` included.
        max_sweeps : int, default=20
            Maximum half-sweeps of cross (per size with ``n_basis="auto"``);
            cross usually stops earlier, by ``patience`` or ``tol``.
        batch_size : int, default=100000
            Maximum points per call of ``log_density``.
        n_seeds, n_seed_steps : int
            Random starts and gradient-ascent steps that seed the index sets
            with high-density points (see :func:`~sktt_flow.tt.cross.find_seeds`).
        cross_method : {"one-site", "two-site"}, default="one-site"
            One-site cross costs ``r n (r + kick_rank)`` evaluations per core
            and half-sweep; two-site costs ``r n n r`` per bond. Both adapt
            the ranks by SVD truncation (see :func:`~sktt_flow.tt.cross.tt_cross`).
        kick_rank : int, default=2
            One-site: extra multi-indices per fiber (where the last self-check
            found the train shortest of ``h``, and seeds), which let the ranks
            grow; 0: no enrichment.
        patience : int, default=3
            Half-sweeps without improvement of the self-check before stopping.
        n_check_samples : int, default=2000
            Exact draws per self-check; 0 disables it (the held-out grid error
            then chooses the train and the stop, and ``n_basis="auto"`` uses
            the resolution check alone).
        min_ess : float, default=0.5
            Self-check ESS below which the result warns.
        resolution_tol : float, default=1e-3
            Top-quarter energy share above which a coordinate is unresolved.
        max_n_basis : int, default=128
            Cap of ``n_basis="auto"``.
        tail_weight : float, default=1e-9
            Weight of the full-support component; tiny by default so that its
            reverse KL cost is negligible (see the class docstring).
        random_state : int, RandomState, Generator or None
        device, dtype
            Where and in what precision the callable is evaluated and the
            distribution lives; cross itself runs in float64.
        verbose : int, default=0
        callable_name : str, default="log_density"
            What error messages call ``log_density``.

        Returns
        -------
        TTDistribution
            With ``cross_report`` (:class:`~sktt_flow.tt.cross.CrossReport`):
            calls, evaluations, sweeps, error, rank and self-check histories,
            the returned train's self-check and resolution, advice.

        Raises
        ------
        ValueError
            For bad arguments, a misbehaving callable, a budget too small for
            one half-sweep, or when no finite, non-zero train came out (e.g.
            ``log_density`` was ``-inf`` at every evaluated point).

        Warns
        -----
        ConvergenceWarning
            When the returned train fails its self-check (ESS below
            ``min_ess``), naming the remedies the diagnostics point to
            (``n_basis``, ``tt_rank``, the domain, two-site cross, the
            budget); without a self-check, when the grid error stays above
            ``tol``.
        """
        if n_features is None and np.shape(domain) == (2,):
            raise ValueError("A single (low, high) domain needs n_features.")
        auto = isinstance(n_basis, str)
        if auto and n_basis != "auto":
            raise ValueError(f'n_basis must be an integer >= 2 or "auto", got {n_basis!r}.')
        for name, value, minimum in (
            ("tt_rank", tt_rank, 1),
            ("n_basis", AUTO_N_BASIS_START if auto else n_basis, 2),
            ("max_n_basis", max_n_basis, 2),
            ("max_sweeps", max_sweeps, 1),
            ("batch_size", batch_size, 1),
            ("n_seeds", n_seeds, 1),
            ("n_seed_steps", n_seed_steps, 0),
            ("kick_rank", kick_rank, 0),
            ("patience", patience, 1),
            ("n_check_samples", n_check_samples, 0),
        ):
            check_positive_int(value, name, minimum)
        if max_evals is not None:
            if not (isinstance(max_evals, numbers.Real) and max_evals >= 1):
                raise ValueError(f"max_evals must be a number >= 1 or None, got {max_evals!r}.")
            max_evals = int(max_evals)
        # tt_cross checks that log_density is callable.
        low, high = check_domain(domain, n_features)
        device = torch.device("cpu" if device is None else device)
        low = torch.as_tensor(low, dtype=torch.float64, device=device)
        high = torch.as_tensor(high, dtype=torch.float64, device=device)
        box = torch.stack([low, high], dim=1)
        generator = torch_generator(random_state, device)

        def build(nodal_cores: list[torch.Tensor]) -> TTDistribution:
            return cls._from_nodal_cores(
                nodal_cores, box, tt_rank=tt_rank, tail_weight=tail_weight, dtype=dtype
            )

        def run(size: int, budget: int | None, seeds: torch.Tensor | None, abandon: bool = False):
            nodes, _ = gauss_legendre(size, low, high, device=device)
            return tt_cross(
                log_density,
                nodes,
                max_rank=tt_rank,
                tol=tol,
                max_evals=budget,
                max_sweeps=max_sweeps,
                batch_size=batch_size,
                n_seeds=n_seeds,
                n_seed_steps=n_seed_steps,
                generator=generator,
                dtype=dtype,
                method=cross_method,
                kick_rank=kick_rank,
                patience=patience,
                domain=box,
                seeds=seeds,
                build_candidate=build,
                n_check_samples=n_check_samples,
                min_ess=min_ess,
                resolution_tol=resolution_tol,
                abandon_unresolved=abandon,
                verbose=verbose,
                callable_name=callable_name,
            )

        if auto:
            nodal_cores, report = cls._cross_auto_n_basis(run, max_evals, max_n_basis)
        else:
            nodal_cores, report = run(n_basis, max_evals, None)
        distribution = build(nodal_cores)
        distribution.cross_report = report
        _warn_if_poor(report, tol, auto, max_n_basis)
        return distribution

    @staticmethod
    def _cross_auto_n_basis(run, max_evals: int | None, max_n_basis: int):
        """TT-cross at growing ``n_basis`` (``n_basis="auto"``).

        Sizes 16, 24, 36, ... (x1.5), capped at ``max_n_basis``: the next size
        is tried while the resolution check of the last one fails and it
        improved the self-check ELBO on the best size so far by more than
        the noise; the evaluation budget is shared, and so are the seeds.
        Returns the nodal cores and report of the size with the largest ELBO
        (without a self-check: the last size), the report's counts covering
        every size tried.
        """
        best = None
        trials: list[dict] = []
        seeds = None
        n_calls = n_evaluations = n_check_evaluations = 0
        size = min(AUTO_N_BASIS_START, max_n_basis)
        while True:
            budget = None if max_evals is None else max_evals - n_evaluations
            try:
                # A size below the cap is abandoned as soon as its resolution
                # check fails twice: the next size is where the budget goes.
                nodal_cores, report = run(size, budget, seeds, size < max_n_basis)
            except ValueError as error:
                # A larger size that the budget cannot afford ends the search.
                if best is None or "too small for one sweep" not in str(error):
                    raise
                break
            seeds = report.seeds
            n_calls += report.n_calls
            n_evaluations += report.n_evaluations
            n_check_evaluations += report.n_check_evaluations
            trials.append(
                {
                    "n_basis": size,
                    "ess": report.ess,
                    "kl": report.kl,
                    "elbo": report.elbo,
                    "max_resolution_share": max(report.resolution, default=math.nan),
                    "n_evaluations": report.n_evaluations,
                }
            )
            previous = None if best is None else best[1]
            improved = _self_check_improves(report, previous)
            if previous is None or _self_check_score(report) >= _self_check_score(previous):
                best = (nodal_cores, report)
            unresolved = bool(report.unresolved) or not report.resolution
            if not (unresolved and improved) or size >= max_n_basis:
                break
            size = min(max_n_basis, math.ceil(AUTO_N_BASIS_GROWTH * size))
        nodal_cores, report = best
        report.n_calls, report.n_evaluations = n_calls, n_evaluations
        report.n_check_evaluations = n_check_evaluations
        report.n_basis_trials = trials
        return nodal_cores, report

    @classmethod
    def _from_nodal_cores(
        cls,
        nodal_cores: Sequence[torch.Tensor],
        box: torch.Tensor,
        *,
        tt_rank: int,
        tail_weight: float,
        dtype: torch.dtype,
    ) -> TTDistribution:
        """The canonical distribution of a train of values of ``sqrt(h)`` at
        the Gauss–Legendre nodes of ``box``: exact map to coefficients, rounding
        to ``tt_rank``, normalisation. Raises ValueError when the train is not
        finite or is zero."""
        # Every core at unit largest entry first: the density ignores the scale,
        # and SVDs and norms of cores of unknown scale could overflow.
        nodal_cores, _ = scale_to_unit_max(list(nodal_cores))
        low, high = box[:, 0], box[:, 1]
        # Rounding at a tolerance far below the cross error only drops the
        # redundant ranks that cross may keep.
        cores = round_tt(
            nodal_to_coefficients(nodal_cores, low, high), max_rank=tt_rank, rtol=1e-12
        )
        distribution = cls(cores, box, tail_weight=tail_weight).to(device=box.device, dtype=dtype)
        return distribution.canonicalize_()

    def canonicalize_(self) -> TTDistribution:
        """Right-orthogonalise the cores and scale them to ``||C||_F = 1``, in place.

        The density does not change; conditionals and normaliser become
        cheapest and best conditioned in this form.

        Raises
        ------
        ValueError
            When a core has a non-finite entry or the train is zero: neither
            is a density, and normalising would give NaN.
        """
        with torch.no_grad():
            cores = [core.detach().double() for core in self.cores]
            bad = [k for k, core in enumerate(cores) if not bool(torch.isfinite(core).all())]
            if bad:
                raise ValueError(
                    f"The train has non-finite entries (cores {bad}): it is not a density."
                )
            # Each core at unit largest entry, then at unit norm: the density
            # ignores the scale, the square of an entry above 1e154 overflows,
            # and the norm of a long train overflows float32 (e^154 for 64
            # random cores of rank 8), which right_orthogonalize would gather
            # in G_1.
            cores, _ = scale_to_unit_max(cores)
            tiny = torch.finfo(torch.float64).tiny
            cores = right_orthogonalize([core / core.norm().clamp_min(tiny) for core in cores])
            norm = cores[0].norm()
            if not bool(norm > 0) or not bool(torch.isfinite(norm)):
                raise ValueError("The train is zero: it is not a density.")
            cores[0] = cores[0] / norm
            for parameter, core in zip(self.cores, cores, strict=True):
                parameter.data = core.to(parameter.dtype).contiguous()
        return self


#: First size and growth factor of ``n_basis="auto"``.
AUTO_N_BASIS_START = 16
AUTO_N_BASIS_GROWTH = 1.5


def _returned_check(report: CrossReport) -> SelfCheck | None:
    """The self-check of the train a cross report returned (None without one)."""
    if not report.check_history or report.best_sweep == 0:
        return None
    return report.check_history[report.best_sweep - 1]


def _self_check_score(report: CrossReport) -> tuple:
    """Sort key of a cross run's returned train (larger is better); without a
    self-check every run ties, so that the later, larger size wins."""
    check = _returned_check(report)
    return () if check is None else check.score()


def _self_check_improves(report: CrossReport, previous: CrossReport | None) -> bool:
    """Whether a run's returned train beats the previous best by more than the
    noise of the two ELBO estimates (always, without a self-check)."""
    check = _returned_check(report)
    if previous is None or check is None:
        return True
    return check.improves_on(_returned_check(previous))


def _warn_if_poor(report: CrossReport, tol: float, auto: bool, max_n_basis: int) -> None:
    """The ConvergenceWarning of :meth:`TTDistribution.from_log_density`."""
    if report.converged:
        return
    advice = list(report.advice)
    if auto:
        advice = [
            f"raise max_n_basis (n_basis='auto' stopped at {report.n_basis})"
            if line.startswith("raise n_basis")
            else line
            for line in advice
        ]
    remedies = "; ".join(advice) if advice else "check the target and the domain"
    if math.isfinite(report.ess):
        message = (
            f"The TT-cross base is poor: self-check ESS {report.ess:.3f} (reverse KL "
            f"estimate {report.kl:.3g}) on exact draws, after {report.n_evaluations} "
            f"evaluations ({report.stop_reason}). Remedies: {remedies}."
        )
    else:
        message = (
            f"TT-cross stopped without reaching tol={tol}: {report.stop_reason}; held-out "
            f"relative error {report.best_error:.2e} after {report.n_evaluations} "
            f"evaluations. The base may miss mass; check its effective sample size. "
            f"Remedies: {remedies}."
        )
    warnings.warn(message, ConvergenceWarning, stacklevel=3)

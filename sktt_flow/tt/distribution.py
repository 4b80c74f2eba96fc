"""The squared functional tensor-train distribution, a normflows base."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from normflows.distributions import BaseDistribution
from torch import nn

from sktt_flow.tt.algebra import (
    check_cores,
    contract_running_product,
    log_abs_chain_product,
    log_norm_squared,
    log_norm_squared_by_tree,
    padded_core_matrices,
    right_orthogonalize,
    scale_to_unit_max,
    stacked_core_matrices,
)
from sktt_flow.tt.basis import (
    orthonormal_legendre,
    orthonormal_legendre_scale,
    scaled_legendre_polynomials,
    to_reference_interval,
)
from sktt_flow.tt.sampling import conditional_cdf_operators, sample_right_orthogonal
from sktt_flow.tt.tails import gaussian_cdf, gaussian_icdf, gaussian_log_prob
from sktt_flow.utils.mixture import log_mixture
from sktt_flow.utils.validation import check_domain, check_num_samples, check_points

__all__ = ["TTDistribution"]

#: Elements of the largest temporary of :meth:`TTDistribution.log_prob` (the
#: ``r x r`` core value of every point of a chunk), per device type: small on a
#: CPU, where temporaries that fit in cache run several times faster; on a GPU
#: large enough to amortise the kernel launches, within a few hundred MB.
LOG_PROB_CHUNK_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 26}

#: Bounds on the number of rows of a chunk on a CPU (measured best at
#: n_basis 16: 2048 rows at tt_rank 8, 4096 at tt_rank 2).
CPU_LOG_PROB_CHUNK_ROWS = (1024, 8192)

#: Elements of the core values that :meth:`TTDistribution.log_prob` computes
#: by one batched product (several coordinates of a chunk at once, within a
#: run of cores of one shape): on a few hundred rows, as in a training step,
#: the cost of a train is the number of its kernels, forward and backward; on
#: the rows of a CPU chunk it is one coordinate at a time, whose values stay
#: in cache for the contraction that follows.
BATCHED_CORE_VALUES = 1 << 17

#: Device types on which :meth:`TTDistribution.log_prob` contracts a chunk of
#: at most :data:`TREE_MAX_POINTS` rows by a binary tree of batched matrix
#: products (:func:`~sktt_flow.tt.algebra.log_abs_chain_product`) instead of
#: a running row vector. On a GPU the running vector's half a dozen kernels
#: per coordinate are launched by the host, whose cost, not the device's
#: arithmetic, sets the time of small calls; the normaliser goes by a tree
#: too (:func:`~sktt_flow.tt.algebra.log_norm_squared_by_tree`). On an H200
#: (float32, n_basis 16, 2026-12-04): 10,000 points in 4.1 ms against 8.4 ms
#: at d = 32 and rank 8, in 10.1 against 29.7 ms at d = 64 and rank 16; a
#: training step's forward and backward on 256 rows in 11.5 against 16.5 ms
#: (d = 32) and 13.1 against 39.8 ms (d = 64, rank 16); no gain at d = 8, and
#: above some 10^5 points the running vector is as fast or faster (the tree
#: does ``tt_rank`` times its arithmetic). On a CPU, where kernels are cheap
#: and arithmetic is not (a step's base took twice as long by the tree), and
#: where a row's score must not depend on the size of its batch
#: (scikit-learn's checks), the running vector stays.
TREE_CONTRACTION_DEVICES = ("cuda",)

#: Most rows of a chunk contracted by the tree (see
#: :data:`TREE_CONTRACTION_DEVICES`).
TREE_MAX_POINTS = 1 << 15

#: Largest ``d * R^2 * N`` (``R`` the largest rank, ``N`` the rows of a chunk)
#: of a chunk contracted by the tree: the rows of a call are split into chunks
#: of at most this many core values (256 MB in float32, the running vector's
#: budget, :data:`LOG_PROB_CHUNK_ELEMENTS`), as the tree's temporaries are a
#: few times this many numbers. (The timings above were taken with chunks of
#: up to 2^28 values: at d = 64 and rank 16 a call of 10,000 rows is now three
#: chunks.)
TREE_MAX_ELEMENTS = 1 << 26

#: Most multiply-adds, ``d R^6``, of the normaliser by the tree on a device of
#: :data:`TREE_CONTRACTION_DEVICES`: its transfer matrices are ``R^2 x R^2``,
#: ``R^2 / n_basis`` times the arithmetic of the running contraction, which
#: is negligible on a GPU up to ``tt_rank`` 16 at d = 64 (2^30: about 7 ms
#: even at a consumer GPU's float64 rate) and is not beyond.
TREE_NORMALISER_MAX_PRODUCTS = 1 << 30

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

    #: ``(log ||C||^2, stacked core matrices)`` inside :meth:`fixed_cores`,
    #: else None (a class attribute: models pickled before it existed load).
    _fixed: tuple[torch.Tensor, list[tuple[int, torch.Tensor]]] | None = None

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
        if self._fixed is not None:
            return self._fixed[0]
        return self._log_norm_squared()

    def _log_norm_squared(self) -> torch.Tensor:
        # by the tree where log_prob contracts by it (the same trade, one
        # batched product per level instead of a few kernels per core)
        largest = max(self.tt_ranks)
        if (
            self.low.device.type in TREE_CONTRACTION_DEVICES
            and self.n_features * largest**6 <= TREE_NORMALISER_MAX_PRODUCTS
        ):
            return log_norm_squared_by_tree(list(self.cores))
        return log_norm_squared(list(self.cores))

    def _core_matrices(self) -> list[tuple[int, torch.Tensor]]:
        """:func:`~sktt_flow.tt.algebra.stacked_core_matrices` with the
        constants of the basis folded in."""
        if self._fixed is not None:
            return self._fixed[1]
        scale = orthonormal_legendre_scale(self.low, self.high, self.n_basis, scaled_table=True)
        return stacked_core_matrices(list(self.cores), scale)

    @contextlib.contextmanager
    def fixed_cores(self) -> Iterator[TTDistribution]:
        """A block in which the cores do not change and nothing is differentiated.

        Inside it, :meth:`log_prob` and the other evaluations reuse the
        normaliser ``log ||C||^2`` and the cores' matrices computed on entry
        instead of computing them at every call: an estimator scores its rows
        in chunks of a few thousand, two calls per chunk with a defensive
        component, and these were 1.1 ms of a 9 ms call (d = 16, rank 8,
        4,096 rows, one CPU thread). Gradient recording is switched off in
        the block, as cached values must not carry a graph; changing the
        cores in it leaves stale values (the caller's promise). Blocks nest.
        """
        if self._fixed is not None:
            yield self
            return
        with torch.no_grad():
            self._fixed = (self._log_norm_squared(), self._core_matrices())
            try:
                yield self
            finally:
                self._fixed = None

    def log_abs_tt(self, z: torch.Tensor) -> torch.Tensor:
        """``log |s(z)|`` for points of the box, shape (N,).

        Points outside the box are clamped onto it first. The computation runs
        with the points along the last axis, so that every elementwise kernel
        is a contiguous sweep: the (scaled) Legendre table is filled in one
        buffer of shape ``(d, n, N)``, the constants of the basis are folded
        into the cores, and per coordinate one GEMM turns the table into the
        ``r_{k-1} x r_k`` core value of every point, which a multiply-and-sum
        contracts with the running vector. The running vector is rescaled at
        every step so that nothing underflows; the scales are constants to
        autograd (the result is the same function of the cores whatever they
        are, so its gradient is exact without a backward pass through them),
        and their logarithms are taken at once at the end. On few rows the
        core values of several coordinates come from one batched product
        (:data:`BATCHED_CORE_VALUES`). Rows are processed in chunks
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
            columns: torch.Tensor, core_matrices: list[tuple[int, torch.Tensor]]
        ) -> torch.Tensor:
            log_tt = self._log_prob_tt_columns(columns, core_matrices, log_norm)
            log_tail = gaussian_log_prob(columns, center[:, None], scale[:, None], dim=0)
            return self._mix_tail(log_tt, log_tail)

        return self._chunked(z, log_prob_columns)

    def _chunked(self, z: torch.Tensor, evaluate) -> torch.Tensor:
        """``evaluate(columns, core_matrices)`` over chunks of the rows of ``z``.

        ``core_matrices`` comes from
        :func:`~sktt_flow.tt.algebra.stacked_core_matrices`, with the
        constants of the basis folded in, once for all chunks.

        ``columns`` is a chunk transposed to (d, chunk), points along the last
        axis. Every pass over the points, from the map onto ``[-1, 1]`` to the
        tail density, runs on one chunk at a time: on a CPU, passes over the
        whole ``(N, d)`` array went to main memory and took a quarter of the
        time.
        """
        if z.shape[0] == 0:  # no rows (a sampler's chunk can hand none to this model)
            return z.new_zeros(0)
        core_matrices = self._core_matrices()
        chunk_size = log_prob_chunk_size(z.device, max(self.tt_ranks))
        if self._contracts_by_tree(z.device, z.shape[0]):
            # chunks whose tree stays within its memory budget
            tree_rows = TREE_MAX_ELEMENTS // (self.n_features * max(self.tt_ranks) ** 2)
            chunk_size = max(1, min(chunk_size, tree_rows))
        return torch.cat(
            [evaluate(rows.T.contiguous(), core_matrices) for rows in z.split(chunk_size)]
        )

    def _contracts_by_tree(self, device: torch.device, n_points: int) -> bool:
        """Whether ``n_points`` rows on ``device`` are contracted by the tree
        (:data:`TREE_CONTRACTION_DEVICES`): the rows of a call, which
        :meth:`_chunked` then splits so that each chunk's tree stays within
        :data:`TREE_MAX_ELEMENTS`, or those of one such chunk."""
        return device.type in TREE_CONTRACTION_DEVICES and n_points <= TREE_MAX_POINTS

    def _log_abs_tt_columns(
        self, columns: torch.Tensor, core_matrices: list[tuple[int, torch.Tensor]]
    ) -> torch.Tensor:
        reference = to_reference_interval(columns, self.low[:, None], self.high[:, None])
        table = scaled_legendre_polynomials(reference.clamp(-1.0, 1.0), self.n_basis, dim=1)
        n_points = columns.shape[1]
        largest = max(self.tt_ranks)
        if self._contracts_by_tree(columns.device, n_points):
            padded = padded_core_matrices(core_matrices, self.tt_ranks)  # (d, R^2, n)
            factors = torch.bmm(table.transpose(1, 2), padded.transpose(1, 2))  # (d, N, R^2)
            return log_abs_chain_product(factors.view(self.n_features, n_points, largest, largest))
        tiny = torch.finfo(columns.dtype).tiny
        # scales[k]: the largest |entry| of the running product after core k,
        # divided out; outside the graph (see log_abs_tt)
        scales = columns.new_empty(self.n_features, n_points)
        running = None
        # The blocks of coordinates whose core values come from one product,
        # in order: the cores' runs of one shape, cut into BATCHED_CORE_VALUES.
        # split, not slices, for the matrices and the table alike: the
        # backward of a slice fills a zero tensor of the whole input per
        # block and adds them up, that of split is one cat. For the table,
        # (d, n_basis, N), whose gradient a flow on the TT needs, a training
        # step took 2-7% longer with slices (d = 2-30, 16-128 functions, 256
        # rows, one thread; the same values and gradients to the bit).
        blocks = [
            blocked
            for _, matrices in core_matrices
            for blocked in matrices.split(
                max(1, BATCHED_CORE_VALUES // (matrices.shape[1] * n_points))
            )
        ]
        first = 0
        for blocked, block_table in zip(
            blocks, table.split([blocked.shape[0] for blocked in blocks]), strict=True
        ):
            values = torch.bmm(blocked, block_table)
            for k, core_values in enumerate(values.unbind(0), start=first):
                if running is None:  # r_0 = 1: the first core's values
                    running = core_values
                else:
                    core_values = core_values.view(running.shape[0], -1, n_points)
                    running = contract_running_product(running, core_values)
                # the largest |entry|, written in place (vector_norm with
                # ord=inf reduces over dim 0 twenty times slower)
                scale = torch.amax(running.detach().abs(), dim=0, out=scales[k])
                scale.clamp_min_(tiny)
                # a multiplication by the reciprocal: a division costs several times more
                running = running * scale.reciprocal()
            first += blocked.shape[0]
        # cumsum adds in order, coordinate by coordinate, as a running sum would
        log_scale = torch.log(scales).cumsum(dim=0)[-1]
        return log_scale + torch.log(running[0].abs().clamp_min(tiny))

    def _log_prob_tt_columns(
        self,
        columns: torch.Tensor,
        core_matrices: list[tuple[int, torch.Tensor]],
        log_norm: torch.Tensor,
    ) -> torch.Tensor:
        log_density = 2.0 * self._log_abs_tt_columns(columns, core_matrices) - log_norm
        inside = ((columns >= self.low[:, None]) & (columns <= self.high[:, None])).all(dim=0)
        return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))

    def _mix_tail(self, log_tt: torch.Tensor, log_tail: torch.Tensor) -> torch.Tensor:
        return log_mixture(log_tt, log_tail, self.tail_weight)

    def _check_points(self, z: torch.Tensor) -> torch.Tensor:
        return check_points(z, self.n_features, self.low)

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
        (:mod:`sktt_flow.tt.sampling`), in chunks (:data:`SAMPLE_CHUNK_SIZE`),
        in the distribution's dtype. The uniforms are drawn in float64 whatever
        the dtype, so a generator gives the same draws in float32 and float64
        up to float32 rounding of the solver: each conditional CDF is then
        exact to about ``1e-7`` of its total, instead of ``1e-16``, and the
        draws differ by about ``1e-7`` of the box. Rounding of an early
        coordinate can move a later one across a region of (almost) no mass,
        to another mode: rare, and the law of the draws is the same. The
        train is right-orthogonalised and normalised in float64 first, so no
        prefix overflows float32.

        Parameters
        ----------
        num_samples : int
        context : ignored
        generator : torch.Generator, optional
            On the distribution's device; fixes the draw.
        """
        return self._draw(num_samples, generator, with_log_prob=False)[0]

    def _draw(
        self, num_samples, generator: torch.Generator | None, with_log_prob: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact samples (see :meth:`sample`) and, with ``with_log_prob``,
        ``log q_0`` at them, without gradient (see :meth:`forward`)."""
        num_samples = check_num_samples(num_samples)
        device, dtype = self.low.device, self.low.dtype
        with torch.no_grad():
            cores = right_orthogonalize([core.detach().double() for core in self.cores])
            # The whole norm sits in the first core; any scale of the train
            # samples the same law, and 1 keeps float32 prefixes in range.
            cores[0] = cores[0] / torch.linalg.vector_norm(cores[0])
            cores = [core.to(dtype) for core in cores]
            low, high = self.low, self.high
            operators = conditional_cdf_operators(self.n_basis, dtype, device)
            center, scale = self._tail_parameters()
            chunks, log_prob_chunks = [], []
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
                drawn = sample_right_orthogonal(
                    cores,
                    low,
                    high,
                    uniforms[:, 1:].to(dtype),
                    operators,
                    return_log_density=with_log_prob,
                )
                z, log_tt = drawn if with_log_prob else (drawn, None)
                from_tail = uniforms[:, 0] < self.tail_weight
                if bool(from_tail.any()):
                    # torch.rand can return 0, where the inverse CDF is -inf.
                    open_interval = uniforms[from_tail, 1:].clamp(1e-300, 1.0 - 2**-53)
                    tail = gaussian_icdf(open_interval, center.double(), scale.double())
                    z[from_tail] = tail.to(dtype)
                    if with_log_prob:
                        # the train's density where the tail's draws landed
                        # (0 outside the box), evaluated afresh: few rows
                        log_tt[from_tail] = self.log_prob_tt(z[from_tail])
                chunks.append(z)
                if with_log_prob:
                    log_tail = gaussian_log_prob(z, center, scale)
                    log_prob_chunks.append(self._mix_tail(log_tt, log_tail))
            if not chunks:
                empty = torch.empty(0, self.n_features, dtype=dtype, device=device)
                return empty, (empty.new_empty(0) if with_log_prob else None)
            return torch.cat(chunks), (torch.cat(log_prob_chunks) if with_log_prob else None)

    def forward(self, num_samples: int = 1, context=None, generator=None):
        """Exact samples and their log-density, ``(z, log q_0(z))``, as normflows expects.

        While no core requires gradient (a frozen base, or under
        ``torch.no_grad``), ``log q_0`` comes with the draws: the sampler's
        sweep reads each conditional density off the prefixes it computes
        anyway, so the log-density costs 1% to 6% of the draw's time instead
        of a second pass over the train (15% to 30% of it; draws and density
        together 1.14 to 1.24 times faster, d = 11-64, float32). It agrees
        with :meth:`log_prob` at the draws to rounding in the distribution's
        dtype (about ``1e-12`` in float64 and ``1e-5`` in
        float32, relative to ``1 + |log q_0|``; the float32 train's cores are
        orthogonal to float32 rounding only). Otherwise :meth:`log_prob`
        evaluates the draws, so that ``log q_0`` carries the graph to the cores.

        Parameters
        ----------
        num_samples : int
        context : ignored
        generator : torch.Generator, optional
            On the distribution's device; fixes the draw (the same draws as
            :meth:`sample` with that generator).
        """
        cores_need_gradient = torch.is_grad_enabled() and any(
            core.requires_grad for core in self.cores
        )
        if cores_need_gradient:
            z = self.sample(num_samples, generator=generator)
            return z, self.log_prob(z)
        return self._draw(num_samples, generator, with_log_prob=True)

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
        tt_rank: int | str = 8,
        n_basis: int | str = 16,
        smoothness: float | str = 0.0,
        domain=None,
        box_quantile: float = 0.0,
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
        """Fit a train to samples by penalised maximum likelihood.

        A k-means start (the sum over ``tt_rank`` clusters of products of
        root-Gaussian marginals), then Adam on the mean negative
        log-likelihood plus an optional roughness penalty (``smoothness``),
        with early stopping; ``tt_rank``, ``n_basis`` and ``smoothness`` can
        be chosen on held-out rows (``"auto"``), and the box can leave the
        most extreme rows to the Gaussian component (``box_quantile``). See
        :func:`sktt_flow.tt.fit_samples.fit_samples` for the parameters.

        Returns
        -------
        TTDistribution
            With ``training_history``
            (:class:`~sktt_flow.utils.optimize.TrainingHistory`) and
            ``selection`` (the settings used and the held-out scores behind
            any automatic choice).
        """
        from sktt_flow.tt.fit_samples import fit_samples  # the driver imports this module

        return fit_samples(
            X,
            tt_rank=tt_rank,
            n_basis=n_basis,
            smoothness=smoothness,
            domain=domain,
            box_quantile=box_quantile,
            tail_weight=tail_weight,
            max_iter=max_iter,
            batch_size=batch_size,
            learning_rate=learning_rate,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            validation=validation,
            random_state=random_state,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )

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
        known_seeds=None,
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

        TT-cross interpolates ``sqrt(h)`` on a Gauss–Legendre grid; the train
        is rounded to ``tt_rank``, normalised and checked on exact draws of
        itself. See :func:`sktt_flow.tt.fit_log_density.fit_log_density` for
        the parameters, the errors and the warnings.

        Returns
        -------
        TTDistribution
            With ``cross_report`` (:class:`~sktt_flow.tt.cross.CrossReport`).
        """
        from sktt_flow.tt.fit_log_density import fit_log_density  # it imports this module

        return fit_log_density(
            log_density,
            domain,
            n_features=n_features,
            tt_rank=tt_rank,
            n_basis=n_basis,
            tol=tol,
            max_evals=max_evals,
            max_sweeps=max_sweeps,
            batch_size=batch_size,
            n_seeds=n_seeds,
            n_seed_steps=n_seed_steps,
            known_seeds=known_seeds,
            cross_method=cross_method,
            kick_rank=kick_rank,
            patience=patience,
            n_check_samples=n_check_samples,
            min_ess=min_ess,
            resolution_tol=resolution_tol,
            max_n_basis=max_n_basis,
            tail_weight=tail_weight,
            random_state=random_state,
            device=device,
            dtype=dtype,
            verbose=verbose,
            callable_name=callable_name,
        )

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

"""Tensor-train algebra on lists of cores.

A tensor train (TT) of order ``d`` is a list of cores ``G_k`` of shape
``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``; it represents the tensor

.. math::

    C[i_1, \\dots, i_d] = G_1[:, i_1, :] \\, G_2[:, i_2, :] \\cdots G_d[:, i_d, :].

The functions here change the representation without changing ``C`` (up to an
explicit truncation), following Oseledets, "Tensor-train decomposition"
(SIAM J. Sci. Comput. 33, 2011). They accept and return plain tensors so that
they can be used on parameters, buffers and temporary copies alike; none of
them modifies its input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sktt_flow.tt.basis import coefficient_to_nodal_matrix, nodal_to_coefficient_matrix

__all__ = [
    "advance_running_product",
    "basis_core_matrices",
    "check_cores",
    "coefficients_to_nodal",
    "contract_running_product",
    "left_orthogonalize",
    "log_abs_chain_product",
    "log_norm_squared",
    "log_norm_squared_by_tree",
    "mode_energy_shares",
    "nodal_to_coefficients",
    "padded_core_matrices",
    "right_orthogonalize",
    "round_tt",
    "scale_to_unit_max",
    "shape_runs",
    "stacked_core_matrices",
    "transform_modes",
    "tt_ranks",
    "tt_svd",
    "tt_to_full",
]


#: Points up to which :func:`advance_running_product` contracts by one
#: broadcast product and a sum; beyond, by a loop of multiply-adds, which
#: reads less memory (at tt_rank 2 on 8,192 points, 1.3 times faster without
#: gradient; at 2,048 points and tt_rank 8 or 16 the two are within 10%).
BROADCAST_MAX_POINTS = 2048


def basis_core_matrices(
    cores: Sequence[torch.Tensor], basis_scale: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Cores as ``(r_{k-1} r_k, n)`` matrices: row ``(a, b)`` holds ``G_k[a, :, b]``.

    ``basis_scale`` (d, n), if given, multiplies mode ``i`` of core ``k``: the
    constants of an orthonormal basis folded into the cores, so that the basis
    itself can be the plain Legendre table.
    """
    if basis_scale is not None:
        cores = [core * basis_scale[k, None, :, None] for k, core in enumerate(cores)]
    return [core.permute(0, 2, 1).reshape(-1, core.shape[1]) for core in cores]


def advance_running_product(
    running: torch.Tensor | None,
    core_matrix: torch.Tensor,
    basis_values: torch.Tensor,
    *,
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One step of evaluating a train at ``N`` points, points along the last axis.

    ``running`` (r_{k-1}, N) holds the product of the cores before ``k`` at each
    point (``None`` before the first core, where ``r_0 = 1``); ``basis_values``
    (n, N) the basis at coordinate ``k``; ``core_matrix`` comes from
    :func:`basis_core_matrices`. Returns the product through core ``k``, shape
    (r_k, N). One GEMM gives every point's ``r_{k-1} x r_k`` core value;
    ``r_{k-1}`` multiply-adds over rows of ``N`` points, which vectorise,
    replace a batched product of tiny matrices (several times faster on a CPU,
    and 10-20% faster than one broadcast multiply and a sum).

    ``buffers``, optional (no gradient): ``(core_values, out)`` of at least
    ``(r_{k-1} r_k, N)`` and ``(r_k, N)`` rows, neither overlapping
    ``running``, that receive the core values and the result on more than
    :data:`BROADCAST_MAX_POINTS` points, the same operations in the same
    order: a caller that steps through many coordinates (the sampler) then
    allocates, and pages in, nothing per coordinate (134 MB of core values at
    rank 16 and 65,536 points).
    """
    r_left = 1 if running is None else running.shape[0]
    n_points = basis_values.shape[-1]
    use_buffers = buffers is not None and running is not None and n_points > BROADCAST_MAX_POINTS
    out = None
    if use_buffers:
        core_values, out = buffers
        values = torch.mm(core_matrix, basis_values, out=core_values[: core_matrix.shape[0]])
        values = values.view(r_left, -1, n_points)
    else:
        values = (core_matrix @ basis_values).view(r_left, -1, n_points)
    if running is None:
        return values[0]
    return contract_running_product(running, values, out=out)


def contract_running_product(
    running: torch.Tensor, core_values: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``result[b, p] = sum_a running[a, p] core_values[a, b, p]``, shape (r_k, N).

    The per-point half of :func:`advance_running_product`: ``running``
    (r_{k-1}, N) and every point's core value ``core_values`` (r_{k-1}, r_k,
    N). ``out`` (no gradient), used above :data:`BROADCAST_MAX_POINTS` points
    only, receives the result.
    """
    if core_values.shape[-1] <= BROADCAST_MAX_POINTS:
        # On few points the cost is the number of kernels, not the memory:
        # one broadcast product and one sum instead of r_{k-1} multiply-adds
        # (and under autograd, each of them a node whose backward is two more
        # products) made a training step at tt_rank 16, d = 30 and 256 rows
        # 1.6 times faster. The choice depends on the shapes only, so that
        # the same points give the same bits with and without gradient.
        return (core_values * running[:, None, :]).sum(dim=0)
    # unbind: one call for all the views instead of two indexing calls per term
    values, running = core_values.unbind(0), running.unbind(0)
    if out is not None:
        result = torch.mul(values[0], running[0], out=out[: values[0].shape[0]])
    else:
        result = values[0] * running[0]
    # A product, then an addition, term by term in order: the roundings of
    # the broadcast sum above, which adds up to 17 terms in order (more in a
    # cascade; a test holds both), so that a point's log-density is the same
    # bits whether it is evaluated with fewer or more than BROADCAST_MAX_POINTS
    # others. (TTDistribution.log_prob hands chunks of more rows only to
    # trains of ranks up to 7: LOG_PROB_CHUNK_ELEMENTS.) Fused multiply-adds
    # (addcmul_) moved float32 log-densities of a random train by up to 3e-5
    # nats between the two (d = 16, tt_rank 4), for no speed that shows: a
    # TT's log_prob on 100,000 rows took the same time within the timing
    # noise of 5% (d = 2-30, tt_rank 2 and 4).
    for a in range(1, len(running)):
        result.add_(values[a] * running[a])
    return result


def shape_runs(cores: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``(start, stop)`` of the maximal runs of consecutive cores of one shape.

    A train of uniform rank has three: the first core, the interior ones and
    the last. Functions that stack each run into one tensor do the work of all
    its cores in one kernel: on a training batch of a few hundred rows the
    cost of a train is the number of its kernels, not their arithmetic.
    """
    runs = []
    start = 0
    for stop in range(1, len(cores) + 1):
        if stop == len(cores) or cores[stop].shape != cores[start].shape:
            runs.append((start, stop))
            start = stop
    return runs


def _stack_run(cores: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Cores ``start:stop`` (all of one shape) as one (m, r_left, n, r_right) tensor."""
    if stop - start == 1:
        return cores[start].unsqueeze(0)  # a view: no copy for a run of one
    return torch.stack(list(cores[start:stop]))


def stacked_core_matrices(
    cores: Sequence[torch.Tensor], basis_scale: torch.Tensor | None = None
) -> list[tuple[int, torch.Tensor]]:
    """:func:`basis_core_matrices` stacked by runs of equal shape (:func:`shape_runs`).

    Returns ``(start, matrices)`` per run, ``matrices`` of shape
    ``(m, r_{k-1} r_k, n)`` holding those of cores ``start`` to
    ``start + m - 1``, the same numbers bit for bit: one batched product
    (:func:`torch.bmm`) then gives the core values of a whole run at once.
    """
    stacked = []
    for start, stop in shape_runs(cores):
        block = _stack_run(cores, start, stop)
        if basis_scale is not None:
            block = block * basis_scale[start:stop, None, :, None]
        n_cores, r_left, n, r_right = block.shape
        stacked.append((start, block.permute(0, 1, 3, 2).reshape(n_cores, r_left * r_right, n)))
    return stacked


def padded_core_matrices(
    core_matrices: Sequence[tuple[int, torch.Tensor]], ranks: Sequence[int]
) -> torch.Tensor:
    """The runs of :func:`stacked_core_matrices` as one ``(d, R^2, n)`` tensor.

    Every core's ``r_{k-1} x r_k`` matrices are embedded, zero-padded, in the
    top-left corner of ``R x R`` ones, ``R = max(ranks)``: the product of the
    padded matrices of a point holds the train's value in its entry
    ``(0, 0)`` (the first core fills row 0 only, the last column 0 only),
    which :func:`log_abs_chain_product` computes with one batched product per
    level of a binary tree instead of one step per coordinate.
    """
    largest = max(ranks)
    padded = []
    for start, matrices in core_matrices:
        n_cores, _, n = matrices.shape
        r_left, r_right = ranks[start], ranks[start + 1]
        block = matrices.view(n_cores, r_left, r_right, n)
        # pad the last two of the dims (r_left, r_right) of (m, r_left, r_right, n)
        block = torch.nn.functional.pad(block, (0, 0, 0, largest - r_right, 0, largest - r_left))
        padded.append(block.reshape(n_cores, largest * largest, n))
    return torch.cat(padded)


def log_abs_chain_product(factors: torch.Tensor) -> torch.Tensor:
    """``log |(F_1 F_2 ... F_d)[0, 0]|`` per point, from ``factors`` (d, N, R, R).

    The product is formed by a binary tree: adjacent factors are multiplied
    in pairs, all pairs of a level in one batched product, so a train of
    ``d`` cores costs about ``log2(d)`` levels of a dozen kernels instead of
    ``d`` steps of half a dozen, at ``R`` times the arithmetic of a running
    row vector. That trade pays where kernel launches, not arithmetic, set
    the time (a GPU on up to some 10^5 points). The factors are scaled to a
    largest entry of 1 first and every product after it; the logarithms of
    the scales are added back at the end and, as in
    :meth:`~sktt_flow.tt.distribution.TTDistribution.log_abs_tt`, are
    constants to autograd, so the result and its gradient are exact.
    """
    tiny = torch.finfo(factors.dtype).tiny

    def rescaled(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.amax(values.detach().abs(), dim=(2, 3)).clamp_min_(tiny)
        return values * scale.reciprocal()[..., None, None], scale.log().sum(dim=0)

    values, log_scale = rescaled(factors)
    while values.shape[0] > 1:
        n_pairs = values.shape[0] // 2
        product, level_log_scale = rescaled(
            torch.matmul(values[0 : 2 * n_pairs : 2], values[1 : 2 * n_pairs : 2])
        )
        log_scale = log_scale + level_log_scale
        # an odd factor out moves up a level unchanged, still last in order
        values = product if values.shape[0] % 2 == 0 else torch.cat([product, values[-1:]])
    return log_scale + torch.log(values[0, :, 0, 0].abs().clamp_min(tiny))


def check_cores(cores: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` unless ``cores`` is a valid tensor train."""
    if len(cores) == 0:
        raise ValueError("A tensor train needs at least one core.")
    previous_rank = 1
    for k, core in enumerate(cores):
        if core.ndim != 3:
            raise ValueError(
                f"Core {k} must have 3 dimensions (r_left, n, r_right), "
                f"got shape {tuple(core.shape)}."
            )
        if core.shape[0] != previous_rank:
            raise ValueError(
                f"Core {k} has left rank {core.shape[0]} but the previous core "
                f"has right rank {previous_rank}."
            )
        previous_rank = core.shape[2]
    if previous_rank != 1:
        raise ValueError(f"The last core must have right rank 1, got {previous_rank}.")


def tt_ranks(cores: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """The ranks ``(r_0, r_1, ..., r_d)``, with ``r_0 = r_d = 1``."""
    return (1, *(int(core.shape[2]) for core in cores))


def tt_to_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The full tensor ``C`` of shape ``(n_1, ..., n_d)``; for small ``d`` only."""
    full = cores[0].reshape(-1, cores[0].shape[2])
    for core in cores[1:]:
        full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
    return full.reshape([core.shape[1] for core in cores])


def _truncation_rank(singular_values: torch.Tensor, max_rank: int | None, rtol: float) -> int:
    """Smallest rank whose discarded tail has relative Frobenius norm <= rtol."""
    rank = singular_values.numel()
    if rtol > 0 and rank > 0:
        energy = singular_values.square()
        # tail[j] = sum of squared singular values from index j on
        tail = energy.flip(0).cumsum(0).flip(0)
        allowed = (rtol**2) * energy.sum()
        keep = int((tail > allowed).sum())
        rank = max(keep, 1)
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(rank, 1)


def tt_svd(
    full: torch.Tensor, max_rank: int | None = None, rtol: float = 0.0
) -> list[torch.Tensor]:
    """Decompose a full tensor into a TT by successive truncated SVDs.

    With ``max_rank=None`` and ``rtol=0`` the decomposition is exact.
    """
    shape = full.shape
    cores = []
    remainder = full.reshape(1, -1)
    rank = 1
    for n in shape[:-1]:
        remainder = remainder.reshape(rank * n, -1)
        u, s, vh = torch.linalg.svd(remainder, full_matrices=False)
        new_rank = _truncation_rank(s, max_rank, rtol)
        cores.append(u[:, :new_rank].reshape(rank, n, new_rank))
        remainder = s[:new_rank, None] * vh[:new_rank]
        rank = new_rank
    cores.append(remainder.reshape(rank, shape[-1], 1))
    return cores


def right_orthogonalize(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Equivalent TT whose cores 2 to d are right-orthogonal.

    Right-orthogonal means ``sum_{i, b} G[a, i, b] G[a', i, b] = delta_{a a'}``:
    the cores to the right of any bond contract to the identity, so the whole
    norm sits in the first core. Ranks larger than the unfolding allows shrink.
    """
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        core = cores[k]
        r_left, n, r_right = core.shape
        q, r = torch.linalg.qr(core.reshape(r_left, n * r_right).T)
        new_rank = q.shape[1]
        cores[k] = q.T.reshape(new_rank, n, r_right)
        previous = cores[k - 1]
        cores[k - 1] = (previous.reshape(-1, r_left) @ r.T).reshape(
            previous.shape[0], previous.shape[1], new_rank
        )
    return cores


def left_orthogonalize(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Equivalent TT whose cores 1 to d-1 are left-orthogonal (norm in the last)."""
    cores = list(cores)
    for k in range(len(cores) - 1):
        core = cores[k]
        r_left, n, r_right = core.shape
        q, r = torch.linalg.qr(core.reshape(r_left * n, r_right))
        new_rank = q.shape[1]
        cores[k] = q.reshape(r_left, n, new_rank)
        following = cores[k + 1]
        cores[k + 1] = (r @ following.reshape(r_right, -1)).reshape(
            new_rank, following.shape[1], following.shape[2]
        )
    return cores


def round_tt(
    cores: Sequence[torch.Tensor], max_rank: int | None = None, rtol: float = 0.0
) -> list[torch.Tensor]:
    """TT-SVD rounding: the best TT of ranks ``<= max_rank``, up to ``rtol``.

    Right-orthogonalises, then sweeps left to right with truncated SVDs. The
    result is left-orthogonal except for its last core. The relative
    Frobenius error is at most ``sqrt(d - 1)`` times the per-bond tolerance.
    """
    cores = right_orthogonalize(cores)
    for k in range(len(cores) - 1):
        core = cores[k]
        r_left, n, r_right = core.shape
        u, s, vh = torch.linalg.svd(core.reshape(r_left * n, r_right), full_matrices=False)
        new_rank = _truncation_rank(s, max_rank, rtol)
        cores[k] = u[:, :new_rank].reshape(r_left, n, new_rank)
        carry = s[:new_rank, None] * vh[:new_rank]
        following = cores[k + 1]
        cores[k + 1] = (carry @ following.reshape(r_right, -1)).reshape(
            new_rank, following.shape[1], following.shape[2]
        )
    return cores


def scale_to_unit_max(
    cores: Sequence[torch.Tensor], *, keep_within: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every core rescaled to a largest entry in ``[0.5, 1)``, and the log of what was removed.

    The train is ``exp(log_scale)`` times the returned one. Rescale before any
    norm, QR or SVD of a train built from values of unknown scale: squaring an
    entry above ``1e154`` overflows in float64 (``1e19`` in float32), and a
    norm of ``inf`` turns the normalised train into ``0/0``. The factors are
    powers of two, so the rescaling is exact and ``log_scale`` is rounded
    once. All-zero cores are left as they are. The factors are detached: the
    train is the same whatever they are, so gradients through
    ``exp(log_scale) * returned`` are exact.

    Parameters
    ----------
    cores : sequence of tensors
    keep_within : int, default=0
        Cores whose largest entry has a binary exponent of modulus at most
        ``keep_within`` (largest entry in about ``[2^-keep_within,
        2^keep_within]``) are left bit for bit as they are: rescaling cores
        already in range would only add rounding to sums of logarithms
        (measurable in float32 over 64 cores).
    """
    scaled = []
    exponents = []
    # One run of cores of one shape at a time (shape_runs): the same numbers
    # as core by core, in a few kernels per run instead of per core.
    for start, stop in shape_runs(cores):
        block = _stack_run(cores, start, stop)
        largest = block.detach().abs().amax(dim=(1, 2, 3))
        _, exponent = torch.frexp(largest)
        exponent = exponent.to(torch.int64)
        # frexp(0) has exponent 0: zero cores count as scaled by one
        exponent = torch.where(exponent.abs() <= keep_within, 0, exponent)
        scaled.extend(torch.ldexp(block, -exponent.to(block.dtype)[:, None, None, None]).unbind(0))
        exponents.append(exponent)
    total = torch.cat(exponents).sum()  # integers: exact in any order
    return scaled, total.to(cores[0].dtype) * math.log(2.0)


def mode_energy_shares(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Share of ``||C||_F^2`` at each mode index of each core, shape (d, n).

    ``shares[k, i] = ||C[..., i_k = i, ...]||_F^2 / ||C||_F^2``: for a train
    of orthonormal-basis coefficients, the share of the squared ``L^2`` norm
    of the function carried by degree ``i`` of coordinate ``k``. Computed
    gauge-invariantly: with the cores left of ``k`` left-orthogonal and those
    right of it right-orthogonal, it is the energy of core ``k``'s slice
    ``i``, summed over both bond indices. O(d n r^3). All cores need the same
    ``n``. A zero train gives NaN shares.
    """
    scaled, _ = scale_to_unit_max([core.detach() for core in cores])
    scaled = right_orthogonalize(scaled)
    shares = []
    for k, core in enumerate(scaled):
        energy = core.square().sum(dim=(0, 2))
        shares.append(energy / energy.sum())
        if k + 1 < len(scaled):
            r_left, n, r_right = core.shape
            # Move the orthogonality centre to core k + 1; the scale of R is
            # irrelevant (shares are ratios), so divide it out to stay in range.
            _, r = torch.linalg.qr(core.reshape(r_left * n, r_right))
            r = r / r.abs().amax().clamp_min(torch.finfo(r.dtype).tiny)
            following = scaled[k + 1]
            scaled[k + 1] = (r @ following.reshape(following.shape[0], -1)).reshape(
                r.shape[0], following.shape[1], following.shape[2]
            )
    return torch.stack(shares)


def log_norm_squared(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log ||C||_F^2`` by a left-to-right contraction, O(d n r^3).

    Cores with entries far from 1 are first rescaled (:func:`scale_to_unit_max`)
    and the running Gram matrix is rescaled at every step, so the result
    neither overflows nor underflows for long trains or cores of any scale.
    Differentiable in the cores.
    """
    # Entries beyond 2^16 or below 2^-16 only: the squares stay far inside even
    # float32's range, and canonical cores are not touched.
    cores, log_scale = scale_to_unit_max(cores, keep_within=16)
    gram = torch.ones(1, 1, dtype=cores[0].dtype, device=cores[0].device)
    traces = []
    for core in cores:
        r_left, n, r_right = core.shape
        # gram'[c, d] = sum_{a, b, i} G[a, i, c] gram[a, b] G[b, i, d]: two
        # products on views of the core
        left = gram.mT @ core.reshape(r_left, n * r_right)  # (b, i c)
        gram = left.reshape(r_left * n, r_right).mT @ core.reshape(r_left * n, r_right)
        # gram is positive semi-definite: its trace is its largest scale. A
        # constant to autograd: log ||C||^2 = sum log(traces) + log(gram) for
        # any positive divisors, so its gradient is that of the last term
        # alone, exactly, with no backward pass through the traces.
        trace = gram.detach().trace()
        gram = gram / trace
        traces.append(trace)
    return 2.0 * log_scale + torch.log(torch.stack(traces)).sum() + torch.log(gram.reshape(()))


def log_norm_squared_by_tree(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log ||C||_F^2`` as :func:`log_norm_squared` computes it, by a binary tree.

    ``||C||^2`` is the product of the cores' transfer matrices
    ``E_k[(a, b), (c, e)] = sum_i G_k[a, i, c] G_k[b, i, e]`` (zero-padded to
    ``R^2 x R^2``), which :func:`log_abs_chain_product` multiplies in
    ``log2(d)`` levels of batched products instead of ``d`` steps: fewer
    kernels (what a GPU's host pays for) at ``R^2`` times the arithmetic and
    ``d R^4`` numbers of memory. Differentiable in the cores; the same value
    to round-off.
    """
    cores, log_scale = scale_to_unit_max(cores, keep_within=16)
    largest = max(core.shape[2] for core in cores)
    transfers = []
    for start, stop in shape_runs(cores):
        block = _stack_run(cores, start, stop)  # (m, r_left, n, r_right)
        n_cores, r_left, _, r_right = block.shape
        block = torch.nn.functional.pad(block, (0, largest - r_right, 0, 0, 0, largest - r_left))
        transfer = torch.einsum("maic,mbie->mabce", block, block)
        transfers.append(transfer.reshape(n_cores, largest**2, largest**2))
    factors = torch.cat(transfers)[:, None]  # (d, 1, R^2, R^2)
    return 2.0 * log_scale + log_abs_chain_product(factors)[0]


def transform_modes(
    cores: Sequence[torch.Tensor], matrices: torch.Tensor | Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Apply a matrix to the mode index of every core.

    ``G_k[:, i, :] <- sum_j A_k[i, j] G_k[:, j, :]`` with ``A_k = matrices[k]``.
    """
    return [
        torch.einsum("ij,ajb->aib", matrix.to(core.dtype), core)
        for matrix, core in zip(matrices, cores, strict=True)
    ]


def nodal_to_coefficients(
    cores: Sequence[torch.Tensor], low: torch.Tensor, high: torch.Tensor
) -> list[torch.Tensor]:
    """From values at the Gauss–Legendre nodes to orthonormal Legendre coefficients.

    ``cores`` hold a function's values on the product grid of the ``n``
    Gauss–Legendre nodes of each ``[low[k], high[k]]``; the result holds the
    coefficients of its tensor-product polynomial interpolant, exactly.
    """
    n = cores[0].shape[1]
    return transform_modes(cores, nodal_to_coefficient_matrix(n, low, high))


def coefficients_to_nodal(
    cores: Sequence[torch.Tensor], low: torch.Tensor, high: torch.Tensor
) -> list[torch.Tensor]:
    """Inverse of :func:`nodal_to_coefficients`."""
    n = cores[0].shape[1]
    return transform_modes(cores, coefficient_to_nodal_matrix(n, low, high))

"""Fit a :class:`~sktt_flow.TTDistribution` to samples.

The driver of :meth:`TTDistribution.from_samples
<sktt_flow.TTDistribution.from_samples>`. The train is fitted in two stages
(Ren, Zhao, Khoo and Ying, "High-dimensional density estimation with
tensorizing flow", Res. Math. Sci. 10:30, 2023, section 3):

1. An optimisation-free start: the sum over ``tt_rank`` clusters of
   ``tt_rank``-means of products of root-Gaussian marginals, a train of rank
   ``tt_rank`` with diagonal cores (with one cluster, the rank-one start from
   the marginals of the data); see :mod:`sktt_flow.tt.estimation`.
2. Penalised maximum likelihood: Adam on the mean negative log-likelihood of
   all cores (the exact normaliser makes the problem well posed without any
   constraint on the cores), plus ``smoothness / n`` times the roughness of
   Good and Gaskins (:func:`~sktt_flow.tt.estimation.coordinate_roughness`),
   with early stopping on held-out samples and restoration of the best cores
   (:func:`~sktt_flow.utils.optimize.minimize`).

Settings asked as ``"auto"`` are chosen on the held-out rows: ``n_basis`` and
``tt_rank`` by the held-out likelihood of every candidate's start (milliseconds
each, no fit), ``smoothness`` by fits from the chosen start (:func:`_search`);
with ``tt_rank="auto"`` the fitted train is then rounded to a smaller rank
where that scores higher (:func:`_rounded`).
On more than :data:`SEARCH_MAX_ROWS` training rows the choices are made on a
random subsample of that many, and the chosen setting is then fitted once to
all rows, from the subsample's fit: a step costs the same on any number of
rows, and a pass over ten thousand rows is forty steps where the search wants
a few (:func:`_fit_on_subsample`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace

import torch

from sktt_flow.diagnostics import clearly_better
from sktt_flow.tt.algebra import round_tt
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.tt.estimation import (
    coordinate_roughness,
    degree_energy_shares,
    domain_from_samples,
    separable_mixture_cores,
)
from sktt_flow.utils.optimize import minimize, patience_in_passes
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.subnormal import subnormals_flushed
from sktt_flow.utils.validation import check_domain, check_positive_int, check_samples

__all__ = [
    "ALL_ROWS_LEARNING_RATE_FACTOR",
    "MAX_N_BASIS_ALL_ROWS",
    "N_BASIS_CANDIDATES",
    "SEARCH_FIT_MAX_STEPS",
    "SEARCH_MAX_ROWS",
    "SELECTION_STANDARD_ERRORS",
    "SMOOTHNESS_CANDIDATES",
    "SMOOTHNESS_START",
    "SUBSAMPLE_ROUNDING_STANDARD_ERRORS",
    "TT_RANK_CANDIDATES",
    "UNRESOLVED_ENERGY",
    "fit_samples",
]

#: Sizes tried by ``n_basis="auto"``, smallest first.
N_BASIS_CANDIDATES = (8, 12, 16, 24, 32)

#: Ranks tried by ``tt_rank="auto"``.
TT_RANK_CANDIDATES = (2, 4, 8, 12, 16)

#: Values tried by ``smoothness="auto"``, smallest first.
SMOOTHNESS_CANDIDATES = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0)

#: The first value tried by ``smoothness="auto"``: the choice on the real
#: datasets of the benchmarks (wine, diabetes, breast cancer, digits) was 10-300,
#: so the search starts in the middle and moves one way (on a subsample,
#: up and then down).
SMOOTHNESS_START = 30.0

#: Training rows per unit of rank below which ``tt_rank="auto"`` does not go
#: higher: the start gives every unit of rank a cluster whose means and
#: variances it estimates.
MIN_ROWS_PER_RANK = 10

#: Share of a coordinate's squared norm in its top quarter of Legendre
#: degrees above which a fitted train is unresolved along it and
#: ``n_basis="auto"`` tries the next larger size (as in the variational fit).
UNRESOLVED_ENERGY = 1e-3

#: Standard errors of the paired held-out differences within which the
#: cheapest candidate start is preferred to the best one.
SELECTION_STANDARD_ERRORS = 1.0

#: Held-out gain (nats per row) by which a fit along the penalty path or in a
#: larger basis must beat the best fit so far to replace it and go on, as the
#: ``tol`` of early stopping. A fit that keeps its start differs from it only
#: by the rounding of the canonical form, and comparing without a margin let
#: such differences buy further fits: on 8,000 rows of 30 features, three of
#: seven fits, each a third of the base's time.
MIN_IMPROVEMENT = 1e-4

#: Standard errors of the paired held-out differences by which the rounding
#: of a search's fit on a subsample (:func:`_rounded`) must beat it to
#: replace it before the fit to all rows, which can round further but not
#: grow the rank back.
SUBSAMPLE_ROUNDING_STANDARD_ERRORS = 2.0

#: Standard errors of the paired held-out differences by which the fit
#: without the penalty of a grown basis (:func:`_unpenalised`) must beat it:
#: the penalty is the held-out rows' own choice, and the few rows of a small
#: table cannot undo it. On iris (10 held-out rows) the unpenalised fit was
#: 0.04 +- 0.09 ahead there and the model 0.19 +- 0.08 nats per test row
#: behind; where it won on the checkerboard and breast cancer it was 3.9 and
#: 4.6 standard errors ahead.
UNPENALISED_STANDARD_ERRORS = 2.0

#: Training rows above which the ``"auto"`` settings are chosen on a random
#: subsample of this many (and the held-out rows likewise capped), before one
#: fit of the chosen setting to all rows from the subsample's fit. Most of a
#: step's cost does not depend on the rows (30 cores of rank 2: 30 ms for 256
#: rows or 1024), so the search costs steps, and on a subsample an epoch is
#: a few of them: on 10,000 rows of 30 features the search took 63 s of a
#: 94 s fit.
SEARCH_MAX_ROWS = 2000

#: Most optimiser steps of each fit of a search on a subsample
#: (:data:`SEARCH_MAX_ROWS`).
SEARCH_FIT_MAX_STEPS = 100

#: Largest ``n_basis`` that ``"auto"`` grows a train to after its final fit on
#: more than :data:`SEARCH_MAX_ROWS` rows. The subsample of the search cannot
#: support the resolution that all the rows can: on 50,000 rows of the
#: checkerboard it chose 32 functions, and the TT alone scored -3.582 per test
#: row, against -3.527 grown to 64 and -3.507 to 128 (a tuned KDE: -3.521).
#: A size is tried only while the train is unresolved and kept only if it
#: scores higher, so the cap costs time only where resolution pays.
MAX_N_BASIS_ALL_ROWS = 128


#: Factor of ``learning_rate`` for the fits to all rows after a search on a
#: subsample (the final fit and the larger bases after it). They go on from a
#: fitted train, and Adam's first steps move every coefficient by about the
#: learning rate whatever its gradient: on 10,000 rows of 30 features
#: (``tanh30`` of ``benchmarks/bench_fit_time.py``, seed 0) the first pass
#: at 1e-3 lowered the held-out score from -7.59 to -8.12 per row, and the
#: fit stopped five passes later at its start. The TT alone scored per test
#: row, on seeds 0, 1 and 2 (its fit's seconds):
#:
#: - factor 1: 1.15 (25 s) on seed 0;
#: - factor 0.5: 4.96, 5.55, 5.40 (75, 48, 54 s);
#: - factor 0.25: 5.29, 5.72, 5.49 (55, 59, 68 s).
#:
#: Where the search's train is far from what all the rows support, a lower
#: rate is slower: with ``feature_bounds=(-1, 1)`` (seed 1, whose search chose
#: 8 functions) the TT alone took 37, 54 and 108 s at factors 1, 0.5 and
#: 0.25, for 24.168, 24.157 and 24.151 per row. A half keeps most of the gain
#: at half the cost there. The fits of the search keep the full rate: a
#: quarter for its fits that go on from a fitted train (along the penalty
#: path, in a larger basis) lost up to 0.4 nats per test row on single
#: splits of the real tables (diabetes: 0.04 to 0.21 on all three).
ALL_ROWS_LEARNING_RATE_FACTOR = 0.5


@dataclass
class _Fit:
    """A fitted train and its log-density on each held-out row."""

    distribution: TTDistribution
    scores: torch.Tensor
    n_basis: int
    tt_rank: int
    smoothness: float

    @property
    def key(self) -> tuple[int, int, float]:
        return (self.n_basis, self.tt_rank, self.smoothness)

    @property
    def mean(self) -> float:
        return float(self.scores.mean())


@dataclass
class _MaximumLikelihood:
    """Everything that candidate fits share: rows, box, options, random stream."""

    train: torch.Tensor
    validation: torch.Tensor
    start_rows: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    roughness_scale: torch.Tensor
    tail_weight: float
    options: dict
    generator: torch.Generator
    verbose: int
    tried: dict = field(default_factory=dict)
    start_scores: dict = field(default_factory=dict)
    #: Most optimiser steps of each fit (None: ``options["max_iter"]`` passes),
    #: and whether its patience counts steps (:func:`patience_in_passes`)
    #: rather than passes: both for the fits of a search on a subsample.
    max_steps: int | None = None
    patience_in_steps: bool = False

    def subsample(self, n_rows: int) -> _MaximumLikelihood:
        """The same problem on at most ``n_rows`` random training rows and as many
        held-out rows; the box, the penalty's scales and the options are kept."""

        def rows(samples: torch.Tensor) -> torch.Tensor:
            if samples.shape[0] <= n_rows:
                return samples
            order = torch.randperm(
                samples.shape[0], generator=self.generator, device=samples.device
            )
            return samples[order[:n_rows]]

        train = rows(self.train)
        inside = ((train >= self.low) & (train <= self.high)).all(dim=1)
        return _MaximumLikelihood(
            train=train,
            validation=rows(self.validation),
            start_rows=train[inside] if int(inside.sum()) >= 2 else train,
            low=self.low,
            high=self.high,
            roughness_scale=self.roughness_scale,
            tail_weight=self.tail_weight,
            options=self.options,
            generator=self.generator,
            verbose=self.verbose,
        )

    def start(self, n_basis: int, tt_rank: int, seed: int | None = None) -> list[torch.Tensor]:
        """The optimisation-free start; from ``seed`` if given, else the shared stream."""
        generator = self.generator
        if seed is not None:
            generator = torch.Generator(device=self.train.device).manual_seed(seed)
        return separable_mixture_cores(
            self.start_rows, self.low, self.high, n_basis, tt_rank, generator
        )

    def held_out_scores(self, cores: list[torch.Tensor]) -> torch.Tensor:
        """Held-out log-densities of the train ``cores`` as they are, without fitting."""
        distribution = TTDistribution(
            cores, torch.stack([self.low, self.high], dim=1), tail_weight=self.tail_weight
        )
        with torch.no_grad():
            return distribution.log_prob(self.validation).double()

    def score_start(self, cores: list[torch.Tensor], tt_rank: int) -> torch.Tensor:
        """:meth:`held_out_scores` of a start, recorded in ``start_scores``."""
        scores = self.held_out_scores(cores)
        self.start_scores[cores[0].shape[1], tt_rank] = float(scores.mean())
        return scores

    def fit(self, cores: list[torch.Tensor], tt_rank: int, smoothness: float) -> _Fit:
        """Penalised maximum likelihood from ``cores``; the held-out scores of the best state."""
        train = self.train
        distribution = TTDistribution(
            cores, torch.stack([self.low, self.high], dim=1), tail_weight=self.tail_weight
        ).to(device=train.device, dtype=train.dtype)
        # Per row of the mean log-likelihood, as a prior on the whole sample:
        # the penalty fades as the data grow.
        weight = smoothness / train.shape[0]

        def loss(batch: torch.Tensor) -> torch.Tensor:
            value = -distribution.log_prob(batch).mean()
            if weight > 0:
                roughness = coordinate_roughness(list(distribution.cores))
                value = value + weight * (self.roughness_scale * roughness).sum()
            return value

        def held_out_log_likelihood() -> float:
            with torch.no_grad():
                return float(distribution.log_prob(self.validation).mean())

        options = dict(self.options)
        if self.patience_in_steps:
            options["n_iter_no_change"] = patience_in_passes(
                options["n_iter_no_change"], train.shape[0], options["batch_size"]
            )
        if self.max_steps is not None:
            # A budget in steps, not passes: a pass over 9,000 rows is 36.
            steps_per_pass = math.ceil(train.shape[0] / options["batch_size"])
            options["max_iter"] = min(
                options["max_iter"], math.ceil(self.max_steps / steps_per_pass)
            )
        # flushed, as the flows' maximum likelihood (fit_forward_kl)
        with subnormals_flushed():
            distribution.training_history = minimize(
                distribution,
                loss,
                train,
                score=held_out_log_likelihood,
                generator=self.generator,
                verbose=self.verbose,
                description="TT maximum likelihood",
                **options,
            )
        distribution.canonicalize_()
        with torch.no_grad():
            scores = distribution.log_prob(self.validation).double()
        result = _Fit(distribution, scores, distribution.n_basis, tt_rank, smoothness)
        self.tried[result.key] = float(scores.mean())
        if self.verbose:
            print(
                f"TT n_basis={result.n_basis}, tt_rank={tt_rank}, smoothness={smoothness:g}: "
                f"held-out {float(scores.mean()):.4f}"
            )
        return result


def _search(
    fitter: _MaximumLikelihood,
    tt_rank: int | str,
    n_basis: int | str,
    smoothness: float | str,
) -> _Fit:
    """Choose ``n_basis`` and ``tt_rank`` on the starts, then ``smoothness`` on fits.

    1. Every candidate pair gets its optimisation-free start (milliseconds
       each), scored on the held-out rows; the cheapest pair (per-step cost
       ``n_basis * tt_rank^2``) whose start is not worse than the best start
       by :data:`SELECTION_STANDARD_ERRORS` standard errors is kept.
    2. Maximum likelihood from that start (with ``smoothness="auto"``,
       penalised by :data:`SMOOTHNESS_START`).
    3. With ``smoothness="auto"``, the next larger penalties of
       :data:`SMOOTHNESS_CANDIDATES` while the held-out score rises (by more
       than :data:`MIN_IMPROVEMENT`), or, if the first larger one does not
       raise it, the next smaller ones likewise (in a search on a subsample,
       whose fits are capped, the smaller ones in any case). Each fit
       continues from the best fit so far (a path of
       penalties, as in any regularisation path: a few dozen steps instead
       of a fit from the start), and replaces it only if it scores higher on
       the held-out rows, so the returned fit is the best one tried.
    4. With ``n_basis="auto"``, larger bases while the fitted train is
       unresolved and the held-out score rises (:func:`_refine_resolution`).
    """
    max_rank = max(1, fitter.train.shape[0] // MIN_ROWS_PER_RANK)
    ranks = (
        sorted({min(rank, max_rank) for rank in TT_RANK_CANDIDATES})
        if tt_rank == "auto"
        else [tt_rank]
    )
    sizes = list(N_BASIS_CANDIDATES) if n_basis == "auto" else [n_basis]
    first_penalty = SMOOTHNESS_START if smoothness == "auto" else float(smoothness)
    pairs = [(size, rank) for size in sizes for rank in ranks]
    if len(pairs) == 1:
        ((size, rank),) = pairs
        start = fitter.start(size, rank)
    else:
        # Each start from its own seed, so that the chosen one can be rebuilt
        # instead of keeping every candidate's cores.
        seeds = {
            pair: int(
                torch.randint(
                    2**62, (1,), generator=fitter.generator, device=fitter.generator.device
                )
            )
            for pair in pairs
        }
        scores = {
            pair: fitter.score_start(fitter.start(*pair, seed=seeds[pair]), pair[1])
            for pair in pairs
        }
        best_pair = max(scores, key=lambda pair: float(scores[pair].mean()))
        size, rank = min(
            (
                pair
                for pair in pairs
                if not clearly_better(scores[best_pair], scores[pair], SELECTION_STANDARD_ERRORS)
            ),
            key=lambda pair: (pair[0] * pair[1] ** 2, pair),
        )
        start = fitter.start(size, rank, seed=seeds[size, rank])
    best = fitter.fit(start, rank, first_penalty)
    if smoothness == "auto":
        # The penalty that scores best on the held-out rows, as in any
        # cross-validation of a regulariser: no penalty is not cheaper, so no
        # margin.
        larger = [penalty for penalty in SMOOTHNESS_CANDIDATES if penalty > first_penalty]
        smaller = [penalty for penalty in SMOOTHNESS_CANDIDATES if penalty < first_penalty]
        for direction in (larger, smaller[::-1]):
            moved = False
            for penalty in direction:
                cores = [core.detach().clone() for core in best.distribution.cores]
                candidate = fitter.fit(cores, rank, penalty)
                if candidate.mean <= best.mean + MIN_IMPROVEMENT:
                    break
                best, moved = candidate, True
            # A fit of the path goes on from the best fit so far; where the
            # fits are capped at a number of steps (a search on a subsample),
            # a larger penalty can win by its extra steps alone, so the
            # smaller ones are tried too: on 9,000 rows of tanh30 one random
            # stream went from 30 to 100 that way and never tried 10 or 0,
            # which five other streams chose, and its TT alone scored -6.58
            # per test row against -2.98 to -3.32 (-3.41 going both ways).
            # Uncapped fits stop on their own, and going both ways there cost
            # the digits 0.02 and diabetes 0.08 nats per test row on average.
            if moved and fitter.max_steps is None:
                break
    if n_basis == "auto":
        best = _refine_resolution(fitter, best, rank, rechoose_smoothness=smoothness == "auto")
    return best


def _rounded(fitter: _MaximumLikelihood, best: _Fit, standard_errors: float | None = None) -> _Fit:
    """The fitted train or its rounding to a smaller rank, whichever scores
    best on the held-out rows.

    TT-SVD rounding (:func:`~sktt_flow.tt.algebra.round_tt`) to each rank of
    :data:`TT_RANK_CANDIDATES` below the train's keeps the best approximation
    of ``sqrt(p)`` in that rank (in L2, which bounds the Hellinger distance)
    and drops the directions of the smallest singular values, where a fit by
    maximum likelihood puts what it learns from the noise of the training
    rows. A rounded train replaces the fitted one only if it scores higher
    by more than :data:`MIN_IMPROVEMENT` (and, with ``standard_errors``, by
    that many standard errors of the paired differences); each costs a few
    SVDs of ``(r n, r)`` matrices and one held-out evaluation, no fit.
    """
    fitted_rank = max(best.distribution.tt_ranks)
    cores = [core.detach().double() for core in best.distribution.cores]
    for rank in sorted(rank for rank in TT_RANK_CANDIDATES if rank < fitted_rank):
        rounded = [
            core.to(best.distribution.cores[0].dtype) for core in round_tt(cores, max_rank=rank)
        ]
        scores = fitter.held_out_scores(rounded)
        fitter.tried[best.n_basis, rank, best.smoothness] = float(scores.mean())
        if fitter.verbose:
            print(
                f"TT n_basis={best.n_basis}, rounded to tt_rank={rank}: "
                f"held-out {float(scores.mean()):.4f}"
            )
        if float(scores.mean()) > best.mean + MIN_IMPROVEMENT and (
            standard_errors is None or clearly_better(scores, best.scores, standard_errors)
        ):
            distribution = TTDistribution(
                rounded,
                best.distribution.domain,
                tail_weight=best.distribution.tail_weight,
            ).canonicalize_()
            distribution.training_history = best.distribution.training_history
            best = _Fit(distribution, scores, best.n_basis, rank, best.smoothness)
    return best


def _unresolved(cores: list[torch.Tensor]) -> bool:
    """Whether a coordinate keeps more than :data:`UNRESOLVED_ENERGY` of the
    squared norm in its top quarter of Legendre degrees."""
    with torch.no_grad():
        shares = degree_energy_shares([core.detach() for core in cores])
    top = max(1, shares.shape[1] // 4)
    return bool(shares[:, -top:].sum(dim=1).max() > UNRESOLVED_ENERGY)


def _padded(cores: list[torch.Tensor], n_basis: int) -> list[torch.Tensor]:
    """The same function in a larger basis: zero coefficients at the new degrees."""
    return [
        torch.nn.functional.pad(core.detach(), (0, 0, 0, n_basis - core.shape[1]))
        for core in cores
    ]


def _refine_resolution(
    fitter: _MaximumLikelihood,
    best: _Fit,
    rank: int,
    max_n_basis: int | None = None,
    *,
    rechoose_smoothness: bool = False,
) -> _Fit:
    """Grow ``n_basis`` while the fitted train is unresolved and the held-out
    score rises.

    The starts that choose ``n_basis`` are smooth (Gaussian clusters), so
    their held-out scores hardly tell 12 functions from 32 on a density with
    sharp edges (the checkerboard: -2.0705 against -2.083). The fitted train
    does tell: where a coordinate keeps its energy in the highest degrees
    (the resolution check of the variational fit), the fit continues in the
    smallest basis of :data:`N_BASIS_CANDIDATES` at least twice as large (or
    the largest) from the same function
    (zero coefficients at the new degrees), with the chosen penalty, and is
    kept if it scores higher on the held-out rows. Beyond the list the size
    doubles, up to ``max_n_basis`` (default: the largest candidate).

    With ``rechoose_smoothness`` (the penalty was chosen on the held-out
    rows, ``smoothness="auto"``), a basis that grew under a penalty is then
    fitted without it as well (:func:`_unpenalised`); where that fit is
    kept, the basis goes on growing from it, unpenalised.
    """
    if max_n_basis is None:
        max_n_basis = max(N_BASIS_CANDIDATES)
    grown = _grown(fitter, best, rank, max_n_basis)
    if rechoose_smoothness and grown.n_basis > best.n_basis and grown.smoothness > 0:
        unpenalised = _unpenalised(fitter, grown)
        if unpenalised is not grown:
            return _grown(fitter, unpenalised, rank, max_n_basis)
    return grown


def _grown(fitter: _MaximumLikelihood, best: _Fit, rank: int, max_n_basis: int) -> _Fit:
    """The growth of :func:`_refine_resolution`, at ``best``'s penalty."""
    while best.n_basis < max_n_basis and _unresolved(list(best.distribution.cores)):
        # At least doubling: every size tried is a fit, and a train short of
        # resolution is usually short by more than one step of the list (30
        # whitened features squashed by tanh went 8 -> 12 -> 16 -> 24 -> 32,
        # each step a gain).
        larger = [size for size in N_BASIS_CANDIDATES if size >= 2 * best.n_basis]
        size = min(min(larger) if larger else 2 * best.n_basis, max_n_basis)
        candidate = fitter.fit(_padded(list(best.distribution.cores), size), rank, best.smoothness)
        if candidate.mean <= best.mean + MIN_IMPROVEMENT:
            break
        best = candidate
    return best


def _unpenalised(fitter: _MaximumLikelihood, best: _Fit) -> _Fit:
    """``best``, or the unpenalised fit from it where that scores higher on
    the held-out rows by more than :data:`MIN_IMPROVEMENT` and
    :data:`UNPENALISED_STANDARD_ERRORS` paired standard errors.

    A penalty chosen at a small basis is no longer chosen once the basis has
    grown: the penalty weighs degree ``j`` by ``j (j + 1)``
    (:func:`~sktt_flow.tt.estimation.coordinate_roughness`), so the degrees
    added weigh many times more than those it was chosen on, and they are
    the degrees the growth was for. On the checkerboard (uniform on squares:
    its edges need the high degrees; split 0 of ``bench_density.py``) the
    held-out rows chose a penalty of 10 at 12 functions and the basis then
    grew to 128 under it; the fit without it from there scored -1.826 per
    held-out row instead of -1.854 (+0.028 +- 0.007), and the model 0.019 +-
    0.002 nats per test row higher. The fit draws from a copy of the stream
    (the numbers the next fit would draw), so that where the penalised fit is
    kept, everything after this step is what it was without it, to the bit.
    """
    stream = torch.Generator(device=fitter.generator.device)
    stream.set_state(fitter.generator.get_state())
    cores = [core.detach().clone() for core in best.distribution.cores]
    candidate = replace(fitter, generator=stream).fit(cores, best.tt_rank, 0.0)
    if candidate.mean > best.mean + MIN_IMPROVEMENT and clearly_better(
        candidate.scores, best.scores, UNPENALISED_STANDARD_ERRORS
    ):
        return candidate
    return best


def _fit_on_subsample(
    fitter: _MaximumLikelihood,
    tt_rank: int | str,
    n_basis: int | str,
    smoothness: float | str,
) -> tuple[_Fit, _MaximumLikelihood]:
    """:func:`_search` on at most :data:`SEARCH_MAX_ROWS` training rows, each
    fit at most :data:`SEARCH_FIT_MAX_STEPS` steps with its patience counted
    in steps (with ``tt_rank="auto"`` its fit then rounded, :func:`_rounded`),
    then the chosen setting fitted to all of them as any fit is
    (patience in passes, at most ``max_iter`` of them), at
    :data:`ALL_ROWS_LEARNING_RATE_FACTOR` times the learning rate. With
    ``n_basis`` "auto" the basis then grows on all the rows as in the search
    (:func:`_refine_resolution`), up to :data:`MAX_N_BASIS_ALL_ROWS`, at the
    same rate.

    The final fit starts from the subsample's best fit, or from the start of
    the chosen setting on all the rows where that scores higher on the
    held-out rows, and keeps its own best state there, so it ends no worse
    than both. The penalty weighs ``smoothness / n`` per row of the mean
    log-likelihood, a prior on the whole sample, so the chosen
    ``smoothness`` keeps its meaning on all rows (its weight per row falls
    as the data grow; on 10,000 rows of 30 features the final fit scored
    within 0.04 nats with the chosen 100, with 10 and with 0).

    Returns the final fit and the fitter of the search, whose ``tried`` and
    ``start_scores`` are the scores behind the choice.
    """
    searcher = fitter.subsample(SEARCH_MAX_ROWS)
    searcher.max_steps = SEARCH_FIT_MAX_STEPS
    searcher.patience_in_steps = True
    chosen = _search(searcher, tt_rank, n_basis, smoothness)
    if tt_rank == "auto" and fitter.options["max_iter"] > 0:
        # The fits to all rows go on from the rank the subsample supports
        # where it clearly supports less: on tanh30 (seeds 0-2) the search's
        # rank-16 fit rounded to 8 scored 2.0-2.5 nats per held-out row
        # higher, and the model 0.24-1.11 nats per test row higher, in 70-100
        # s instead of 106-192. Clearly, as the fits to all rows can round
        # further but not grow the rank back: rounding wherever the
        # subsample's rows scored higher cost the moons 0.005 and 0.007 nats
        # per test row on two splits of three.
        chosen = _rounded(searcher, chosen, SUBSAMPLE_ROUNDING_STANDARD_ERRORS)
    cores = [core.detach().clone() for core in chosen.distribution.cores]
    # The subsample's fit can be worse on all the held-out rows than the start
    # of the same setting from all the rows: on eight separated Gaussians the
    # start is nearly the truth and 2,000 rows only overfit it (-1.507 per
    # held-out row against -1.481). The final fit goes on from the better.
    start = fitter.start(chosen.n_basis, chosen.tt_rank)
    if fitter.held_out_scores(start).mean() > fitter.held_out_scores(cores).mean():
        cores = start
    # The same problem and records (``tried`` is shared), at a lower rate.
    fitter = replace(
        fitter,
        options={
            **fitter.options,
            "learning_rate": fitter.options["learning_rate"] * ALL_ROWS_LEARNING_RATE_FACTOR,
        },
    )
    # Uncapped, with its patience in passes: a final fit capped at 200 steps
    # lost 0.02 to 0.06 nats per test row on 10,000 rows of 30 correlated
    # features and 0.006 on 50,000 moons rows; as any other fit it gained
    # 0.03 and 0.0006 over the search on all rows, in about twice the time.
    final = fitter.fit(cores, chosen.tt_rank, chosen.smoothness)
    if n_basis == "auto":
        final = _refine_resolution(
            fitter,
            final,
            chosen.tt_rank,
            MAX_N_BASIS_ALL_ROWS,
            rechoose_smoothness=smoothness == "auto",
        )
    return final, searcher


def fit_samples(
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

    First an optimisation-free start: the sum over ``tt_rank`` clusters of
    products of root-Gaussian marginals (with one cluster, the rank-one
    start from the marginals); then Adam on the mean negative
    log-likelihood of all cores plus a roughness penalty, with early
    stopping on a held-out fraction and restoration of the best cores
    (:mod:`sktt_flow.tt.estimation`). Settings given as ``"auto"`` are
    chosen on the held-out rows.

    Parameters
    ----------
    X : array-like or tensor of shape (n_samples, n_features)
        Samples; at least 2, all finite. Fit in standardised coordinates
        for best results: the estimator does that for you.
    tt_rank : int or "auto", default=8
        Maximum bond rank (capped at what each unfolding allows). ``"auto"``
        chooses among :data:`TT_RANK_CANDIDATES`, capped at one unit of rank
        per :data:`MIN_ROWS_PER_RANK` training rows, by the starts; the
        fitted train is then rounded (TT-SVD) to each smaller candidate rank
        and replaced by the rounding that scores highest on the held-out
        rows, if one scores higher than it (after a search on a subsample,
        the search's fit before the fit to all rows, and that fit).
    n_basis : int or "auto", default=16
        Legendre functions per coordinate. ``"auto"`` chooses among
        :data:`N_BASIS_CANDIDATES`, and grows the fitted train's basis while
        a coordinate keeps more than :data:`UNRESOLVED_ENERGY` of its energy
        in its top quarter of degrees and the held-out score rises (on more
        than :data:`SEARCH_MAX_ROWS` training rows, once more after the final
        fit to all of them, up to :data:`MAX_N_BASIS_ALL_ROWS`).
    smoothness : float >= 0 or "auto", default=0.0
        Weight ``lambda`` of the roughness penalty: the loss is the mean
        negative log-likelihood plus ``(lambda / n) sum_k (sigma_k / h_k)^2
        R_k``, with ``R_k`` the roughness of ``sqrt(p)`` along coordinate
        ``k`` on the reference interval
        (:func:`~sktt_flow.tt.estimation.coordinate_roughness`: the energy of
        degree ``j`` weighs ``j (j + 1)``), ``h_k`` the half-width of the box,
        ``sigma_k`` the standard deviation of the training rows in the box
        and ``n`` their number. Each term is about ``sigma_k^2`` times a
        quarter of the Fisher information of ``p`` along ``k`` (a quarter for
        a Gaussian coordinate), whatever the units and the box; dividing by
        ``n`` makes ``lambda`` weigh like a prior on the whole sample, whose
        effect fades as the data grow. ``"auto"`` starts at
        :data:`SMOOTHNESS_START` and moves along
        :data:`SMOOTHNESS_CANDIDATES` while the held-out score rises, one
        way (in a search on a subsample, up and then down).
    domain : array-like of shape (n_features, 2), optional
        The box. By default it is computed from ``X``
        (:func:`~sktt_flow.tt.estimation.domain_from_samples`): the
        bounding box, or the quantile box of ``box_quantile``, widened by
        10% of its width on each side.
    box_quantile : float in [0, 0.5), default=0.0
        With no ``domain``, the box of each coordinate runs from the
        ``box_quantile`` to the ``1 - box_quantile`` quantile of ``X``
        (before the 10% margin): ``0`` is the bounding box; ``0.001`` leaves
        a far outlier to the Gaussian component instead of stretching its
        coordinate's interval.
    tail_weight : float, default=1e-3
        Weight of the Gaussian full-support component (see
        :class:`~sktt_flow.TTDistribution`); it is what held-out and
        training rows outside the box score.
    max_iter : int, default=300
        Maximum number of epochs of maximum likelihood per fit (0: the
        start only). After a search on a subsample (more than
        :data:`SEARCH_MAX_ROWS` training rows and a setting ``"auto"``),
        each fit of the search makes at most :data:`SEARCH_FIT_MAX_STEPS`
        optimiser steps.
    batch_size : int, default=512
    learning_rate : float, default=1e-3
        Adam's initial step size; halved whenever the held-out score
        stalls for half of ``n_iter_no_change`` epochs. The fits to all rows
        after a search on a subsample, which go on from a fitted train, start
        at :data:`ALL_ROWS_LEARNING_RATE_FACTOR` times it.
    validation_fraction : float, default=0.1
        Held-out fraction for early stopping and the automatic choices, in
        [0, 1); 0 uses the training log-likelihood instead (then no choice
        is ``"auto"``).
    n_iter_no_change : int, default=20
        Epochs without improvement of the held-out log-likelihood before
        stopping (for the fits of a search on a subsample, units of 10
        optimiser steps in whole epochs:
        :func:`~sktt_flow.utils.optimize.patience_in_passes`).
    validation : array-like or tensor of shape (n_validation, n_features), optional
        Held-out samples for early stopping and the automatic choices. When
        given, all of ``X`` is trained on and ``validation_fraction`` is
        ignored (the estimator uses this to share one split between the
        base and the flow).
    random_state : int, RandomState, Generator or None
        Fixes the split, the clustering and the mini-batches.
    device : torch device or str, optional
        Where the train lives and is fitted (default: CPU, or the device
        of ``X`` when it is a tensor).
    dtype : torch.dtype, default=torch.float64
    verbose : int, default=0
        1 shows a progress bar and the held-out score of every candidate.

    Returns
    -------
    TTDistribution
        With ``training_history``
        (:class:`~sktt_flow.utils.optimize.TrainingHistory` of the last fit
        of the returned train) and ``selection``: a dict with the
        ``"tt_rank"``, ``"n_basis"`` and ``"smoothness"`` used and
        ``"scores"``, the mean held-out log-likelihood of every
        ``(n_basis, tt_rank, smoothness)`` fitted or rounded to (after a
        search on a subsample, the fits and roundings of the search on its
        held-out rows, and for the chosen setting the fit to all rows, the
        returned train), and
        ``"start_scores"``, that of every ``(n_basis, tt_rank)`` start.

    See Also
    --------
    sktt_flow.TTDistribution.from_samples : The same, as a classmethod.
    """
    for name, value, minimum in (
        ("tt_rank", tt_rank, 1),
        ("n_basis", n_basis, 1),
    ):
        if value != "auto":
            check_positive_int(value, name, minimum)
    for name, value, minimum in (
        ("batch_size", batch_size, 1),
        ("max_iter", max_iter, 0),
        ("n_iter_no_change", n_iter_no_change, 1),
    ):
        check_positive_int(value, name, minimum)
    if smoothness != "auto" and not (
        isinstance(smoothness, numbers.Real)
        and not isinstance(smoothness, bool)
        and math.isfinite(smoothness)
        and smoothness >= 0
    ):
        raise ValueError(f'smoothness must be a float >= 0 or "auto", got {smoothness!r}.')
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    if not (isinstance(box_quantile, numbers.Real) and 0.0 <= box_quantile < 0.5):
        raise ValueError(f"box_quantile must be in [0, 0.5), got {box_quantile!r}.")
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) else "cpu"
    X = check_samples(X, dtype=dtype, device=device)
    generator = torch_generator(random_state, X.device)
    if domain is None:
        low, high = domain_from_samples(X, quantile=float(box_quantile))
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
        automatic = [
            name
            for name, value in zip(
                ("tt_rank", "n_basis", "smoothness"), (tt_rank, n_basis, smoothness), strict=True
            )
            if value == "auto"
        ]
        if automatic and not n_validation:
            raise ValueError(
                f'{" and ".join(automatic)}="auto" chooses on held-out rows: give '
                "validation or a positive validation_fraction."
            )
        order = torch.randperm(X.shape[0], generator=generator, device=X.device)
        train = X[order[n_validation:]]
        validation = X[order[:n_validation]] if n_validation else train
    # Rows outside the box are the Gaussian component's: they would pull the
    # clusters of the start towards where the train is zero.
    inside = ((train >= low) & (train <= high)).all(dim=1)
    start_rows = train[inside] if int(inside.sum()) >= 2 else train
    # The roughness in the units of the box's reference interval, times
    # (sigma / half-width)^2: about sigma^2 times a quarter of the Fisher
    # information in the data's units, a quarter for a Gaussian coordinate,
    # whatever the units and the box (a box stretched by a heavy tail must not
    # make the penalty stronger).
    half_width = (high - low) / 2.0
    spread = start_rows.std(dim=0) if start_rows.shape[0] > 1 else half_width
    spread = torch.where(spread > 0, spread, half_width)
    roughness_scale = (spread / half_width).square()
    fitter = _MaximumLikelihood(
        train=train,
        validation=validation,
        start_rows=start_rows,
        low=low,
        high=high,
        roughness_scale=roughness_scale,
        tail_weight=tail_weight,
        options={
            "max_iter": max_iter,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "n_iter_no_change": n_iter_no_change,
        },
        generator=generator,
        verbose=verbose,
    )
    searcher = fitter
    if "auto" in (tt_rank, n_basis, smoothness) and train.shape[0] > SEARCH_MAX_ROWS:
        best, searcher = _fit_on_subsample(fitter, tt_rank, n_basis, smoothness)
    else:
        best = _search(fitter, tt_rank, n_basis, smoothness)
    if tt_rank == "auto" and max_iter > 0:
        best = _rounded(fitter, best)
    distribution = best.distribution
    distribution.selection = {
        "tt_rank": best.tt_rank,
        "n_basis": best.n_basis,
        "smoothness": best.smoothness,
        # After a search on a subsample, the chosen setting's entry is the
        # score of its fit to all rows, the returned train's.
        "scores": {**searcher.tried, **fitter.tried},
        "start_scores": dict(searcher.start_scores),
    }
    return distribution

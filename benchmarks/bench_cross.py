"""TT-cross next to two peers: evaluations, seconds and quality on the same targets.

For every target (Ginzburg–Landau chains and Gaussian mixtures with known
``log Z`` and mode masses) three methods approximate the same density on the
same box, with the same Legendre order (grid size) and maximum TT rank:

``ours``
    :meth:`sktt_flow.TTDistribution.from_log_density` (TT-cross of ``sqrt(h)``
    seeded by gradient ascents) with its defaults (``tol=1e-4``,
    ``max_sweeps=10``, and whatever seeding and cross method the checkout
    defaults to: the metadata records the version), plus ``ours-two-site``
    (``cross_method="two-site"``, rank-adaptive DMRG-cross) and ``ours-cheap``
    (``n_seeds=64, n_seed_steps=20``).
``teneva``
    ``teneva.cross`` (one-site maxvol cross, fixed rank: ``dr_max=0`` with a
    random rank-``r`` start) on the same Gauss–Legendre grid, approximating
    ``exp((log h - c) / 2)``. The shift ``c`` is the largest ``log h`` found by
    a black-box search on the grid (2,000 random grid points, then two passes
    of coordinate-wise search from the best one), counted as evaluations. It
    stops when the relative change between two full sweeps is below ``tol`` or
    after 5 full sweeps (= 10 half-sweeps, our ``max_sweeps``). Its nodal cores
    become a :class:`~sktt_flow.TTDistribution` through
    ``nodal_to_coefficients``, ``round_tt`` and ``tail_weight=1e-9``, so that
    it is sampled and scored by the same code as ours.
``dirt``
    deep-tensor-py's single-layer DIRT (squared TT with exact inverse
    Rosenblatt sampling): uniform reference mapped onto the box,
    ``Legendre(order=n_basis - 1)``, AMEn cross with ``kick_rank=2`` and
    ``max_rank = tt_rank - 2`` (so ranks stay at most ``tt_rank``), stopping
    when its L2 or core-change error is below ``tol`` or after 10 ALS sweeps,
    or (our cap, to keep the run short) after the sweep that passes
    ``--dirt-max-evals`` evaluations. Its samples and log-densities are its own.

Every method's target evaluations are counted by a wrapper around
``target.log_prob`` (for ours it equals ``cross_report.n_evaluations``). Quality
is measured like ``importance_diagnostics`` in ``tests/tt/test_cross.py``:
``--n-samples`` draws from the approximation ``q`` (20,000 by default), log
weights ``log h - log q``, the estimate of ``log Z``, reverse KL
``log Z - ELBO``, normalised ESS and the fraction of draws per mode. The
Hellinger distance to the target is estimated on exact target samples (which
no method sees). Sampling and log-density throughputs are timed on the same
draws.

Usage (from the repository root)::

    python benchmarks/bench_cross.py            # full run, ~15 min on 2 CPU cores
    python benchmarks/bench_cross.py --quick    # smoke test, < 2 min

Writes ``cross_cpu.json`` (metadata and every number) and ``cross_cpu.md``
(Markdown table) into ``--output`` (default ``benchmarks/results/``); with
``--quick`` the names end in ``_quick``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    cpu_name,
    git_commit,
    header_rule,
    json_safe,
    load_average,
    package_version,
    source_digest,
    write_atomically,
)

import sktt_flow
from sktt_flow import TTDistribution
from sktt_flow.targets import GinzburgLandau1D, MixtureOfGaussians, Target
from sktt_flow.tt.algebra import nodal_to_coefficients, round_tt
from sktt_flow.tt.basis import gauss_legendre

#: Relative error target shared by all methods (``from_log_density``'s default).
TOL = 1e-4
#: Half-sweeps of ours (``from_log_density``'s default); teneva gets half as
#: many full sweeps, DIRT as many ALS sweeps.
MAX_HALF_SWEEPS = 10
SEED = 0
#: A mode counts as missed when it gets less than this fraction of its weight.
MISSED_FRACTION = 0.1
METHODS = ("ours", "ours-two-site", "ours-cheap", "teneva", "dirt")
#: Extra keyword arguments of ``from_log_density`` per variant of ours.
OURS_OPTIONS: dict[str, dict[str, Any]] = {
    "ours": {},
    "ours-two-site": {"cross_method": "two-site"},
    "ours-cheap": {"n_seeds": 64, "n_seed_steps": 20},
}
#: A draw with ``log q - log p`` above this (q more than e^10 times p) is
#: counted as spurious mass, where q puts probability the target does not.
SPURIOUS_LOG_RATIO = 10.0


# ------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Case:
    """One target with the box, grid size and maximum rank all methods use."""

    name: str
    factory: Callable[[], Target]
    domain: Callable[[Target], np.ndarray]
    n_basis: int
    tt_rank: int
    note: str = ""
    #: Other ``(n_basis, tt_rank)`` tried for ours alone (default method), as
    #: evidence for the choice; reported in a table of their own.
    alternatives: tuple[tuple[int, int], ...] = ()


def _box(low: float, high: float) -> Callable[[Target], np.ndarray]:
    """A cube ``[low, high]^d`` for a target of any dimension."""
    return lambda target: np.tile([low, high], (target.n_features, 1)).astype(np.float64)


def _own_domain(target: Target) -> np.ndarray:
    """The target's suggested box."""
    return target.domain


def make_cases(quick: bool) -> list[Case]:
    """The targets of the run (``quick``: the two cheapest)."""
    cases = [
        Case("GinzburgLandau1D(16)", lambda: GinzburgLandau1D(16), _box(-2.5, 2.5), 24, 8),
        Case("GinzburgLandau1D(32)", lambda: GinzburgLandau1D(32), _box(-2.5, 2.5), 24, 8),
        Case("GinzburgLandau1D(50)", lambda: GinzburgLandau1D(50), _box(-2.5, 2.5), 24, 8),
        Case(
            "MoG random_modes(8, 8)",
            lambda: MixtureOfGaussians.random_modes(8, 8, low=-4, high=4, std=0.5, seed=0),
            _box(-6.0, 6.0),
            32,
            8,
        ),
        Case(
            "MoG paper_30d_5mode",
            MixtureOfGaussians.paper_30d_5mode,
            _own_domain,
            64,
            16,
            note=(
                "n_basis=64, tt_rank=16: the +-0.95 correlated modes are 0.045 wide across "
                "the diagonal of the last two coordinates, so the grid must be fine and "
                "the last bond's rank high; the table of ours at other sizes shows what "
                "other choices give (larger ranks would push teneva and DIRT past the "
                "time budget)"
            ),
            alternatives=((32, 8), (64, 8), (48, 16), (64, 24)),
        ),
    ]
    if quick:
        return [cases[0], cases[3]]
    return cases


# ------------------------------------------------------------------ counting
class CountingLogDensity:
    """``target.log_prob`` that counts the points it is called on."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.n_evaluations = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_evaluations += int(x.shape[0])
        return self.target.log_prob(x)


# ----------------------------------------------------------------- results
@dataclass
class Result:
    """Everything measured for one (target, method)."""

    target: str
    method: str
    status: str = "ok"  # "ok", "capped" (stopped by a budget) or "failed"
    error: str | None = None
    n_evaluations: int | None = None
    build_seconds: float | None = None
    converged: bool | None = None
    stop_reason: str | None = None
    sweeps: int | None = None
    ranks: list[int] | None = None
    own_held_out_error: float | None = None
    own_held_out_error_kind: str | None = None
    hellinger: float | None = None
    ess: float | None = None
    reverse_kl: float | None = None
    log_z_estimate: float | None = None
    log_z_true: float | None = None
    log_z_abs_error: float | None = None
    spurious_fraction: float | None = None
    mode_masses: list[float] | None = None
    mode_truth: list[float] | None = None
    max_mode_deviation: float | None = None
    modes_missed: int | None = None
    n_samples: int | None = None
    sample_rate: float | None = None
    log_prob_rate: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Fitted:
    """A built approximation: how to draw from it and score points under it."""

    sample: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]
    log_prob: Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------- ours
def fit_ours(case: Case, target: Target, result: Result, options: dict[str, Any]) -> Fitted:
    """``TTDistribution.from_log_density`` with defaults updated by ``options``."""
    counter = CountingLogDensity(target)
    start = time.perf_counter()
    base = TTDistribution.from_log_density(
        counter,
        case.domain(target),
        tt_rank=case.tt_rank,
        n_basis=case.n_basis,
        random_state=SEED,
        **options,
    )
    result.build_seconds = time.perf_counter() - start
    report = base.cross_report
    result.n_evaluations = counter.n_evaluations
    if report.n_evaluations != counter.n_evaluations:
        result.notes.append(
            f"cross_report.n_evaluations={report.n_evaluations} differs from the wrapper count"
        )
    result.converged = report.converged
    result.stop_reason = report.stop_reason
    result.sweeps = report.n_sweeps
    result.ranks = list(base.tt_ranks)
    result.own_held_out_error = report.error_history[-1]
    result.own_held_out_error_kind = "cross held-out (1000 grid pts, half near seeds)"
    result.notes.append(f"held-out error per half-sweep: {_short(report.error_history)}")
    return tt_fitted(base)


def tt_fitted(base: TTDistribution) -> Fitted:
    """Draws and log-densities of a :class:`TTDistribution` (as the tests take them)."""

    def sample(n: int, seed: int) -> tuple[torch.Tensor, None]:
        return base.sample(n, generator=torch.Generator().manual_seed(seed)), None

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return base.log_prob(x)

    return Fitted(sample, log_prob)


def _short(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.1e}" for value in values) + "]"


# ----------------------------------------------------------------- teneva
def grid_log_density(
    counter: CountingLogDensity, nodes: torch.Tensor
) -> Callable[[np.ndarray], np.ndarray]:
    """``log h`` at integer multi-indices (m, d) of the grid ``nodes`` (d, n)."""

    def evaluate(indices: np.ndarray) -> np.ndarray:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        points = torch.gather(nodes, 1, index.T).T
        with torch.no_grad():
            return counter(points).numpy()

    return evaluate


def find_shift(
    log_h: Callable[[np.ndarray], np.ndarray],
    n: int,
    d: int,
    rng: np.random.Generator,
    n_random: int = 2000,
    n_passes: int = 2,
) -> float:
    """A large ``log h`` on the grid, without gradients.

    The best of ``n_random`` random grid points, improved by ``n_passes``
    passes of coordinate-wise search (all ``n`` values of one coordinate at a
    time). The maximum over random points alone can sit tens of nats below the
    modes, and ``exp((log h - c) / 2)`` then overflows teneva's norms at
    d = 50.
    """
    indices = rng.integers(0, n, size=(n_random, d))
    values = log_h(indices)
    best = indices[int(np.argmax(values))].copy()
    shift = float(np.max(values))
    for _ in range(n_passes):
        for k in range(d):
            candidates = np.repeat(best[None], n, axis=0)
            candidates[:, k] = np.arange(n)
            values = log_h(candidates)
            j = int(np.argmax(values))
            if values[j] > shift:
                shift, best = float(values[j]), candidates[j].copy()
    return shift


def fit_teneva(case: Case, target: Target, result: Result) -> Fitted:
    """teneva's fixed-rank cross on our grid, turned into a ``TTDistribution``."""
    import teneva

    counter = CountingLogDensity(target)
    domain = case.domain(target)
    d, n, rank = target.n_features, case.n_basis, case.tt_rank
    low, high = torch.as_tensor(domain[:, 0]), torch.as_tensor(domain[:, 1])
    nodes, _ = gauss_legendre(n, low, high)
    log_h = grid_log_density(counter, nodes)
    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    shift = find_shift(log_h, n, d, rng)

    def root(indices: np.ndarray) -> np.ndarray:
        return np.exp((log_h(indices) - shift) / 2.0)

    validation = rng.integers(0, n, size=(1000, d))
    validation_values = root(validation)
    info: dict[str, Any] = {}
    # Its validation error is 0/0 when every validation value underflows.
    with np.errstate(divide="ignore", invalid="ignore"):
        cores = teneva.cross(
            root,
            teneva.rand([n] * d, rank, seed=SEED),
            e=TOL,
            nswp=MAX_HALF_SWEEPS // 2,
            dr_min=0,
            dr_max=0,
            I_vld=validation,
            y_vld=validation_values,
            info=info,
        )
    if not np.any(validation_values > 0):
        result.notes.append("all 1000 validation values underflow to 0: e_vld undefined")
    if not all(np.isfinite(core).all() for core in cores):
        raise FloatingPointError("teneva.cross returned non-finite cores")
    coefficients = nodal_to_coefficients([torch.as_tensor(core) for core in cores], low, high)
    base = TTDistribution(round_tt(coefficients, max_rank=rank), domain, tail_weight=1e-9)
    base.canonicalize_()
    result.build_seconds = time.perf_counter() - start
    result.n_evaluations = counter.n_evaluations
    result.converged = info.get("stop") == "e"
    result.stop_reason = {"e": "change between sweeps below tol", "nswp": "nswp reached"}.get(
        info.get("stop"), str(info.get("stop"))
    )
    result.sweeps = 2 * int(info.get("nswp", 0))
    result.ranks = list(base.tt_ranks)
    result.own_held_out_error = float(info.get("e_vld", math.nan))
    result.own_held_out_error_kind = "teneva e_vld (1000 uniform grid pts)"
    result.notes.append(
        f"shift c={shift:.2f}; cross evaluations {info.get('m')}, shift search and "
        f"validation {counter.n_evaluations - int(info.get('m', 0))}"
    )
    return tt_fitted(base)


# ------------------------------------------------------------------- DIRT
def budgeted_ftt_class(dt: Any) -> type:
    """An ``FTT`` that also stops after the sweep that passes an evaluation cap.

    It counts its ALS sweeps and remembers why it stopped; ``clone`` (which
    DIRT calls to make its layer) keeps the subclass.
    """

    class BudgetedFTT(dt.FTT):
        def __init__(self, bases, tt=None, num_error_samples=1000, max_evals=None):
            super().__init__(bases, tt, num_error_samples)
            self.max_evals = max_evals
            self.sweeps = 0
            self.stop_reason = "max_als reached"

        @property
        def is_finished(self) -> bool:
            self.sweeps += 1
            if super().is_finished:
                self.stop_reason = "error below tol"
                return True
            if self.max_evals is not None and self.num_eval >= self.max_evals:
                self.stop_reason = f"evaluation cap {self.max_evals} (ours, not DIRT's)"
                return True
            return False

        def clone(self):
            twin = super().clone()
            return BudgetedFTT(self.bases, twin.tt, self.num_error_samples, self.max_evals)

    return BudgetedFTT


def fit_dirt(case: Case, target: Target, result: Result, max_evals: int) -> Fitted:
    """deep-tensor-py's single-layer DIRT on the box, Legendre order ``n_basis - 1``."""
    import deep_tensor as dt

    torch.set_default_dtype(torch.float64)  # deep_tensor's own import does this too
    counter = CountingLogDensity(target)
    domain = torch.as_tensor(case.domain(target))
    d, kick = target.n_features, 2

    def potential(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return -counter(x)

    torch.manual_seed(SEED)
    start = time.perf_counter()
    reference = dt.UniformReference()
    options = dt.TTOptions(
        tt_method="amen",
        max_rank=case.tt_rank - kick,
        init_rank=case.tt_rank - kick,
        kick_rank=kick,
        max_als=MAX_HALF_SWEEPS,
        tol_l2_error=TOL,
        tol_max_core_error=TOL,
        verbose=0,
    )
    ftt = budgeted_ftt_class(dt)(
        dt.ApproxBases(dt.Legendre(order=case.n_basis - 1), d),
        dt.TT(options),
        num_error_samples=1000,
        max_evals=max_evals,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dirt = dt.DIRT(
            potential,
            dt.UniformMapping(domain, reference=reference),
            ftt,
            bridge=dt.SingleLayer(),
            options=dt.DIRTOptions(num_error_samples=0, verbose=0),
        )
    result.build_seconds = time.perf_counter() - start
    layer = dirt.sirts[0].ftt
    result.n_evaluations = counter.n_evaluations
    result.converged = layer.stop_reason == "error below tol"
    result.stop_reason = layer.stop_reason
    result.sweeps = layer.sweeps
    result.ranks = [1, *(int(rank) for rank in layer.tt.ranks), 1]
    result.own_held_out_error = float(layer.l2_error) if layer.l2_error is not None else None
    result.own_held_out_error_kind = "DIRT L2 error (1000 uniform pts in the box)"
    if result.n_evaluations != dirt.num_eval:
        result.notes.append(f"DIRT's own num_eval={dirt.num_eval}")
    if "cap" in layer.stop_reason:
        result.status = "capped"
    _note_warnings(result, caught)
    low, high = domain[:, 0], domain[:, 1]

    def sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, potential_q = dirt.eval_irt(dirt.reference.random(n, d))
        return x, -potential_q

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        # DIRT's support is the box: outside it q = 0.
        inside = ((x >= low) & (x <= high)).all(dim=1)
        values = torch.full((x.shape[0],), -math.inf)
        if bool(inside.any()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[inside] = -dirt.eval_potential(x[inside])
        return values

    return Fitted(sample, log_prob)


def _note_warnings(result: Result, caught: Sequence[warnings.WarningMessage]) -> None:
    """Summarise the warnings a peer raised while building (message and count)."""
    counts: dict[str, int] = {}
    for item in caught:
        message = str(item.message).split(":")[0][:80]
        counts[message] = counts.get(message, 0) + 1
    for message, count in counts.items():
        result.notes.append(f"{count} warning(s) '{message}'")


# ------------------------------------------------------------ diagnostics
def mode_truth(target: Target) -> np.ndarray:
    """True mode masses: the mixture weights, or 1/2 each for Ginzburg–Landau."""
    if isinstance(target, MixtureOfGaussians):
        return target.weights / target.weights.sum()
    return np.full(target.n_modes, 1.0 / target.n_modes)


def assess(
    target: Target,
    fitted: Fitted,
    exact: torch.Tensor,
    log_p_exact: torch.Tensor,
    n_samples: int,
    result: Result,
) -> None:
    """Throughputs, importance-sampling diagnostics, mode masses and Hellinger.

    The diagnostics follow ``importance_diagnostics`` of
    ``tests/tt/test_cross.py`` (same draws: seed 1).
    """
    fitted.sample(min(256, n_samples), SEED + 2)  # warm-up, untimed
    start = time.perf_counter()
    samples, log_q_drawn = fitted.sample(n_samples, SEED + 1)
    result.sample_rate = n_samples / (time.perf_counter() - start)
    start = time.perf_counter()
    log_q = fitted.log_prob(samples)
    result.log_prob_rate = n_samples / (time.perf_counter() - start)
    if log_q_drawn is not None:
        gap = float((log_q_drawn - log_q).abs().max())
        if gap > 1e-6:
            result.notes.append(f"log q at draw and by log_prob differ by up to {gap:.1e}")
    with torch.no_grad():
        log_weights = target.log_prob(samples) - log_q
    log_z = target.log_normalizer
    result.n_samples = n_samples
    result.log_z_true = log_z
    result.log_z_estimate = float(torch.logsumexp(log_weights, 0) - math.log(n_samples))
    result.log_z_abs_error = abs(result.log_z_estimate - log_z)
    result.reverse_kl = log_z - float(log_weights.mean())
    result.ess = float(1.0 / (n_samples * torch.softmax(log_weights, 0).square().sum()))
    spurious = float((log_weights - log_z < -SPURIOUS_LOG_RATIO).double().mean())
    result.spurious_fraction = spurious
    if spurious > 0:
        result.notes.append(
            f"{spurious:.2%} of draws have q > e^{SPURIOUS_LOG_RATIO:g} p (spurious mass); "
            f"smallest log w - log Z = {float((log_weights - log_z).min()):.0f}"
        )
    masses = np.bincount(target.mode_of(samples).numpy(), minlength=target.n_modes) / n_samples
    truth = mode_truth(target)
    result.mode_masses = masses.tolist()
    result.mode_truth = truth.tolist()
    result.max_mode_deviation = float(np.abs(masses - truth).max())
    result.modes_missed = int((masses < MISSED_FRACTION * truth).sum())
    # Hellinger^2 = 1 - E_p[sqrt(q / p)] on exact target samples.
    ratio = torch.exp(0.5 * (fitted.log_prob(exact) - log_p_exact))
    result.hellinger = math.sqrt(max(0.0, 1.0 - float(ratio.mean())))


# ------------------------------------------------------------------- runner
def run_case(case: Case, methods: Sequence[str], args: argparse.Namespace) -> list[Result]:
    """All methods on one target."""
    target = case.factory()
    log_z = target.log_normalizer  # computed once (cached by the target)
    exact = target.sample(args.n_exact, random_state=SEED + 3)
    with torch.no_grad():
        log_p_exact = target.log_prob(exact) - log_z
    results = []
    for method in methods:
        result = Result(case.name, method)
        if case.note and method == "ours":
            result.notes.append(case.note)
        print(f"[{case.name}] {method} ...", flush=True)
        try:
            fitted = build(method, case, target, result, args)
            assess(target, fitted, exact, log_p_exact, args.n_samples, result)
        except Exception as error:  # a peer failing is a result, not a crash
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
            result.notes.append(traceback.format_exc(limit=3).strip().splitlines()[-1])
        print(f"    {summary_line(result)}", flush=True)
        results.append(result)
    return results


def run_alternatives(case: Case, args: argparse.Namespace) -> list[Result]:
    """Ours (default options) at the case's other grid sizes and ranks.

    Uses a quarter of the draws: these rows only support the choice of
    ``n_basis`` and ``tt_rank``.
    """
    target = case.factory()
    exact = target.sample(args.n_exact, random_state=SEED + 3)
    with torch.no_grad():
        log_p_exact = target.log_prob(exact) - target.log_normalizer
    results = []
    for n_basis, tt_rank in case.alternatives:
        variant = dataclasses.replace(case, n_basis=n_basis, tt_rank=tt_rank)
        result = Result(case.name, f"ours n_basis={n_basis} tt_rank={tt_rank}")
        print(f"[{case.name}] {result.method} ...", flush=True)
        try:
            fitted = fit_ours(variant, target, result, OURS_OPTIONS["ours"])
            assess(target, fitted, exact, log_p_exact, max(args.n_samples // 4, 500), result)
        except Exception as error:
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
        print(f"    {summary_line(result)}", flush=True)
        results.append(result)
    return results


def warm_up(methods: Sequence[str], args: argparse.Namespace) -> None:
    """Untimed tiny builds and draws (2-D Gaussian), one per method.

    One-time costs (lazy imports, the first autograd and LAPACK calls) would
    otherwise be charged to the first row of the table.
    """
    target = MixtureOfGaussians(np.zeros((1, 2)), np.ones(1))
    case = Case("warm-up", lambda: target, _box(-5.0, 5.0), 8, 4)
    for method in methods:
        try:
            fitted = build(method, case, target, Result(case.name, method), args)
            samples, _ = fitted.sample(64, SEED)
            fitted.log_prob(samples)
        except Exception as error:  # the real run reports failures
            print(f"warm-up of {method} failed: {type(error).__name__}: {error}", flush=True)


def build(
    method: str, case: Case, target: Target, result: Result, args: argparse.Namespace
) -> Fitted:
    """Dispatch to the method's builder."""
    if method in OURS_OPTIONS:
        return fit_ours(case, target, result, OURS_OPTIONS[method])
    if method == "teneva":
        return fit_teneva(case, target, result)
    if method == "dirt":
        return fit_dirt(case, target, result, args.dirt_max_evals)
    raise ValueError(f"unknown method {method!r}")


def summary_line(result: Result) -> str:
    """One line of progress output."""
    if result.status == "failed":
        return f"FAILED {result.error}"
    return (
        f"{result.n_evaluations} evals, {result.build_seconds:.1f} s, "
        f"ESS {result.ess:.3f}, KL {result.reverse_kl:.2e}, "
        f"|dlogZ| {result.log_z_abs_error:.1e}, missed {result.modes_missed}, "
        f"sample {result.sample_rate:.0f}/s, log_prob {result.log_prob_rate:.0f}/s"
    )


# ----------------------------------------------------------------- metadata


def metadata(args: argparse.Namespace, cases: Sequence[Case]) -> dict[str, Any]:
    """Where, with what and how the numbers were taken."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "versions": {
            name: package_version(name)
            for name in ("torch", "numpy", "scipy", "normflows", "teneva", "deep-tensor-py")
        },
        "sktt_flow_version": sktt_flow.__version__,
        "sktt_flow_source_sha256": source_digest(),
        "git": git_commit(),
        "quick": args.quick,
        "settings": {
            "tol": TOL,
            "max_half_sweeps": MAX_HALF_SWEEPS,
            "seed": SEED,
            "n_samples": args.n_samples,
            "n_exact": args.n_exact,
            "dirt_max_evals": args.dirt_max_evals,
            "missed_mode_fraction": MISSED_FRACTION,
            "methods": list(args.methods),
        },
        "cases": [
            {
                "name": case.name,
                "n_basis": case.n_basis,
                "tt_rank": case.tt_rank,
                "note": case.note,
            }
            for case in cases
        ],
    }


# ----------------------------------------------------------------- reports
def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _count(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def _modes(result: Result) -> str:
    if result.mode_masses is None:
        return "n/a"
    total = len(result.mode_masses)
    found = total - result.modes_missed
    text = f"{found}/{total}"
    return f"**{text} MISSED {result.modes_missed}**" if result.modes_missed else text


def _status(result: Result) -> str:
    if result.status == "failed":
        return f"**FAILED**: {result.error[:120]}"
    text = result.stop_reason or ""
    if result.status == "capped":
        text = f"**CAPPED**: {text}"
    return text


def markdown_table(results: Sequence[Result]) -> list[str]:
    """The main table, one row per (target, method)."""
    header = (
        "| target | method | evals | build s | own held-out err | Hellinger | ESS | "
        "reverse KL | abs dlogZ | max mode dev | modes found | sample pts/s | "
        "log q pts/s | ranks (max) | stop |"
    )
    lines = [header, header_rule(header)]
    for r in results:
        lines.append(
            f"| {r.target} | {r.method} | {_count(r.n_evaluations)} | "
            f"{_fmt(r.build_seconds, '.3g')} | {_fmt(r.own_held_out_error, '.1e')} | "
            f"{_fmt(r.hellinger, '.3f')} | {_fmt(r.ess, '.3f')} | "
            f"{_fmt(r.reverse_kl, '.1e')} | {_fmt(r.log_z_abs_error, '.1e')} | "
            f"{_fmt(r.max_mode_deviation, '.3f')} | {_modes(r)} | "
            f"{_fmt(r.sample_rate, ',.0f')} | {_fmt(r.log_prob_rate, ',.0f')} | "
            f"{max(r.ranks) if r.ranks else 'n/a'} | {_status(r)} |"
        )
    return lines


def alternatives_section(alternatives: Sequence[Result]) -> list[str]:
    """The table of ours at other grid sizes and ranks, when there is one."""
    if not alternatives:
        return []
    return [
        "## Ours at other grid sizes and ranks",
        "",
        "Default options of ours; a quarter of the draws. Evidence for the grid size "
        "and rank of the main table.",
        "",
        *markdown_table(alternatives),
        "",
    ]


def markdown_report(
    meta: dict[str, Any], results: Sequence[Result], alternatives: Sequence[Result] = ()
) -> str:
    """Metadata, the table, per-row notes and how to read the columns."""
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    settings = meta["settings"]
    lines = [
        "# TT-cross next to teneva and deep-tensor-py (DIRT), CPU",
        "",
        f"- date: {meta['date']}; command: `{meta['command']}`",
        f"- CPU: {meta['cpu']} ({meta['cpu_count']} CPUs), torch threads "
        f"{meta['torch_num_threads']}; load average at start {meta['load_average_start']}, "
        f"at end {meta.get('load_average_end')}; wall time {meta.get('wall_time_s', 0):.0f} s",
        f"- versions: {versions}; sktt_flow {meta['sktt_flow_version']} (git "
        f"{meta['git']}, sources sha256 {meta['sktt_flow_source_sha256'][:12]})",
        f"- tol {settings['tol']}, at most {settings['max_half_sweeps']} half-sweeps "
        f"(teneva {settings['max_half_sweeps'] // 2} full sweeps, DIRT "
        f"{settings['max_half_sweeps']} ALS sweeps), DIRT capped after the sweep that "
        f"passes {settings['dirt_max_evals']:,} evaluations; {settings['n_samples']:,} draws "
        f"per method for ESS, KL, log Z, modes and throughputs; Hellinger on "
        f"{settings['n_exact']:,} exact target samples",
        "",
        *markdown_table(results),
        "",
        "Grid and rank per target: "
        + "; ".join(
            f"{c['name']}: n_basis {c['n_basis']}, tt_rank {c['tt_rank']}" for c in meta["cases"]
        )
        + ".",
        "",
        *alternatives_section(alternatives),
        "## Columns",
        "",
        "- **evals**: points at which `target.log_prob` was called while building "
        "(wrapper count; includes ours' gradient-ascent seeds, teneva's shift search "
        "and validation set, DIRT's error samples).",
        "- **build s**: wall time of the build, evaluations included.",
        "- **own held-out err**: each method's own relative error of sqrt(h) on its "
        "own held-out points (not comparable across methods: ours uses grid points "
        "half near its seeds, teneva and DIRT uniform points, where a peaked h is "
        "~0).",
        "- **Hellinger**: distance between q and the target, estimated on exact "
        "target samples no method saw (0 is perfect, 1 disjoint).",
        "- **ESS** (normalised), **reverse KL** = log Z - ELBO and **abs dlogZ** = "
        "|importance estimate of log Z - log Z| from the draws of q; reverse KL "
        "estimates can be slightly negative from noise. ESS and reverse KL cannot see "
        "a missed mode (no draw lands there): a method that drops k of K equal modes "
        "shows ESS 1 but abs dlogZ = log(K / (K - k)) and Hellinger > 0.",
        f"- **max mode dev**: max over modes of |fraction of draws - true mass| (1/2 "
        f"for Ginzburg-Landau, the weights for mixtures); **modes found**: modes with at "
        f"least {MISSED_FRACTION:g} of their true mass.",
        "- **sample pts/s**, **log q pts/s**: throughput of drawing the samples and of "
        "evaluating log q on them (DIRT returns log q with its draws).",
        "- **stop**: why the method stopped; CAPPED rows were stopped by this "
        "benchmark's budget, not by their own criterion.",
        "",
        "## Notes per row",
        "",
    ]
    for r in results:
        if r.notes:
            lines.append(f"- {r.target} / {r.method}: " + "; ".join(r.notes))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="two targets, fewer draws: a smoke test of under 2 minutes",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for cross_cpu.json and .md (default: benchmarks/results/)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on a shared machine)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default: all)",
    )
    parser.add_argument(
        "--n-samples", type=int, default=None, help="draws per method (default 20000, quick 2000)"
    )
    parser.add_argument(
        "--n-exact",
        type=int,
        default=None,
        help="exact target samples for Hellinger (default 2000, quick 500)",
    )
    parser.add_argument(
        "--dirt-max-evals",
        type=int,
        default=None,
        help="stop DIRT after the ALS sweep that passes this many "
        "evaluations (default 400000, quick 100000)",
    )
    args = parser.parse_args(argv)
    args.n_samples = args.n_samples or (2000 if args.quick else 20_000)
    args.n_exact = args.n_exact or (500 if args.quick else 2000)
    args.dirt_max_evals = args.dirt_max_evals or (100_000 if args.quick else 400_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # deep_tensor sets float64 as torch's default on import; set it up front so
    # that every method runs under the same default (ours and teneva pass
    # float64 explicitly anyway).
    torch.set_default_dtype(torch.float64)
    cases = make_cases(args.quick)
    meta = metadata(args, cases)
    print(
        f"TT-cross benchmark on {meta['cpu']}, {meta['torch_num_threads']} threads, "
        f"quick={args.quick}",
        flush=True,
    )
    warm_up(args.methods, args)
    start = time.perf_counter()
    results: list[Result] = []
    alternatives: list[Result] = []
    for case in cases:
        results.extend(run_case(case, args.methods, args))
        if case.alternatives and "ours" in args.methods and not args.quick:
            alternatives.extend(run_alternatives(case, args))
    meta["wall_time_s"] = time.perf_counter() - start
    meta["load_average_end"] = load_average()
    stem = "cross_cpu" + ("_quick" if args.quick else "")
    args.output.mkdir(parents=True, exist_ok=True)
    payload = {
        "metadata": meta,
        "results": [asdict(result) for result in results],
        "ours_at_other_settings": [asdict(result) for result in alternatives],
    }
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False)
    write_atomically(args.output / f"{stem}.json", text + "\n")
    write_atomically(args.output / f"{stem}.md", markdown_report(meta, results, alternatives))
    print(f"Wrote {args.output / stem}.json and .md in {meta['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

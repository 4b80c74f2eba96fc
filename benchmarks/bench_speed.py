"""Speed of the tensorizing flow against the same flow on a Gaussian base.

Same data, same flow (RealNVP, 8 layers, 64 hidden units by default), same
training; only the base differs (``base="tt"`` against ``base="gaussian"``).
Measured in one process, reported as ratios:

* training: forward-KL steps per second (batch 256, in the training dtype);
* ``score_samples`` and ``sample`` throughput of the fitted estimators
  (chunked, as users call them, in their default ``inference_dtype``: the
  training dtype, float32), and the TT base's own share of the scoring cost
  (the issue's rule: at most half the flow's own cost);
* precision: ``score_samples`` and ``sample`` of a TT estimator (d = 16,
  tt_rank = 8, n_basis = 16, 20,000 rows) with ``inference_dtype`` float32 and
  float64, against a float32 normflows RealNVP of the same size (8 layers, 64
  hidden units, normflows' ``MaskedAffineFlow`` on its ``DiagGaussian``,
  built from normflows' classes: ``normflows_real_nvp``) on one thread (the goals: at
  most 1.3 times its time for scoring, 3 times for sampling), and how far
  the two precisions' scores and samples are apart. The peer is timed
  twice: on all rows in one call, as a normflows user calls it, and in the
  estimator's chunks (``CHUNK_SIZE`` rows to score, ``SAMPLE_CHUNK_FACTOR``
  times as many to draw). The one call's time depends on the state of the
  allocator (with glibc's adaptive mmap threshold, its 20,000 x 64
  activations are fresh pages in some calls and reused heap in others: 0.12
  to 0.24 s and 0.08 s on the same machine, 2026-12-05), the chunked one's
  does not (0.084 to 0.097 s), so the goals are judged on the chunked peer;
* sweeps over ``n`` (points scored), ``d`` and ``tt_rank``;
* variational training: the time of ``fit_reverse_kl`` (reverse-KL steps of
  batch 256 in float32, frozen base, its draws from the pool, the validation
  ELBOs and the final confirmation included) on a TT base of the shape
  (``d``, ``tt_rank``, ``n_basis``) of each target of the variational suite
  (``vi_auto_partial``) against the same flow on a Gaussian base (the goal:
  at most 1.5 times its time). The TT is random with Legendre coefficients
  decaying like ``(1 + degree)^-1.5`` and the target a standard normal, whose
  cost is the same for both bases;
* the GPU goal: the TT base's ``log_prob`` against an 8-layer RealNVP's
  ``log_prob`` on the same points (d = 64, tt_rank = 8, n_basis = 16,
  N = 10^6, float32), both as bare torch modules.

Peak memory is measured by ``bench_memory.py``.

Usage (from the repository root)::

    python benchmarks/bench_speed.py [--device cpu|cuda] [--quick] [--threads T] [--output DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import normflows as nf
import numpy as np
import torch
from _common import (
    cpu_name,
    load_average,
    repeat_timed,
    repeat_timed_pair,
    source_digest,
    synchronize,
    write_atomically,
)

import sktt_flow
from sktt_flow import TensorizingFlowDensity, TTDistribution
from sktt_flow.estimator._density import CHUNK_SIZE, SAMPLE_CHUNK_FACTOR
from sktt_flow.flows import GaussianBase, TensorizingFlow, build_flow_layers
from sktt_flow.flows.builders import _parity_mask, _real_nvp_networks
from sktt_flow.training import STEPS_PER_ITERATION, fit_reverse_kl
from sktt_flow.utils.subnormal import subnormals_flushed

SEED = 0


def mixture_data(n: int, d: int, seed: int = SEED) -> np.ndarray:
    """Four well separated Gaussian clusters in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4.0, 4.0, size=(4, d))
    return centres[rng.integers(4, size=n)] + 0.5 * rng.standard_normal((n, d))


def normflows_real_nvp(d: int, n_layers: int, hidden_units: int) -> list[nf.flows.Flow]:
    """RealNVP as a normflows user builds it: normflows' ``MaskedAffineFlow``
    on normflows' ``MLP`` networks, of the same sizes, masks and bounded
    log-scale as ``build_flow_layers("realnvp")``, so the same parameters and
    arithmetic; the estimator's layers compute them with fewer passes over
    the points (:class:`~sktt_flow.flows.MaskedAffineCoupling`)."""
    layers = []
    for layer in range(n_layers):
        translation, scale = _real_nvp_networks(d, hidden_units)
        layers.append(nf.flows.MaskedAffineFlow(_parity_mask(d, layer), translation, scale))
    return layers


def median(times: list[float]) -> float:
    return statistics.median(times)


class Timer:
    """Repeats under one rule per device (see ``_common.repeat_timed``)."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        # A GPU's kernel times do not drift as a shared CPU's do: a few
        # seconds per measurement suffice there (as in bench_tt_distribution),
        # and keep gpu_suite.sh within a short lease.
        on_gpu = device.type == "cuda"
        self.rules = {
            "min_time": 0.2 if quick else 0.5,
            "min_repeats": 1 if quick else 3,
            "max_time": (1.0 if on_gpu else 5.0) if quick else (3.0 if on_gpu else 15.0),
            "max_repeats": 20,
        }

    def __call__(self, call) -> float:
        call()  # warm-up
        synchronize(self.device)
        return median(repeat_timed(call, self.device, **self.rules))

    def pair(self, call_tt, call_gaussian) -> tuple[float, float, float]:
        """Median seconds of each, and the median of their per-pair ratios.

        The two are timed in turn (``_common.repeat_timed_pair``), with twice
        the time rules of a single measurement and, on a CPU, whose speed
        drifts on a shared machine, at least 5 pairs.
        """
        call_tt()  # warm-up
        call_gaussian()
        synchronize(self.device)
        rules = {
            "min_time": 2 * self.rules["min_time"],
            "min_repeats": max(self.rules["min_repeats"], 5 if self.device.type == "cpu" else 1),
            "max_time": 2 * self.rules["max_time"],
            "max_repeats": self.rules["max_repeats"],
        }
        times_tt, times_gaussian = repeat_timed_pair(call_tt, call_gaussian, self.device, **rules)
        ratios = [a / b for a, b in zip(times_tt, times_gaussian, strict=True)]
        return median(times_tt), median(times_gaussian), median(ratios)


def fit_pair(d: int, tt_rank: int, device: str, n_train: int) -> dict:
    """A tensorizing flow and its Gaussian-base peer, briefly fitted on the same data."""
    X = mixture_data(n_train, d)
    common = {"tt_rank": tt_rank, "max_iter": 2, "random_state": SEED, "device": device}
    return {
        base: TensorizingFlowDensity(base=base, **common).fit(X) for base in ("tt", "gaussian")
    }


def training_steps(estimator, n_steps: int):
    """A callable doing ``n_steps`` Adam steps of the forward KL on batches of 256,
    in float32, base frozen, on a float32 copy of the estimator's flow."""
    flow = copy.deepcopy(estimator.flow_)  # the estimator's own stays as fit left it
    model = TensorizingFlow(flow.q0, list(flow.flows)).to(torch.float32)
    model.requires_grad_(True)
    model.q0.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    generator = torch.Generator(device=estimator.device_).manual_seed(SEED)
    data = torch.tensor(
        mixture_data(256 * n_steps, estimator.n_features_in_, seed=1),
        dtype=torch.float32,
        device=estimator.device_,
    )

    # as the package's fits to data (fit_forward_kl) run them: a step's backward
    # pass through a TT makes subnormal numbers, a hundred times slower each
    @subnormals_flushed()
    def steps():
        order = torch.randperm(data.shape[0], generator=generator, device=data.device)
        for start in range(0, data.shape[0], 256):
            optimizer.zero_grad(set_to_none=True)
            loss = model.forward_kld(data[order[start : start + 256]])
            loss.backward()
            optimizer.step()

    return steps


def measure_pair(pair: dict, n_score: int, n_sample: int, timer: Timer, n_steps: int) -> dict:
    """Scoring, sampling and training of both bases, each pair timed in turn."""
    tt, gaussian = pair["tt"], pair["gaussian"]
    d = tt.n_features_in_
    X = mixture_data(n_score, d, seed=2)
    row: dict = {}
    row["score_tt_s"], row["score_gaussian_s"], row["score_ratio"] = timer.pair(
        lambda: tt.score_samples(X), lambda: gaussian.score_samples(X)
    )
    row["sample_tt_s"], row["sample_gaussian_s"], row["sample_ratio"] = timer.pair(
        lambda: tt.sample(n_sample, random_state=0),
        lambda: gaussian.sample(n_sample, random_state=0),
    )
    train_tt_s, train_gaussian_s, row["train_ratio"] = timer.pair(
        training_steps(tt, n_steps), training_steps(gaussian, n_steps)
    )
    row["train_tt_steps_per_s"] = n_steps / train_tt_s
    row["train_gaussian_steps_per_s"] = n_steps / train_gaussian_s
    # The TT base's own share of scoring, from the pairs' ratio (steadier than
    # a difference of separately timed medians), and its log_prob alone.
    row["tt_share_of_flow_cost"] = row["score_ratio"] - 1.0
    # the base in the precision the estimator scores in
    precision = getattr(torch, tt.inference_dtype or tt.dtype)
    base = copy.deepcopy(tt.tt_).to(precision)
    with torch.no_grad():
        latent = torch.tensor(X, device=tt.device_)
        latent, _ = tt.flow_.inverse_and_log_det(latent)
        latent = latent.to(precision)
    row["tt_base_log_prob_s"] = timer(lambda: base.log_prob(latent))
    row.update(
        d=d,
        tt_rank=tt.tt_rank,
        n_basis=tt.n_basis,
        n_score=n_score,
        n_sample=n_sample,
        score_tt_pts_per_s=n_score / row["score_tt_s"],
        sample_tt_pts_per_s=n_sample / row["sample_tt_s"],
    )
    return row


def precision_rows(device: torch.device, timer: Timer, n_train: int, n_points: int) -> list[dict]:
    """The issue's precision goals, on one thread: a TT estimator (d = 16,
    tt_rank = 8, n_basis = 16) scoring and sampling ``n_points`` rows with
    ``inference_dtype`` float32 and float64, each timed in pairs against a
    float32 normflows RealNVP of the same size doing the same (``log_prob`` of
    a float32 tensor; ``sample``, which returns the log-densities too), and
    the largest differences between the two precisions: scores relative to
    ``1 + |log q|``, samples in units of each feature's standard deviation.
    """
    d, rank, n_basis = 16, 8, 16
    X = mixture_data(n_train, d)
    fitted = TensorizingFlowDensity(
        base="tt", tt_rank=rank, n_basis=n_basis, max_iter=2, random_state=SEED, device=device
    ).fit(X)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layers = normflows_real_nvp(d, fitted.n_flow_layers, fitted.hidden_units)
        # the estimator's own layers, for the share of the gap that is the base's
        same_layers = build_flow_layers(
            "realnvp", d, n_layers=fitted.n_flow_layers, hidden_units=fitted.hidden_units
        )
    peer = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
    peer = peer.to(device, torch.float32)
    same_layers_peer = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(d, trainable=False), same_layers
    ).to(device, torch.float32)
    points = mixture_data(n_points, d, seed=2)
    peer_points = torch.tensor(points, dtype=torch.float32, device=device)

    def peer_score():
        with torch.no_grad():
            return peer.log_prob(peer_points)

    def peer_sample():
        with torch.no_grad():
            return peer.sample(n_points)

    score_chunk = CHUNK_SIZE[device.type]
    sample_chunk = score_chunk * SAMPLE_CHUNK_FACTOR[device.type]

    def chunked_peer_score(flow=peer):
        with torch.no_grad():
            return torch.cat([flow.log_prob(rows) for rows in peer_points.split(score_chunk)])

    def chunked_peer_sample():
        with torch.no_grad():
            starts = range(0, n_points, sample_chunk)
            return [peer.sample(min(sample_chunk, n_points - start)) for start in starts]

    models = {
        dtype: copy.deepcopy(fitted).set_params(inference_dtype=dtype)
        for dtype in ("float32", "float64")
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for dtype, model in models.items():
            row = {"inference_dtype": dtype, "d": d, "tt_rank": rank, "n_basis": n_basis}
            row["score_s"], row["peer_score_s"], row["score_over_peer"] = timer.pair(
                lambda model=model: model.score_samples(points), peer_score
            )
            row["sample_s"], row["peer_sample_s"], row["sample_over_peer"] = timer.pair(
                lambda model=model: model.sample(n_points, random_state=0), peer_sample
            )
            (
                row["chunked_score_s"],
                row["chunked_peer_score_s"],
                row["score_over_chunked_peer"],
            ) = timer.pair(lambda model=model: model.score_samples(points), chunked_peer_score)
            (
                row["chunked_sample_s"],
                row["chunked_peer_sample_s"],
                row["sample_over_chunked_peer"],
            ) = timer.pair(
                lambda model=model: model.sample(n_points, random_state=0), chunked_peer_sample
            )
            (_, row["chunked_same_layers_score_s"], row["score_over_same_layers"]) = timer.pair(
                lambda model=model: model.score_samples(points),
                lambda: chunked_peer_score(same_layers_peer),
            )
            row["score_goal_met"] = row["score_over_chunked_peer"] <= 1.3
            row["sample_goal_met"] = row["sample_over_chunked_peer"] <= 3.0
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    scores = {dtype: model.score_samples(points) for dtype, model in models.items()}
    draws = {
        dtype: model.sample_and_score(n_points, random_state=0) for dtype, model in models.items()
    }
    score_gap = np.abs(scores["float32"] - scores["float64"]) / (1.0 + np.abs(scores["float64"]))
    # per draw, its largest coordinate
    sample_gap = (np.abs(draws["float32"][0] - draws["float64"][0]) / X.std(axis=0)).max(axis=1)
    log_q_gap = np.abs(draws["float32"][1] - draws["float64"][1]) / (
        1.0 + np.abs(draws["float64"][1])
    )
    for row in rows:
        row.update(
            n_points=n_points,
            threads=1,
            max_relative_score_difference=float(score_gap.max()),
            median_relative_score_difference=float(np.median(score_gap)),
            max_sample_difference_in_std=float(sample_gap.max()),
            median_sample_difference_in_std=float(np.median(sample_gap)),
            q99_sample_difference_in_std=float(np.quantile(sample_gap, 0.99)),
            max_relative_sample_log_q_difference=float(log_q_gap.max()),
        )
    return rows


#: (target, d, tt_rank, n_basis) of the tensorizing flow's fits in the variational
#: suite (``benchmarks/results/vi_auto_partial``, ``domain="auto"``).
VARIATIONAL_SHAPES = (
    ("Banana", 2, 8, 36),
    ("MoG fab_40_modes", 2, 32, 81),
    ("NealsFunnel(10)", 10, 8, 24),
    ("EightSchools(centered)", 10, 8, 128),
    ("DoubleRosenbrock(11)", 11, 8, 256),
    ("LogisticRegression(wine)", 14, 8, 16),
    ("GinzburgLandau1D(16)", 16, 8, 54),
    ("MoG paper_30d_5mode", 30, 16, 81),
    ("LogisticRegression(breast_cancer)", 31, 8, 32),
    ("ManyWell(32)", 32, 4, 36),
    ("GinzburgLandau1D(32)", 32, 8, 24),
    ("GinzburgLandau1D(50)", 50, 8, 36),
    ("GinzburgLandau2D(8)", 64, 16, 54),
)


def smooth_random_train(d: int, rank: int, n_basis: int, seed: int = SEED) -> TTDistribution:
    """A random train on [-3, 3]^d whose Legendre coefficients decay like
    ``(1 + degree)^-1.5``: smooth conditionals, like those of a fitted base,
    where white coefficients of degree 255 would make every conditional a
    comb and slow the solver more than any fitted base does."""
    generator = torch.Generator().manual_seed(seed)
    decay = (1.0 + torch.arange(n_basis, dtype=torch.float64)) ** -1.5
    cores = [
        torch.randn(
            1 if k == 0 else rank,
            n_basis,
            1 if k == d - 1 else rank,
            generator=generator,
            dtype=torch.float64,
        )
        * decay[:, None]
        for k in range(d)
    ]
    return TTDistribution(cores, [[-3.0, 3.0]] * d).canonicalize_()


def reverse_kl_fit(base, d: int, device: torch.device, max_iter: int) -> Callable[[], None]:
    """A call of ``fit_reverse_kl`` (``max_iter`` rounds of batch 256, float32)
    of an 8-layer RealNVP, seeded by ``SEED``, on the frozen ``base``, against a
    standard normal target (whose cost is the same for any base); every call
    trains the same model further, which changes what it computes, not what it
    costs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layers = build_flow_layers("realnvp", d, n_layers=8, hidden_units=64)
    model = TensorizingFlow(base, layers).to(device, torch.float32)
    model.q0.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=device).manual_seed(SEED)

    def fit() -> None:
        fit_reverse_kl(
            model,
            lambda x: -0.5 * x.square().sum(dim=1),
            parameters=parameters,
            max_iter=max_iter,
            batch_size=256,
            learning_rate=1e-4,
            n_iter_no_change=max_iter,
            generator=generator,
        )

    return fit


def variational_step_rows(device: torch.device, timer: Timer, quick: bool) -> list[dict]:
    """``fit_reverse_kl`` on a TT base of each suite shape against the same flow
    on a Gaussian base, timed in pairs; both models are trained further by every
    call, which changes what they compute, not what it costs.

    Fits of 200 steps (quick: 30 on a CPU; 300 on a GPU, whose pool block of
    262,144 draws costs about what one of 32,768 does and would dominate a
    30-step fit, unlike in a real one)."""
    if quick:
        max_iter = 30 if device.type == "cuda" else 3
    else:
        max_iter = 20
    shapes = VARIATIONAL_SHAPES[::6] if quick else VARIATIONAL_SHAPES
    rows = []
    for name, d, rank, n_basis in shapes:
        fits = {
            "tt": reverse_kl_fit(smooth_random_train(d, rank, n_basis), d, device, max_iter),
            "gaussian": reverse_kl_fit(
                GaussianBase(torch.zeros(d), torch.ones(d)), d, device, max_iter
            ),
        }
        tt_s, gaussian_s, ratio = timer.pair(fits["tt"], fits["gaussian"])
        n_steps = max_iter * STEPS_PER_ITERATION
        rows.append(
            {
                "target": name,
                "d": d,
                "tt_rank": rank,
                "n_basis": n_basis,
                "n_steps": n_steps,
                "tt_ms_per_step": 1e3 * tt_s / n_steps,
                "gaussian_ms_per_step": 1e3 * gaussian_s / n_steps,
                "step_ratio": ratio,
                "goal_met": ratio <= 1.5,
            }
        )
        print(rows[-1], flush=True)
    return rows


def goal_row(device: torch.device, timer: Timer, n_points: int) -> dict:
    """TT base log_prob against normflows' 8-layer RealNVP log_prob, float32, same points."""
    d, rank, n_basis = 64, 8, 16
    generator = torch.Generator().manual_seed(SEED)
    cores = [
        torch.randn(1 if k == 0 else rank, n_basis, 1 if k == d - 1 else rank, generator=generator)
        for k in range(d)
    ]
    base = TTDistribution(cores, [[-3.0, 3.0]] * d).canonicalize_().to(device, torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layers = normflows_real_nvp(d, n_layers=8, hidden_units=64)
    ones = torch.ones(d)
    realnvp = TensorizingFlow(GaussianBase(torch.zeros(d), ones), layers)
    realnvp = realnvp.to(device, torch.float32)
    points = (torch.rand(n_points, d, generator=generator) * 6.0 - 3.0).to(device)
    with torch.no_grad():
        tt_seconds = timer(lambda: base.log_prob(points))
        flow_seconds = timer(lambda: realnvp.log_prob(points))
    return {
        "d": d,
        "tt_rank": rank,
        "n_basis": n_basis,
        "n_points": n_points,
        "tt_log_prob_pts_per_s": n_points / tt_seconds,
        "realnvp_log_prob_pts_per_s": n_points / flow_seconds,
        "tt_over_realnvp_time": tt_seconds / flow_seconds,
        "goal_met": tt_seconds <= flow_seconds,
    }


def markdown(
    metadata: dict, rows: list[dict], goal: dict, precision: list[dict], variational: list[dict]
) -> str:
    lines = [
        f"# Speed of the tensorizing flow against a Gaussian-base flow ({metadata['device']})",
        "",
        f"`{metadata['command']}` on {metadata['date']}; {metadata['device_name']}; "
        f"torch {metadata['torch']}, {metadata['threads']} thread(s), load average "
        f"{metadata['load_average']}.",
        "",
        "Same flow (RealNVP, 8 layers, 64 hidden units) and data; `tt` is the",
        "tensorizing flow, `gaussian` the same flow on a Gaussian base. Ratios are",
        "tt time over gaussian time (training: gaussian steps/s over tt steps/s),",
        "each the median of the ratios of pairs timed in turn, so that a drifting",
        "machine slows both alike; `TT share` is the score ratio minus 1, the extra",
        "scoring time of the TT base over the flow's own scoring time (the goal:",
        "at most 0.5).",
        "",
        "| sweep | d | tt_rank | n scored | score pts/s (tt) | score ratio | TT share "
        "| n sampled | sample pts/s (tt) | sample ratio | train steps/s (tt) | train ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['sweep']} | {row['d']} | {row['tt_rank']} | {row['n_score']:,} | "
            f"{row['score_tt_pts_per_s']:,.0f} | {row['score_ratio']:.2f} | "
            f"{row['tt_share_of_flow_cost']:.2f} | {row['n_sample']:,} | "
            f"{row['sample_tt_pts_per_s']:,.0f} | {row['sample_ratio']:.2f} | "
            f"{row['train_tt_steps_per_s']:.1f} | {row['train_ratio']:.2f} |"
        )
    lines += [
        "",
        "## GPU goal: TT base log_prob against RealNVP log_prob (float32)",
        "",
        f"d = {goal['d']}, tt_rank = {goal['tt_rank']}, n_basis = {goal['n_basis']}, "
        f"N = {goal['n_points']:,}: TT base {goal['tt_log_prob_pts_per_s']:,.0f} pts/s, "
        f"8-layer RealNVP {goal['realnvp_log_prob_pts_per_s']:,.0f} pts/s, time ratio "
        f"{goal['tt_over_realnvp_time']:.2f} (goal met: {goal['goal_met']}).",
    ]
    first = precision[0]
    lines += [
        "",
        "## Precision: float32 against float64 inference, and a float32 RealNVP peer",
        "",
        f"TT estimator with d = {first['d']}, tt_rank = {first['tt_rank']}, n_basis = "
        f"{first['n_basis']}, {first['n_points']:,} rows, one thread, against a float32",
        "normflows RealNVP of the same size; times are ours over the peer's (goals: 1.3",
        "for score_samples, 3 for sample), the peer called on all rows at once and in",
        "the estimator's chunks. The goals are judged on the chunked peer: the one",
        "call's time depends on the allocator's state (see the script's docstring).",
        "The peer is built from normflows' own classes (`MaskedAffineFlow`, `MLP`);",
        "the estimator's layers are the same map computed with fewer passes",
        "(`MaskedAffineCoupling`), and the last score column times the estimator",
        "against those layers on the same Gaussian base, chunked: the cost of the",
        "TT base and the defensive component alone.",
        "",
        "| inference_dtype | score_samples s | peer s (one call / chunked) | time ratio "
        "(one call / chunked) | against the same layers | sample s | peer s (one call / "
        "chunked) | time ratio (one call / chunked) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in precision:
        lines.append(
            f"| {row['inference_dtype']} | {row['chunked_score_s']:.3f} | "
            f"{row['peer_score_s']:.3f} / {row['chunked_peer_score_s']:.3f} | "
            f"{row['score_over_peer']:.2f} / **{row['score_over_chunked_peer']:.2f}** | "
            f"{row['score_over_same_layers']:.2f} | "
            f"{row['chunked_sample_s']:.3f} | "
            f"{row['peer_sample_s']:.3f} / {row['chunked_peer_sample_s']:.3f} | "
            f"{row['sample_over_peer']:.2f} / **{row['sample_over_chunked_peer']:.2f}** |"
        )
    lines += [
        "",
        f"float32 against float64: scores differ by at most "
        f"{first['max_relative_score_difference']:.1e} (median "
        f"{first['median_relative_score_difference']:.1e}) of 1 + |log q|; samples "
        "from the same random_state (the TT base solves its conditional CDFs in the "
        "precision too) by a median of "
        f"{first['median_sample_difference_in_std']:.1e} standard deviations, 99% of "
        f"them within {first['q99_sample_difference_in_std']:.1e}, all within "
        f"{first['max_sample_difference_in_std']:.1e}; their log-densities by at most "
        f"{first['max_relative_sample_log_q_difference']:.1e} of 1 + |log q| (a draw "
        "that moved is scored where it landed).",
    ]
    lines += [
        "",
        "## Variational training: reverse-KL steps on a TT base against a Gaussian base",
        "",
        "`fit_reverse_kl` (batch 256, float32, frozen base, base draws from the pool,",
        "validation ELBOs and the final confirmation included), the same RealNVP on a",
        "random smooth TT of each suite target's shape and on a Gaussian base, against a",
        "standard normal target (the target's cost is the same for both); the ratio is",
        "the median of paired times (goal: at most 1.5).",
        "",
        "| target shape | d | tt_rank | n_basis | steps | ms/step (tt) | ms/step (gaussian) "
        "| step ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in variational:
        lines.append(
            f"| {row['target']} | {row['d']} | {row['tt_rank']} | {row['n_basis']} | "
            f"{row['n_steps']} | {row['tt_ms_per_step']:.1f} | "
            f"{row['gaussian_ms_per_step']:.1f} | {row['step_ratio']:.2f} |"
        )
    if metadata["load_average"] and metadata["load_average"][0] > metadata["cpu_count"]:
        lines += ["", "**Warning**: the machine was busy during this run; timings are noisy."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    on_gpu = device.type == "cuda"
    quick = arguments.quick
    timer = Timer(device, quick)
    n_train = 2000 if quick else 4000
    n_score = 10_000 if quick else (1_000_000 if on_gpu else 100_000)
    # 10^5 draws on a GPU: TT sampling ran at ~65k/s on an H200, and 9 rows
    # of timed pairs must fit in the 5 minutes of gpu_suite.sh
    n_sample = 2_000 if quick else (100_000 if on_gpu else 10_000)
    n_steps = 5 if quick else 20
    reference = {"d": 8, "tt_rank": 8}
    sweeps = [("reference", reference)]
    if not quick:
        sweeps += [("d", {**reference, "d": d}) for d in (2, 32, 64)]
        sweeps += [("tt_rank", {**reference, "tt_rank": r}) for r in (2, 4, 16)]
    rows = []
    for sweep, config in sweeps:
        pair = fit_pair(config["d"], config["tt_rank"], arguments.device, n_train)
        rows.append({"sweep": sweep, **measure_pair(pair, n_score, n_sample, timer, n_steps)})
        if sweep == "reference" and not quick:
            for n in (10_000, 1_000_000) if not on_gpu else (100_000, 10_000_000):
                rows.append({"sweep": "n", **measure_pair(pair, n, n_sample, timer, n_steps)})
        print(rows[-1], flush=True)
    goal = goal_row(device, timer, 100_000 if quick else 1_000_000)
    print(goal, flush=True)
    precision = precision_rows(device, timer, n_train, 2_000 if quick else 20_000)
    for row in precision:
        print(row, flush=True)
    variational = variational_step_rows(device, timer, quick)
    metadata = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if on_gpu else cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sktt_flow": sktt_flow.__version__,
        "source_sha256": source_digest(),
        "threads": torch.get_num_threads(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "load_average": load_average(),
        "timing": timer.rules,
        "n_train": n_train,
        "n_steps": n_steps,
    }
    suffix = "_quick" if quick else ""
    arguments.output.mkdir(parents=True, exist_ok=True)
    stem = f"speed_{device.type}{suffix}"
    write_atomically(
        arguments.output / f"{stem}.json",
        json.dumps(
            {
                "metadata": metadata,
                "rows": rows,
                "goal": goal,
                "precision": precision,
                "variational": variational,
            },
            indent=2,
        ),
    )
    write_atomically(
        arguments.output / f"{stem}.md", markdown(metadata, rows, goal, precision, variational)
    )
    print(f"Wrote {arguments.output / stem}.json and .md")


if __name__ == "__main__":
    main()

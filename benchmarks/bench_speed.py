"""Speed of the tensorizing flow against the same flow on a Gaussian base.

Same data, same flow (RealNVP, 8 layers, 64 hidden units by default), same
training; only the base differs (``base="tt"`` against ``base="gaussian"``).
Measured in one process, reported as ratios:

* training: forward-KL steps per second (batch 256, in the training dtype);
* ``score_samples`` and ``sample`` throughput of the fitted estimators
  (float64, chunked, as users call them), and the TT base's own share of the
  scoring cost (the issue's rule: at most half the flow's own cost);
* sweeps over ``n`` (points scored), ``d`` and ``tt_rank``;
* the GPU goal: the TT base's ``log_prob`` against an 8-layer RealNVP's
  ``log_prob`` on the same points (d = 64, tt_rank = 8, n_basis = 16,
  N = 10^6, float32), both as bare torch modules.

Peak memory is measured by ``bench_memory.py``.

Usage (from the repository root)::

    python benchmarks/bench_speed.py [--device cpu|cuda] [--quick] [--threads T] [--output DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

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
from sktt_flow.flows import GaussianBase, TensorizingFlow, build_flow_layers

SEED = 0


def mixture_data(n: int, d: int, seed: int = SEED) -> np.ndarray:
    """Four well separated Gaussian clusters in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4.0, 4.0, size=(4, d))
    return centres[rng.integers(4, size=n)] + 0.5 * rng.standard_normal((n, d))


def median(times: list[float]) -> float:
    return statistics.median(times)


class Timer:
    """Repeats under one rule per device (see ``_common.repeat_timed``)."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        self.rules = {
            "min_time": 0.2 if quick else 0.5,
            "min_repeats": 1 if quick else 3,
            "max_time": 5.0 if quick else 15.0,
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
    model = estimator.flow_.__class__(estimator.flow_.q0, list(estimator.flow_.flows))
    model = model.to(torch.float32)
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
    # fit leaves the models float64 and frozen: the training steps used copies
    for estimator in (tt, gaussian):
        estimator.flow_.to(torch.float64).requires_grad_(False)
    row["train_tt_steps_per_s"] = n_steps / train_tt_s
    row["train_gaussian_steps_per_s"] = n_steps / train_gaussian_s
    # The TT base's own share of scoring, from the pairs' ratio (steadier than
    # a difference of separately timed medians), and its log_prob alone.
    row["tt_share_of_flow_cost"] = row["score_ratio"] - 1.0
    with torch.no_grad():
        latent = torch.tensor(X, device=tt.device_)
        latent, _ = tt.flow_.inverse_and_log_det(latent)
    row["tt_base_log_prob_s"] = timer(lambda: tt.tt_.log_prob(latent))
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


def goal_row(device: torch.device, timer: Timer, n_points: int) -> dict:
    """TT base log_prob against an 8-layer RealNVP log_prob, float32, same points."""
    d, rank, n_basis = 64, 8, 16
    generator = torch.Generator().manual_seed(SEED)
    cores = [
        torch.randn(1 if k == 0 else rank, n_basis, 1 if k == d - 1 else rank, generator=generator)
        for k in range(d)
    ]
    base = TTDistribution(cores, [[-3.0, 3.0]] * d).canonicalize_().to(device, torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layers = build_flow_layers("realnvp", d, n_layers=8, hidden_units=64)
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


def markdown(metadata: dict, rows: list[dict], goal: dict) -> str:
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
        json.dumps({"metadata": metadata, "rows": rows, "goal": goal}, indent=2),
    )
    write_atomically(arguments.output / f"{stem}.md", markdown(metadata, rows, goal))
    print(f"Wrote {arguments.output / stem}.json and .md")


if __name__ == "__main__":
    main()

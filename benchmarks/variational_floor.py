"""The floor of a variational step on a TT base: what exact draws cost next to the flow.

Issue 15 asks for reverse-KL steps on a frozen TT base at most 1.5 times the
Gaussian-base flow's. Every step draws ``batch_size`` fresh exact base draws
(from the pool of ``fit_reverse_kl``, in blocks of
:data:`~sktt_flow.training.reverse_kl.POOL_SIZE`); the rest of the step, the
flow's forward and backward pass and the target, is the same on both bases.
So the step ratio is at least ``1 + s / g``, with ``s`` the sampler's time for
one step's draws in the pool's blocks and ``g`` the Gaussian-base step: the
goal needs ``s <= g / 2``. For each shape of the variational suite
(``bench_speed.VARIATIONAL_SHAPES``, a random smooth train of that shape) this
script measures ``s`` (draws with their log-densities, float32, one call per
block, as the pool makes them) and ``g`` (``fit_reverse_kl`` on the Gaussian
base, per step), and counts the multiply-adds of the matrix products per draw
on both sides: the sampler's (per coordinate, the map from the prefix's packed
outer product to the conditional CDF, in the order the sampler picks, and the
prefix's advance through the core) and the flow step's (its linear layers,
forward and backward: three times the forward's). The sampler also runs
elementwise work the count leaves out (the Legendre table, Newton's
iterations on a series of ``2 n_basis`` terms), so the count is a lower bound
of its arithmetic.

Run ``python benchmarks/variational_floor.py`` (about 3 minutes on one CPU
thread); ``--output DIR`` writes ``variational_floor.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import repeat_timed_pair, run_metadata, write_atomically
from bench_speed import SEED, VARIATIONAL_SHAPES, reverse_kl_fit, smooth_random_train

from sktt_flow.flows import GaussianBase
from sktt_flow.flows.builders import build_flow_layers
from sktt_flow.training.reverse_kl import POOL_SIZE, STEPS_PER_ITERATION
from sktt_flow.tt.sampling import _cdf_factors, conditional_cdf_operators

BATCH_SIZE = 256
N_LAYERS, HIDDEN_UNITS = 8, 64


def sampler_multiply_adds(base) -> int:
    """Multiply-adds of the sampler's matrix products per draw (see the module
    docstring), summed over the coordinates of the train ``base``: the
    matrices of :func:`~sktt_flow.tt.sampling._cdf_factors` (the products in
    the order the sampler applies them) and the advance through each core."""
    cores = [core.detach() for core in base.cores]
    operators = conditional_cdf_operators(base.n_basis, cores[0].dtype)
    cdf = sum(
        factor.shape[0] * factor.shape[1]
        for factors in _cdf_factors(cores, operators)
        for factor in factors
    )
    advance = sum(core.shape[0] * core.shape[1] * core.shape[2] for core in cores)
    return cdf + advance


def flow_step_multiply_adds(d: int) -> int:
    """Multiply-adds of the flow's linear layers per draw and step: forward,
    and backward to the inputs and to the weights."""
    layers = build_flow_layers("realnvp", d, n_layers=N_LAYERS, hidden_units=HIDDEN_UNITS)
    forward = sum(
        module.in_features * module.out_features
        for layer in layers
        for module in layer.modules()
        if isinstance(module, torch.nn.Linear)
    )
    return 3 * forward


def measure(name: str, d: int, rank: int, n_basis: int, max_iter: int) -> dict:
    """One shape's row: the sampler's block and the Gaussian-base fit timed in
    turn (so that a drifting machine slows both alike), each pair's floor
    ``1 + s / g`` and the median of them."""
    base = smooth_random_train(d, rank, n_basis).to(torch.float32)
    base.requires_grad_(False)
    generator = torch.Generator().manual_seed(SEED)
    block = BATCH_SIZE * (POOL_SIZE["cpu"] // BATCH_SIZE)

    def draw_block() -> None:
        with torch.no_grad():
            base(block, generator=generator)

    gaussian_fit = reverse_kl_fit(
        GaussianBase(torch.zeros(d), torch.ones(d)), d, torch.device("cpu"), max_iter
    )
    draw_block()  # the operators' cache and the allocator warmed up
    gaussian_fit()
    block_times, fit_times = repeat_timed_pair(
        draw_block,
        gaussian_fit,
        torch.device("cpu"),
        min_time=2.0,
        min_repeats=3,
        max_time=20.0,
        max_repeats=7,
    )
    n_steps = max_iter * STEPS_PER_ITERATION
    sampler = np.array(block_times) * BATCH_SIZE / block
    steps = np.array(fit_times) / n_steps
    sampler_macs = sampler_multiply_adds(base)
    flow_macs = flow_step_multiply_adds(d)
    return {
        "target": name,
        "d": d,
        "tt_rank": rank,
        "n_basis": n_basis,
        "sampler_ms_per_step": 1e3 * float(np.median(sampler)),
        "gaussian_ms_per_step": 1e3 * float(np.median(steps)),
        "step_ratio_floor": float(np.median(1.0 + sampler / steps)),
        "sampler_speedup_needed": float(np.median(sampler / (0.5 * steps))),
        "sampler_multiply_adds_per_draw": sampler_macs,
        "flow_step_multiply_adds_per_draw": flow_macs,
        "multiply_add_floor": 1.0 + sampler_macs / flow_macs,
    }


def markdown(metadata: dict, rows: list[dict]) -> str:
    lines = [
        "# The floor of a variational step on a TT base",
        "",
        f"`{metadata['command']}` on {metadata['date']}; {metadata['cpu']}; "
        f"torch {metadata['versions']['torch']}, {metadata['torch_num_threads']} thread(s), "
        f"load average at start {metadata['load_average_start']}.",
        "",
        "Per step of batch 256: the sampler's time for the step's exact draws with",
        "their log-densities (float32, in the pool's blocks of 32,768), the same",
        "RealNVP's whole step on a Gaussian base, and the floor of the step ratio",
        "`1 + sampler / step` (the goal of issue 15: at most 1.5), with the factor",
        "by which the sampler would have to be faster to allow it. The multiply-add",
        "columns count the matrix products per draw (the sampler's: the CDF maps and",
        "the advance through the cores; the flow step's: its linear layers forward",
        "and backward) and the floor `1 + sampler / flow step` they would give if",
        "both ran at the same rate; the sampler's elementwise work (Newton's",
        "iterations, the Legendre tables) is not counted.",
        "",
        "| target shape | d | tt_rank | n_basis | sampler ms/step | Gaussian-base ms/step "
        "| floor of the step ratio | sampler speed-up needed | sampler / flow multiply-adds "
        "per draw | multiply-add floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']} | {row['d']} | {row['tt_rank']} | {row['n_basis']} "
            f"| {row['sampler_ms_per_step']:.1f} | {row['gaussian_ms_per_step']:.1f} "
            f"| {row['step_ratio_floor']:.2f} | {row['sampler_speedup_needed']:.1f} "
            f"| {row['sampler_multiply_adds_per_draw']:,} / "
            f"{row['flow_step_multiply_adds_per_draw']:,} | {row['multiply_add_floor']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--max-iter", type=int, default=20, help="iterations of 10 steps per Gaussian-base fit"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, d, rank, n_basis in VARIATIONAL_SHAPES:
        rows.append(measure(name, d, rank, n_basis, arguments.max_iter))
        print(rows[-1], flush=True)
    metadata = run_metadata("targets", [row["target"] for row in rows])
    text = markdown(metadata, rows)
    print(text)
    if arguments.output is not None:
        arguments.output.mkdir(parents=True, exist_ok=True)
        write_atomically(
            arguments.output / "variational_floor.json",
            json.dumps({"metadata": metadata, "rows": rows}, indent=2) + "\n",
        )
        write_atomically(arguments.output / "variational_floor.md", text)


if __name__ == "__main__":
    main()

"""The GPU's own code paths against the CPU's, on the same device, timed in turn.

On a GPU the TT base takes three paths that a CPU does not (each switched by a
module constant, so both can run in one process on the same device):

* ``log_prob`` of up to 32,768 rows by a binary tree of batched products
  (:data:`sktt_flow.tt.distribution.TREE_CONTRACTION_DEVICES`) instead of a
  running row vector, and the normaliser likewise;
* the sampler's Newton iterations on a table of Chebyshev polynomials
  (:data:`sktt_flow.tt.sampling.TABLE_DEVICES`) instead of Clenshaw's
  recurrence;
* the variational pool's blocks of 262,144 draws
  (:data:`sktt_flow.training.reverse_kl.POOL_SIZE`) instead of the CPU's
  32,768, in reverse-KL fits against the same flow on a Gaussian base.

Run:

    python benchmarks/bench_gpu_paths.py [--device cuda] [--quick] [--output DIR]

Writes ``gpu_paths_<device>.json`` and ``.md``. Float32, smooth random trains
of the variational suite's shapes (``bench_speed.smooth_random_train``).
``--device cpu`` runs the same comparisons on a CPU (as a smoke test: there
the CPU's paths are the faster). Part of ``gpu_suite.sh``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import (
    repeat_timed,
    repeat_timed_pair,
    run_metadata,
    synchronize,
    write_atomically,
)
from bench_speed import median, reverse_kl_fit, smooth_random_train

import sktt_flow.training.reverse_kl as reverse_kl
import sktt_flow.tt.distribution as distribution
import sktt_flow.tt.sampling as sampling
from sktt_flow.flows import GaussianBase

#: (d, tt_rank, n_basis) of the variational suite's shapes used here.
SHAPES = ((32, 8, 16), (16, 8, 54), (11, 8, 256), (64, 16, 54))


def paired(call_a, call_b, device: torch.device, quick: bool) -> tuple[float, float]:
    """Median seconds of two calls timed in turn, after one warm-up each."""
    call_a()
    call_b()
    synchronize(device)
    times_a, times_b = repeat_timed_pair(
        call_a,
        call_b,
        device,
        min_time=0.2 if quick else 1.0,
        min_repeats=2 if quick else 5,
        max_time=3.0 if quick else 10.0,
        max_repeats=20,
    )
    return median(times_a), median(times_b)


def once(call, device: torch.device) -> float:
    """Seconds of one ``call()`` after an untimed one."""
    call()
    return repeat_timed(call, device, min_time=0.0, min_repeats=1, max_time=0.0, max_repeats=1)[0]


def with_setting(module, name: str, value, call):
    """``call`` run with ``module.name`` set to ``value``, then restored."""

    def run():
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            return call()
        finally:
            setattr(module, name, saved)

    return run


def path_row(module, name: str, call, device: torch.device, quick: bool, **row) -> dict:
    """``row`` with the seconds of ``call`` with ``module.name`` empty (the
    CPU's path) and holding ``device``'s type (the GPU's), timed in turn."""
    cpu_s, gpu_s = paired(
        with_setting(module, name, (), call),
        with_setting(module, name, (device.type,), call),
        device,
        quick,
    )
    return {**row, "cpu_path_s": cpu_s, "gpu_path_s": gpu_s}


def log_prob_rows(device: torch.device, quick: bool) -> list[dict]:
    """``log_prob`` (no gradient) and a training batch's forward and backward,
    by the tree and by the running vector."""
    rows = []
    for d, rank, n_basis in SHAPES[::3] if quick else SHAPES:
        train = smooth_random_train(d, rank, n_basis).to(device, torch.float32)
        shape = {"d": d, "tt_rank": rank, "n_basis": n_basis}
        for n_points in (256, 10_000) if quick else (256, 10_000, 32_768):
            z = train.sample(n_points, generator=torch.Generator(device).manual_seed(0))

            def score(z=z, train=train):
                with torch.no_grad():
                    return train.log_prob(z)

            rows.append(
                path_row(
                    distribution,
                    "TREE_CONTRACTION_DEVICES",
                    score,
                    device,
                    quick,
                    **shape,
                    n_points=n_points,
                    what="log_prob",
                )
            )
        batch = z[:256].clone().requires_grad_()

        def step(batch=batch, train=train):
            for core in train.cores:
                core.grad = None
            train.log_prob(batch).sum().backward()

        rows.append(
            path_row(
                distribution,
                "TREE_CONTRACTION_DEVICES",
                step,
                device,
                quick,
                **shape,
                n_points=256,
                what="log_prob forward and backward",
            )
        )
    return rows


def sampler_rows(device: torch.device, quick: bool) -> list[dict]:
    """Draws with their log-density (``forward``, as the pool), by the table
    and by Clenshaw's recurrence."""
    rows = []
    for d, rank, n_basis in SHAPES[::3] if quick else SHAPES:
        train = smooth_random_train(d, rank, n_basis).to(device, torch.float32)
        for n_draws in (10_000,) if quick else (10_000, 32_768, 262_144):

            def draw(train=train, n_draws=n_draws):
                with torch.no_grad():
                    return train.forward(n_draws, generator=torch.Generator(device).manual_seed(0))

            rows.append(
                path_row(
                    sampling,
                    "TABLE_DEVICES",
                    draw,
                    device,
                    quick,
                    d=d,
                    tt_rank=rank,
                    n_basis=n_basis,
                    n_points=n_draws,
                    what="forward (draws and log q)",
                )
            )
    return rows


def pool_rows(device: torch.device, quick: bool) -> list[dict]:
    """Reverse-KL fits on a TT base with the CPU's and the GPU's pool blocks,
    and the same flow on a Gaussian base, per step (300-step fits, as the
    GPU's pool pays for a block of 262,144 draws at once; 30 with
    ``quick``)."""
    max_iter = 3 if quick else 30
    n_steps = max_iter * reverse_kl.STEPS_PER_ITERATION
    rows = []
    for d, rank, n_basis in SHAPES[1:2] if quick else SHAPES[1:]:

        def fit(base, block, d=d):
            pool = dict(reverse_kl.POOL_SIZE, **{device.type: block})
            return with_setting(
                reverse_kl, "POOL_SIZE", pool, reverse_kl_fit(base, d, device, max_iter)
            )

        train = smooth_random_train(d, rank, n_basis)
        gaussian = GaussianBase(torch.zeros(d), torch.ones(d))
        # whole fits, each timed once after a warm-up fit: a few seconds each
        small_s, large_s, gaussian_s = (
            once(fit(base, block), device)
            for base, block in ((train, 32_768), (train, 1 << 18), (gaussian, 32_768))
        )
        rows.append(
            {
                "d": d,
                "tt_rank": rank,
                "n_basis": n_basis,
                "n_steps": n_steps,
                "ms_per_step_blocks_32768": 1e3 * small_s / n_steps,
                "ms_per_step_blocks_262144": 1e3 * large_s / n_steps,
                "gaussian_ms_per_step": 1e3 * gaussian_s / n_steps,
            }
        )
    return rows


def markdown(metadata: dict, paths: list[dict], pools: list[dict]) -> str:
    lines = [
        f"# The GPU's code paths against the CPU's ({metadata['device']})",
        "",
        f"`{metadata['command']}` on {metadata['date']}; {metadata['device_name']}; "
        f"torch {metadata['versions']['torch']}; git {metadata['git']}.",
        "",
        "Float32, smooth random trains; both paths on the same device, timed in turn "
        "(medians). `cpu path`: the running vector (log_prob) or Clenshaw's recurrence "
        "(sampler); `gpu path`: the tree or the table.",
        "",
        "| operation | d | tt_rank | n_basis | points | cpu path ms | gpu path ms | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in paths:
        lines.append(
            f"| {row['what']} | {row['d']} | {row['tt_rank']} | {row['n_basis']} | "
            f"{row['n_points']:,} | {1e3 * row['cpu_path_s']:.2f} | "
            f"{1e3 * row['gpu_path_s']:.2f} | {row['cpu_path_s'] / row['gpu_path_s']:.2f} |"
        )
    lines += [
        "",
        "Reverse-KL fits (batch 256, 8-layer RealNVP, standard normal target) on a "
        "TT base with pool blocks of 32,768 and 262,144 draws, against the same flow "
        "on a Gaussian base (ms per step, validations included):",
        "",
        "| d | tt_rank | n_basis | steps | blocks 32,768 | blocks 262,144 | Gaussian base "
        "| ratios |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in pools:
        small, large = row["ms_per_step_blocks_32768"], row["ms_per_step_blocks_262144"]
        gaussian = row["gaussian_ms_per_step"]
        lines.append(
            f"| {row['d']} | {row['tt_rank']} | {row['n_basis']} | {row['n_steps']} | "
            f"{small:.1f} | {large:.1f} | {gaussian:.1f} | "
            f"{small / gaussian:.2f} / {large / gaussian:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    metadata = run_metadata("shapes", [str(shape) for shape in SHAPES])
    metadata["device"] = device.type
    metadata["device_name"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else metadata["cpu"]
    )
    paths = log_prob_rows(device, arguments.quick) + sampler_rows(device, arguments.quick)
    for row in paths:
        print(row, flush=True)
    pools = pool_rows(device, arguments.quick)
    for row in pools:
        print(row, flush=True)
    stem = f"gpu_paths_{device.type}{'_quick' if arguments.quick else ''}"
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_atomically(
        arguments.output / f"{stem}.json",
        json.dumps({"metadata": metadata, "paths": paths, "pools": pools}, indent=2),
    )
    write_atomically(arguments.output / f"{stem}.md", markdown(metadata, paths, pools))
    print(f"Wrote {arguments.output / stem}.json and .md")


if __name__ == "__main__":
    main()

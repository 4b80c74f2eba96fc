"""GinzburgLandau1D(16) fitted on a GPU: the tensorizing flow and the same flow
on a Gaussian base, with the same steps and optimiser.

    python benchmarks/gpu_vi_check.py [--device cuda] [--output DIR]

Writes ``vi_gpu_check.json`` and ``.md``. Part of ``gpu_suite.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import source_digest, write_atomically

import sktt_flow
from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import GinzburgLandau1D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--max-iter", type=int, default=100, help="rounds of 10 steps")
    arguments = parser.parse_args()
    target = GinzburgLandau1D(16)
    rows = []
    for base in ("tt", "gaussian"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = TensorizingFlowDensity(
                base=base,
                log_target=target.log_prob,
                domain=target.domain,
                max_iter=arguments.max_iter,
                n_iter_no_change=arguments.max_iter,  # same steps for both bases
                batch_size=1024,
                device=arguments.device,
                random_state=0,
            ).fit()
        samples = torch.as_tensor(model.sample(20_000, random_state=1))
        masses = np.bincount(target.mode_of(samples).numpy(), minlength=target.n_modes) / 20_000
        rows.append(
            {
                "base": base,
                "reverse_kl": target.log_normalizer - model.elbo_,
                "log_z_error": abs(model.log_normalizer_ - target.log_normalizer),
                "log_z_std_error": model.log_normalizer_std_error_,
                "ess": model.ess_,
                "mode_masses": masses.tolist(),
                "n_target_evaluations": model.n_target_evaluations_,
                "fit_seconds": model.fit_time_,
                "n_iter": model.n_iter_,
                "warnings": sorted({type(w.message).__name__ for w in caught}),
            }
        )
        print(rows[-1], flush=True)
    metadata = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "sktt_flow": sktt_flow.__version__,
        "source_sha256": source_digest(),
        "settings": f"max_iter=n_iter_no_change={arguments.max_iter} (x10 steps), batch_size=1024",
    }
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_atomically(
        arguments.output / "vi_gpu_check.json",
        json.dumps({"metadata": metadata, "rows": rows}, indent=2),
    )
    lines = [
        f"# GinzburgLandau1D(16) on {metadata['device_name']}",
        "",
        f"`{metadata['command']}` on {metadata['date']}; {metadata['settings']}.",
        "",
        "| base | reverse KL | abs log Z error | ESS | mode masses | evaluations | fit (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        masses = " / ".join(f"{m:.3f}" for m in row["mode_masses"])
        lines.append(
            f"| {row['base']} | {row['reverse_kl']:.4f} | {row['log_z_error']:.4f} | "
            f"{row['ess']:.3f} | {masses} | {row['n_target_evaluations']:,} | "
            f"{row['fit_seconds']:.1f} |"
        )
    write_atomically(arguments.output / "vi_gpu_check.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: provenance and result files.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder
on ``sys.path``; that is how they import this module.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sktt_flow


def source_digest() -> str:
    """SHA-256 of the package's Python sources, to tell which code was run."""
    digest = hashlib.sha256()
    root = Path(sktt_flow.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, where the platform has them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat_timed(
    call: Callable[[], object],
    device: torch.device,
    *,
    min_time: float,
    min_repeats: int,
    max_time: float,
    max_repeats: int,
) -> list[float]:
    """Wall-clock seconds of repeated ``call()``, each bracketed by :func:`synchronize`.

    Repeats until ``min_time`` seconds and ``min_repeats`` repeats are both
    reached, or ``max_time`` seconds are spent, or ``max_repeats`` are done.
    Warm up before calling this.
    """
    times: list[float] = []
    while True:
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
        total = sum(times)
        if len(times) >= max_repeats or total >= max_time:
            return times
        if total >= min_time and len(times) >= min_repeats:
            return times

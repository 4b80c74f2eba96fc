"""Helpers shared by the benchmark scripts: provenance and result files.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder
on ``sys.path``; that is how they import this module.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def repeat_timed_pair(
    call_a: Callable[[], object],
    call_b: Callable[[], object],
    device: torch.device,
    *,
    min_time: float,
    min_repeats: int,
    max_time: float,
    max_repeats: int,
) -> tuple[list[float], list[float]]:
    """Seconds of ``call_a()`` and ``call_b()``, timed alternately (a, b, a, b, ...).

    On shared CPUs the speed of the machine drifts within seconds; timing the
    two in turn exposes both to the same drift, so the ratio of each pair is
    far steadier than the ratio of two separate medians. The rules are those
    of :func:`repeat_timed`, applied to the time of both calls together.
    Warm both up before calling this.
    """
    times_a: list[float] = []
    times_b: list[float] = []
    while True:
        for call, times in ((call_a, times_a), (call_b, times_b)):
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            times.append(time.perf_counter() - start)
        total = sum(times_a) + sum(times_b)
        if len(times_a) >= max_repeats or total >= max_time:
            return times_a, times_b
        if total >= min_time and len(times_a) >= min_repeats:
            return times_a, times_b


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo``, else ``platform``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """``git describe --always --dirty`` of the checkout, where there is one."""
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def header_rule(header: str) -> str:
    """The ``|---|---|`` line under a Markdown header."""
    return "|" + "---|" * (header.count("|") - 1)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"nan"``): strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def count_warnings(caught: Sequence[warnings.WarningMessage]) -> dict[str, int]:
    """Warnings by category and the start of their message."""
    counts: dict[str, int] = {}
    for item in caught:
        text = str(item.message).strip().splitlines()[0] if str(item.message).strip() else ""
        key = f"{item.category.__name__}: {text[:90]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def as_float(value: Any) -> float | None:
    """A JSON value as a float (non-finite floats are stored as strings), or None."""
    return None if value is None else float(value)


def format_value(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``; ``n/a`` for None or NaN."""
    value = as_float(value)
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return str(value)
    return format(value, spec)


def merge_results(
    path: Path,
    payload: dict[str, Any],
    order: Sequence[str],
    methods: Sequence[str],
) -> dict[str, Any]:
    """``payload`` merged into the result file at ``path`` (same settings only).

    The result rows of the (key, method) pairs that ``payload`` ran replace
    the old ones, so that a rerun of some methods keeps the other methods'
    rows; ``cases`` (where the suite has them) are replaced by key. Rows are
    sorted in suite ``order`` and then by method; the runs are appended, the
    new rows renumbered to point at them, and runs that no row comes from any
    more (every row of theirs replaced) are dropped.
    """
    old = json.loads(path.read_text(encoding="utf-8"))
    old_settings, new_settings = old["metadata"]["settings"], payload["metadata"]["settings"]
    # The methods run may differ: rows are replaced per method, and the file
    # lists every method it holds.
    if {k: v for k, v in old_settings.items() if k != "methods"} != {
        k: v for k, v in new_settings.items() if k != "methods"
    }:
        raise SystemExit(f"--merge: {path} was made with other settings; not merging.")
    if "methods" in new_settings:
        held = set(old_settings.get("methods", [])) | set(new_settings["methods"])
        new_settings["methods"] = [method for method in methods if method in held]
    new_keys = {row["key"] for row in payload["results"]}
    new_keys |= {case["key"] for case in payload.get("cases", [])}
    runs = old["metadata"]["runs"]
    for row in payload["results"]:
        row["run"] += len(runs)
    merged: dict[str, Any] = {"metadata": payload["metadata"]}
    if "cases" in payload:
        cases = [c for c in old["cases"] if c["key"] not in new_keys] + payload["cases"]
        merged["cases"] = sorted(cases, key=lambda c: order.index(c["key"]))
    new_pairs = {(row["key"], row["method"]) for row in payload["results"]}
    results = [r for r in old["results"] if (r["key"], r["method"]) not in new_pairs] + payload[
        "results"
    ]
    merged["results"] = sorted(
        results, key=lambda r: (order.index(r["key"]), methods.index(r["method"]))
    )
    payload["metadata"]["runs"] = runs + payload["metadata"]["runs"]
    return drop_unused_runs(merged)


def drop_unused_runs(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without the runs that none of its rows comes from, the rows
    renumbered to match (in place; returned for convenience)."""
    used = sorted({row["run"] for row in payload["results"]})
    position = {run: index for index, run in enumerate(used)}
    for row in payload["results"]:
        row["run"] = position[row["run"]]
    runs = payload["metadata"]["runs"]
    payload["metadata"]["runs"] = [runs[run] for run in used]
    return payload


def probe_payload(
    metadata: dict[str, Any], rows: list[dict[str, Any]], path: Path, *, merge: bool
) -> dict[str, Any]:
    """The ``{"runs", "rows"}`` payload of a probe script (one run, ``rows``
    all from it); with ``merge``, the rows of the other datasets in the
    probe's earlier file at ``path`` (if any) are kept, with their runs."""
    for row in rows:
        row["run"] = 0
    payload = {"runs": [metadata], "rows": rows}
    if merge and path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        datasets = {row["dataset"] for row in rows}
        kept = [row for row in old["rows"] if row["dataset"] not in datasets]
        for row in kept:
            row["run"] += 1
        payload = {"runs": [metadata, *old["runs"]], "rows": rows + kept}
    return payload


def run_probe(
    run: Callable[[str, int, Sequence[str]], list[dict[str, Any]]],
    args: Any,
    stem: str,
    render: Callable[[dict[str, Any]], str],
) -> Path:
    """A probe script's run: ``run(key, split, args.modes)`` for every dataset
    of ``args.datasets`` and split of ``args.splits``, on one torch thread,
    written to ``args.output/stem.json`` and ``.md`` (``render``); with
    ``args.merge`` the other datasets' rows of that file are kept
    (:func:`probe_payload`). Returns the JSON file's path."""
    torch.set_num_threads(1)
    metadata = run_metadata("datasets", args.datasets)
    rows = [
        row
        for key in args.datasets
        for split in args.splits
        for row in run(key, split, args.modes)
    ]
    path = args.output / f"{stem}.json"
    payload = probe_payload(metadata, rows, path, merge=args.merge)
    write_results(payload, args.output, stem, render, merge=False, order=[], methods=[])
    return path


def write_results(
    payload: dict[str, Any],
    output: Path,
    stem: str,
    render: Callable[[dict[str, Any]], str],
    *,
    merge: bool,
    order: Sequence[str],
    methods: Sequence[str],
) -> None:
    """``output/stem.json`` (strict JSON) and ``output/stem.md`` (``render``).

    With ``merge``, an existing ``stem.json`` keeps the rows of the keys that
    ``payload`` did not run (:func:`merge_results`).
    """
    payload = json.loads(json.dumps(json_safe(payload), allow_nan=False))
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{stem}.json"
    if merge and path.exists():
        payload = merge_results(path, payload, order, methods)
    write_atomically(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    write_atomically(output / f"{stem}.md", render(payload))


def run_metadata(label: str, keys: Sequence[str]) -> dict[str, Any]:
    """Where, when and with what one run was made; ``keys`` (under ``label``)
    are what it ran."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        label: list(keys),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": load_average(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "versions": {
            name: package_version(name)
            for name in ("torch", "numpy", "scipy", "scikit-learn", "normflows")
        },
        "sktt_flow_version": sktt_flow.__version__,
        "sktt_flow_source_sha256": source_digest(),
        "git": git_commit(),
    }


def lbfgs_ascent(log_prob: Callable, start, max_iter: int) -> tuple[torch.Tensor, int]:
    """Ascend ``log_prob`` (of (1, d) float64 points) from ``start`` by L-BFGS
    (float64, strong Wolfe line search): the point reached, detached, and the
    iterations taken. The step's warnings (overflow where a start runs away)
    are ignored: the caller judges the point."""
    point = torch.as_tensor(start, dtype=torch.float64).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [point],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = -log_prob(point[None]).sum()
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.step(closure)
    return point.detach(), int(optimizer.state[point].get("n_iter", 0))

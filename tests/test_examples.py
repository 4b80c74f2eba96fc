"""The examples run end to end and write their figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "figure"),
    [("demo.py", "ring_density.png"), ("plot_digits_pipeline.py", "digits_pipeline.png")],
)
def test_example_runs(script, figure, tmp_path):
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    path = tmp_path / figure
    assert path.is_file() and path.stat().st_size > 0, f"{script} wrote no {figure}"

"""Every example script runs end to end and writes at least one figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(path.name for path in EXAMPLES.glob("*.py"))


def test_examples_are_found():
    assert "demo.py" in SCRIPTS, f"no examples found in {EXAMPLES}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "output"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output", str(output)],
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    figures = [path for path in output.rglob("*.png") if path.stat().st_size > 0]
    assert figures, f"{script} wrote no non-empty PNG to {output}:\n{result.stdout}"

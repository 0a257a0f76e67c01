"""Every benchmark still runs: each in a tiny configuration (seconds of audio, a few messages), as
`benchmarks/run_all.py --tiny` runs it. Only that it completes and reports figures is checked, never the
figures (shared machines; goals are read from full runs). Takes ~1-2 min in all: the reason is that a
benchmark nobody runs rots (bench_osc crashed for weeks before this test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from run_all import BENCHMARKS as ALL  # noqa: E402
from run_all import RESULT_PREFIX  # noqa: E402


def test_run_all_knows_every_benchmark_script() -> None:
    assert sorted(ALL) == sorted(path.stem for path in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_benchmark_runs_and_reports(name: str, tmp_path: Path) -> None:
    _full, tiny = ALL[name]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *tiny], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(lines) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0][len(RESULT_PREFIX):])
    assert result["benchmark"] == name and result["rows"]
    assert all(row["figure"] and row["measured"] not in ("", "-") for row in result["rows"])

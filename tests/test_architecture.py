"""The direction of imports is a contract: import-linter's contracts in pyproject.toml, run here.

A second test writes a module that breaks a contract on purpose into a copy of the package, so the check
is shown able to fail (a contract that cannot fail proves nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def run_contracts(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold() -> None:
    result = run_contracts(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept, 0 broken" in result.stdout and result.stdout.count("KEPT") >= 5


@pytest.mark.parametrize(
    ("offender", "line", "contract"),
    [
        ("fal/uses_folders.py", "from bridge.hotfolder import watcher\n", "fal/ knows HTTP"),
        ("audio/uses_http.py", "from bridge.fal import client\n", "audio/ knows samples"),
        ("osc/uses_samples.py", "from bridge.audio import conform\n", "A way in"),
        ("engine/calls_up.py", "from bridge.osc import server\n", "Layers"),
        ("local_service/uses_client.py", "from bridge.fal import client\n", "stand-in"),
    ],
)
def test_a_broken_contract_is_caught(tmp_path: Path, offender: str, line: str, contract: str) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(ROOT / "bridge", copy / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "bridge" / offender).write_text(line)
    result = run_contracts(copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and offender.split("/")[1].removesuffix(".py") in broken

"""The README's tables come from the declarations, and CI runs the README's own test command."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.common.flags import FLAG_TEXT
from bridge.docs import README, SECTIONS, render

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_match_the_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    for name in SECTIONS:
        assert f"<!-- BEGIN {name} -->" in text, name
    assert render(text) == text, "README tables are stale: run `python -m bridge.docs`"


def test_every_declared_flag_is_in_the_readmes_manifest_and_status_tables() -> None:
    text = README.read_text(encoding="utf-8")
    for section in ("manifest-schema", "status-schema"):
        table = text.split(f"<!-- BEGIN {section} -->")[1].split(f"<!-- END {section} -->")[0]
        (row,) = [line for line in table.splitlines() if line.startswith("| `flags` |")]
        missing = [flag for flag in FLAG_TEXT if f"`{flag}`" not in row]
        assert not missing, f"{section} table leaves out {missing}"
        if section == "manifest-schema":  # where each is explained
            assert all(f"`{flag}`: {meaning}" in row for flag, meaning in FLAG_TEXT.items())


def test_ci_runs_exactly_the_readme_test_command() -> None:
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:40])
    commands = re.findall(r"```sh\n(.*?)\n```", first_screen, re.S)
    assert len(commands) >= 2
    run_daemon, run_tests = commands[0], commands[1]
    assert "sam-bridge run" in run_daemon
    test_command = run_tests.split("&&", 2)[-1].strip()  # after creating and activating the venv
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")

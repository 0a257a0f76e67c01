"""-v and -q work after any sub-command as before it (`sam-bridge status -v` was refused with
"unrecognized arguments"): the real command in a subprocess, against the in-process stand-in."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import build_parser
from tests.commands.test_cli_separate import data_env, make_source, music  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


def sam_bridge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *map(str, args)], capture_output=True, text=True,
                          env=data_env(), timeout=60)


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every sub-command's parser, nested ones (`config show`) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub.prog, sub
                yield from parsers(sub)


def test_every_sub_command_takes_v_and_q_after_it() -> None:
    found = dict(parsers(build_parser()))
    assert {"sam-bridge status", "sam-bridge run", "sam-bridge separate", "sam-bridge config show"} <= set(found)
    for prog, parser in found.items():
        assert {"-v", "--verbose", "-q", "--quiet"} <= set(parser._option_string_actions), prog


def test_v_and_q_after_separate_set_how_much_it_logs(user_dirs: dict[str, Path], music: Path) -> None:  # noqa: F811
    a = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5).path
    b = make_source(music / "b.wav", 44100, 1, "PCM_16", 0.5).path
    common = ("--prompt", "hi-hat", "--local")

    after = sam_bridge("separate", a, b, *common, "--output-dir", music / "1", "-v")
    assert after.returncode == 0, after.stderr
    assert " INFO bridge." in after.stderr and " DEBUG " not in after.stderr
    assert "[1/2] a.wav" in after.stderr  # what -q leaves out, below

    before = sam_bridge("-v", "separate", a, *common, "--output-dir", music / "2")
    assert before.returncode == 0, before.stderr
    assert " INFO bridge." in before.stderr

    both = sam_bridge("-v", "separate", a, *common, "--output-dir", music / "3", "-v")  # counts as -vv
    assert both.returncode == 0, both.stderr
    assert " DEBUG " in both.stderr

    quiet = sam_bridge("-v", "separate", a, b, *common, "--output-dir", music / "4", "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert " INFO " not in quiet.stderr and "[1/2]" not in quiet.stderr
    assert (music / "4" / "b - hi-hat.target.wav").exists()


def test_v_and_q_after_status_are_accepted(user_dirs: dict[str, Path]) -> None:
    plain = sam_bridge("status")
    assert plain.returncode == 0, plain.stderr
    for option in ("-v", "-vv", "-q", "--verbose", "--quiet"):
        shown = sam_bridge("status", option)
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, plain.stdout, ""), option


def test_v_and_q_after_run_set_the_daemons_log_level(daemon_factory, service) -> None:
    loud = daemon_factory(service.url, extra=["-v"])
    loud.start()
    assert loud.stop() == 0
    assert " DEBUG " in loud.output(), loud.output()

    quiet = daemon_factory(service.url, extra=["-q"])
    quiet.start()
    assert quiet.stop() == 0
    assert " INFO " not in quiet.output() and " DEBUG " not in quiet.output(), quiet.output()

"""`sam-bridge separate FILE --resume-request ID` collects ID's result for FILE only when ID was sent for
FILE: the same audio, part, prompt, spans and options. A request of another file (or another prompt) is
refused with nothing written, never its stems beside this file. Real files, the stand-in over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.local_service import LocalFalService
from tests.commands.test_cli_separate import cli
from tests.test_daemon import make_source


def separated(source: Path, service: LocalFalService, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Separate `source` for real; the id of its request."""
    assert cli("separate", source, "--prompt", "bass", "--service-url", service.url, "--json", *extra) == 0
    (request_id,) = json.loads(capsys.readouterr().out)["request_ids"]
    return str(request_id)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    music = tmp_path / "music"
    music.mkdir()
    return make_source(music / "a.wav", seconds=1.0, seed=1), make_source(music / "b.wav", seconds=1.0, seed=2)


def test_a_request_of_another_file_is_refused_and_nothing_written(
        keyed: dict[str, Path], service: LocalFalService, two_files: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_files
    request_id = separated(a, service, capsys)
    before = files_under(a.parent)
    rc = cli("separate", b, "--prompt", "bass", "--service-url", service.url, "--resume-request", request_id)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert f"Request {request_id} was sent for “a.wav” ({a}), not for “b.wav”" in err, err
    assert "without --resume-request" in err
    assert files_under(a.parent) == before and out == ""  # not a stem of a's beside b
    assert service.stats()["submits"] == 1


@pytest.mark.parametrize(("again", "says"), [
    pytest.param(["--prompt", "drums"], "the prompt “bass” (not “drums”)", id="prompt"),
    pytest.param(["--prompt", "bass", "--candidates", "3"], "options reranking_candidates=1 (not 3)", id="options"),
    pytest.param(["--prompt", "bass", "--start", "0.5"], "part start=none (not 0.5)", id="part"),
    pytest.param(["--prompt", "bass", "--span", "0-0.5"], "spans none (not 0-0.5)", id="spans"),
])
def test_a_request_sent_with_another_prompt_or_options_is_refused(
        keyed: dict[str, Path], service: LocalFalService, two_files: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str], again: list[str], says: str) -> None:
    a, _ = two_files
    request_id = separated(a, service, capsys)
    before = files_under(a.parent)
    rc = cli("separate", a, *again, "--service-url", service.url, "--resume-request", request_id)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"Request {request_id} was sent for “a.wav” with another prompt or options: " in err, err
    assert says in err, err
    assert files_under(a.parent) == before
    assert service.stats()["submits"] == 1


def test_a_file_changed_since_its_request_was_sent_is_refused(
        keyed: dict[str, Path], service: LocalFalService, two_files: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_files
    request_id = separated(a, service, capsys)
    a.write_bytes(b.read_bytes())  # rendered again: other audio under the same name
    before = files_under(a.parent)
    rc = cli("separate", a, "--prompt", "bass", "--service-url", service.url, "--resume-request", request_id)
    err = capsys.readouterr().err
    assert rc == 2 and f"“a.wav” changed since request {request_id} was sent" in err, err
    assert files_under(a.parent) == before


def test_the_request_of_this_very_file_is_collected(
        keyed: dict[str, Path], service: LocalFalService, two_files: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = two_files
    request_id = separated(a, service, capsys, "--start", "0.25")
    rc = cli("separate", a, "--prompt", "bass", "--start", "0.25", "--service-url", service.url, "--json",
             "--resume-request", request_id)
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["request_ids"] == [request_id]
    assert service.stats()["submits"] == 1  # collected, not sent again
    target, rate = sf.read(summary["stems"]["target"])
    residual, _ = sf.read(summary["stems"]["residual"])
    source, _ = sf.read(a)
    assert np.max(np.abs(target + residual - source[rate // 4:])) < 1e-6  # this file's part, to the sample


def test_the_requests_of_a_stem_set_are_checked_step_by_step(
        keyed: dict[str, Path], service: LocalFalService, two_files: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = two_files
    assert cli("separate", a, "--preset", "4-stems", "--service-url", service.url, "--json") == 0
    first, second, *_ = json.loads(capsys.readouterr().out)["request_ids"]
    sent = service.stats()["submits"]
    before = files_under(a.parent)
    rc = cli("separate", a, "--preset", "4-stems", "--service-url", service.url,
             "--resume-request", second, "--resume-request", first)
    err = capsys.readouterr().err
    assert rc == 2 and f"Request {second} was sent for step 2 of “a.wav”, not step 1." in err, err
    assert files_under(a.parent) == before and service.stats()["submits"] == sent

"""A span wholly outside the audio sent is refused before anything is uploaded or paid for: the service
would separate nothing there (a silent target, charged all the same); one running past its end is sent cut
there, and said so. A part (start/length) starting at or past the end of the file is refused the same way,
one running past it is cut there, and the estimate counts only what is sent. Through the CLI and a request
file, over real HTTP to the local service, whose counters show that nothing reached it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.local_service import LocalFalService
from tests.commands.test_cli_separate import cli
from tests.conftest import wait_for
from tests.test_daemon import make_source, requests_dir, wait_state, write_request


def nothing_reached(service: LocalFalService) -> bool:
    stats = service.stats()
    return stats["submits"] == 0 and not any(stats["calls"].values())


@pytest.mark.parametrize(("part", "span", "says"), [
    pytest.param([], "5-6", "starts at 5 s, after the end of “s.wav” (3.00 s long)", id="past-the-file"),
    pytest.param([], "3-4", "starts at 3 s, after the end of “s.wav” (3.00 s long)", id="at-the-end"),
    pytest.param([], "5-6:exclude", "starts at 5 s, after the end of “s.wav” (3.00 s long)", id="excluded"),
    pytest.param(["--start", "1", "--length", "1"], "1.5-1.8",
                 "starts at 1.5 s, after the end of the part of “s.wav” sent (1.00 s long)", id="past-the-part"),
])
def test_the_cli_refuses_a_span_outside_the_audio_before_sending_anything(
        keyed: dict[str, Path], service: LocalFalService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        part: list[str], span: str, says: str) -> None:
    source = make_source(tmp_path / "s.wav", seconds=3.0)
    rc = cli("separate", source, "--prompt", "bass", "--span", span, *part, "--service-url", service.url)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"The span {span.split(':')[0].replace('-', '–')} s {says}" in err, err
    assert "spans count from the start of the part" in err, err
    assert nothing_reached(service), service.stats()
    assert not (tmp_path / "Stems").exists()


def test_a_span_reaching_past_the_end_is_sent_cut_there_with_a_note(
        keyed: dict[str, Path], service: LocalFalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One that starts inside the audio is the user's: separated up to the end, and the manifest says so."""
    source = make_source(tmp_path / "s.wav", seconds=3.0)
    assert cli("separate", source, "--prompt", "bass", "--span", "2-4", "--service-url", service.url, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert service.stats()["submits"] == 1
    assert "span-cut-at-end" in json.loads(Path(summary["manifest"]).read_text())["flags"]
    target, rate = sf.read(summary["stems"]["target"])
    assert len(target) == 3 * rate  # the whole file, its stems aligned with it
    assert np.max(np.abs(target[: 2 * rate - 2400])) == 0.0  # the stand-in keeps only the span: 2 s to the end
    assert np.max(np.abs(target[2 * rate + 2400:])) > 0.05


def test_the_estimate_refuses_it_too(
        keyed: dict[str, Path], service: LocalFalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "s.wav", seconds=3.0)
    rc = cli("separate", source, "--prompt", "bass", "--span", "5-6", "--estimate")
    err = capsys.readouterr().err
    assert rc == 2 and "The span 5–6 s starts at 5 s" in err, err


def test_a_request_file_with_a_span_outside_the_audio_fails_before_anything_is_sent(
        daemon_factory: type, service: LocalFalService, user_dirs: dict[str, Path]) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "s.wav", seconds=3.0)
    request = write_request(requests_dir(info), "take", source=source, prompt="bass",
                            spans=[{"start": 5, "end": 6}])
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "failed", status
    assert "The span 5–6 s starts at 5 s, after the end of “s.wav” (3.00 s long)" in status["error"], status
    assert nothing_reached(service), service.stats()
    assert not (source.parent / "Stems").exists()
    assert daemon.stop() == 0


# -- the part (start/length): a REAPER time selection, a sidecar's or a request's start/length, --start/--length


@pytest.mark.parametrize("start", ["3", "5"])
def test_a_part_starting_at_or_past_the_end_of_the_file_is_refused_before_sending_anything(
        keyed: dict[str, Path], service: LocalFalService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        start: str) -> None:
    source = make_source(tmp_path / "s.wav", seconds=3.0)
    rc = cli("separate", source, "--prompt", "bass", "--start", start, "--length", "1", "--service-url", service.url)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"The start time {float(start):.2f} s is past the end of “s.wav” (3.00 s long)." in err, err
    assert nothing_reached(service), service.stats()
    assert not (tmp_path / "Stems").exists()
    assert cli("separate", source, "--prompt", "bass", "--start", start, "--estimate") == 2  # nor estimated


def test_the_estimate_of_a_part_running_past_the_end_counts_what_is_sent(
        keyed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "s.wav", seconds=3.0)
    assert cli("separate", source, "--prompt", "bass", "--start", "1", "--length", "60", "--estimate", "--json") == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files[0]["seconds"] == 2.0 and files[0]["estimated_cost"] == round(2 / 30 * 0.05, 4)


def test_a_request_file_with_a_part_past_the_end_fails_before_anything_is_sent(
        daemon_factory: type, service: LocalFalService, user_dirs: dict[str, Path]) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "s.wav", seconds=3.0)
    request = write_request(requests_dir(info), "late", source=source, prompt="bass", start=4.0, length=2.0)
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "failed", status
    assert "The start time 4.00 s is past the end of “s.wav” (3.00 s long)." in status["error"], status
    assert nothing_reached(service), service.stats()
    assert not (source.parent / "Stems").exists()
    assert daemon.stop() == 0


def test_a_hot_folder_sidecar_with_a_part_past_the_end_gets_an_error_file_and_nothing_is_sent(
        daemon_factory: type, service: LocalFalService, user_dirs: dict[str, Path]) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    folder = Path(str(info["hot_folder"])) / "vocals"
    (folder / "Late.sam.yaml").write_text("start: 5\nlength: 1\n")
    staged = make_source(user_dirs["home"] / "Late.wav", seconds=3.0)
    source = staged.replace(folder / "Late.wav")  # dropped whole, as a DAW export is renamed in
    error = source.with_name("Late.wav.error.txt")
    wait_for(error.exists, timeout=60, what="the error file")
    assert "The start time 5.00 s is past the end of “Late.wav” (3.00 s long)." in error.read_text(), error.read_text()
    assert nothing_reached(service), service.stats()
    assert daemon.stop() == 0

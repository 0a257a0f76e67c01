"""`sam-bridge separate --estimate`, `--audition`, `--span`, `--predict-spans`: the options of issue #23
on the command line, against the stand-in over real HTTP (or nothing at all, for an estimate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.common.cost import PriceTable
from bridge.common.options import OutputOptions, ServiceOptions, flag_for
from bridge.local_service import LocalFalService
from tests.commands.test_cli_separate import cli, entries, env, make_source, music  # noqa: F401 - fixtures


def test_estimate_prints_seconds_requests_and_cost_and_sends_nothing(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    a = make_source(music / "a.wav", 48000, 2, "PCM_24", 45.0).path
    b = make_source(music / "b.wav", 44100, 1, "PCM_16", 15.0).path
    # `env` points fal's hosts at a closed port: anything sent would fail the command
    assert cli("separate", a, b, "--prompt", "hi-hat", "--estimate", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["seconds"] for f in out["files"]] == [45.0, 15.0]
    assert [f["requests"] for f in out["files"]] == [1, 1]
    assert [f["estimated_cost"] for f in out["files"]] == [0.075, 0.025]
    assert out["total"] == {"seconds": 60.0, "requests": 2, "estimated_cost": 0.1, "currency": "USD"}
    assert out["confirm_above"] == 1.0
    assert entries(music) == ["a.wav", "b.wav"]  # no Stems folder, nothing written

    assert cli("separate", a, b, "--prompt", "hi-hat", "--estimate", "--candidates", "3") == 0
    text = capsys.readouterr().out
    assert "a.wav: 45.0 s, 1 request, $0.15" in text  # 1.5 units × (0.05 + 2 × 0.025)
    assert "total: 60.0 s, 2 requests, $0.20" in text
    # the lines add up to the total: $0.075 was shown as $0.07 beside $0.03 under a $0.10 total
    assert cli("separate", a, b, "--prompt", "hi-hat", "--estimate") == 0
    text = capsys.readouterr().out
    assert "a.wav: 45.0 s, 1 request, $0.075" in text and "b.wav: 15.0 s, 1 request, $0.025" in text
    assert "total: 60.0 s, 2 requests, $0.10" in text
    from bridge.common.cost import money

    assert (money(1.075), money(1.125), money(12.5), money(0.1)) == ("$1.075", "$1.125", "$12.50", "$0.10")


def test_estimate_of_a_stem_set_counts_each_step(env: dict[str, Path], music: Path,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a = make_source(music / "a.wav", 48000, 1, "PCM_16", 30.0).path
    assert cli("separate", a, "--preset", "4-stems", "--estimate", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"][0]["requests"] == 3 and out["files"][0]["estimated_cost"] == 0.15


def test_estimate_of_an_audition_says_what_the_whole_costs(env: dict[str, Path], music: Path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    a = make_source(music / "a.wav", 48000, 1, "PCM_16", 60.0).path
    assert cli("separate", a, "--prompt", "hi-hat", "--audition", "--estimate", "--json") == 0
    file = json.loads(capsys.readouterr().out)["files"][0]
    assert (file["seconds"], file["whole_seconds"]) == (10.0, 60.0)
    assert (file["estimated_cost"], file["whole_cost"]) == (round(10 / 30 * 0.05, 4), 0.1)


@pytest.mark.parametrize(("rounding", "cost"), [("none", 0.0503), ("second", 0.0517), ("unit", 0.1)])
def test_price_rounding_rules(rounding: str, cost: float) -> None:
    assert PriceTable(rounding=rounding).estimate(30.2) == pytest.approx(cost, abs=1e-4)  # type: ignore[arg-type]


def test_every_option_has_a_flag(env: dict[str, Path], music: Path,  # noqa: F811
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["separate"].format_help()  # type: ignore[union-attr]
    for model in (ServiceOptions, OutputOptions):
        for name in model.model_fields:
            assert flag_for(name) in help_text, name


def test_spans_and_predict_spans_reach_the_service(env: dict[str, Path], music: Path,  # noqa: F811
                                                   service: LocalFalService,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 48000, 1, "PCM_24", 3.0)
    assert cli("-v", "separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
               "--span", "0.5-2", "--span", "1-1.5:exclude", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["request"]["spans"] == [{"start": 0.5, "end": 2.0, "include": True},
                                 {"start": 1.0, "end": 1.5, "include": False}]
    target, rate = sf.read(summary["stems"]["target"])
    assert np.max(np.abs(target[: int(0.4 * rate)])) < 1e-4  # silenced outside the span kept
    assert np.max(np.abs(target[int(1.1 * rate): int(1.4 * rate)])) < 1e-4  # and in the excluded one
    assert np.max(np.abs(target[int(0.6 * rate): int(0.9 * rate)])) > 0.01

    assert cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url, "--predict-spans",
               "--json") == 0
    manifest = json.loads(Path(json.loads(capsys.readouterr().out)["manifest"]).read_text())
    assert manifest["steps"][0]["options"]["predict_spans"] is True


def test_a_bad_span_is_refused(env: dict[str, Path], music: Path,  # noqa: F811
                               capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 48000, 1, "PCM_24", 1.0)
    with pytest.raises(SystemExit):
        cli("separate", source.path, "--prompt", "x", "--local", "--span", "5-2")
    assert "must be after its start" in capsys.readouterr().err


def quiet_then_loud(path: Path, rate: int = 44100, seconds: float = 30.0, loud: tuple[float, float] = (18.0, 24.0)
                    ) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = 0.01 * rng.standard_normal((round(seconds * rate), 2))
    data[round(loud[0] * rate): round(loud[1] * rate)] *= 15
    sf.write(str(path), data, rate, subtype="PCM_24")
    return np.asarray(sf.read(str(path), dtype="float64")[0])


def test_audition_separates_the_loudest_window_and_prices_the_whole(
        env: dict[str, Path], music: Path, service: LocalFalService,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.audio import bwf

    rate = 44100
    source = music / "Take.wav"
    original = quiet_then_loud(source, rate)
    bwf.append_chunks(source, bwf.with_time_reference(b"t".ljust(602, b"\0"), 1_000_000), None)
    assert cli("separate", source, "--prompt", "hi-hat", "--service-url", service.url, "--audition", "4",
               "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    target, residual = Path(summary["stems"]["target"]), Path(summary["stems"]["residual"])
    assert (target.name, residual.name) == ("Take - hi-hat.audition.target.wav", "Take - hi-hat.audition.residual.wav")
    assert Path(summary["manifest"]).name == "Take - hi-hat.audition.sam.json"
    assert "audition" in summary["flags"]
    start = bwf.time_reference(bwf.read_chunks(target).bext or b"") - 1_000_000
    assert 18.0 * rate <= start and start + 4 * rate <= 24.0 * rate  # inside the loud stretch, at its position
    t, _ = sf.read(str(target), dtype="float64")
    r, _ = sf.read(str(residual), dtype="float64")
    assert len(t) == 4 * rate
    assert np.max(np.abs(t + r - original[start:start + 4 * rate])) <= 2 / 2**23  # nulls against that window
    assert summary["audition"] == {"seconds": 4.0, "whole_seconds": 30.0, "whole_cost": 0.05, "currency": "USD"}
    assert service.stats()["submits"] == 1

    assert cli("separate", source, "--prompt", "hi-hat", "--service-url", service.url, "--audition",
               "--start", "2") == 0
    err = capsys.readouterr().err
    assert "the whole 28.0 s would cost $0.047" in err  # from --start: its first 10 s


def test_audition_of_a_bounded_part_takes_its_loudest_window_an_open_part_starts_at_start(
        env: dict[str, Path], music: Path, service: LocalFalService,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """A DAW always sends start and length (the selected item or clip): the window is the loudest inside that
    part, not its first seconds. Only `--start` without `--length` auditions from `--start`."""
    rate = 44100
    source = music / "Take.wav"
    original = quiet_then_loud(source, rate)  # loud from 18 s to 24 s, late in the part 2 s..27 s
    assert cli("separate", source, "--prompt", "hi-hat", "--service-url", service.url, "--audition", "4",
               "--start", "2", "--length", "25", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    target = Path(summary["stems"]["target"])
    part = json.loads(Path(summary["manifest"]).read_text())["part"]
    start = part["start_frame"]
    assert 18.0 * rate <= start and start + 4 * rate <= 24.0 * rate and part["frames"] == 4 * rate
    t, _ = sf.read(str(target), dtype="float64")
    r, _ = sf.read(str(summary["stems"]["residual"]), dtype="float64")
    assert np.max(np.abs(t + r - original[start:start + 4 * rate])) <= 2 / 2**23
    assert summary["audition"]["whole_seconds"] == 25.0

    assert cli("separate", source, "--prompt", "hi-hat", "--service-url", service.url, "--audition", "4",
               "--start", "2", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    part = json.loads(Path(summary["manifest"]).read_text())["part"]
    assert (part["start_frame"], part["frames"]) == (2 * rate, 4 * rate)  # an open part: from --start

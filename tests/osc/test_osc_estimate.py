"""Issue #23 from the daemon's ways in: /sam/estimate and `"estimate_only"` request files answer with what a
job would send and cost and send nothing; OSC takes the options and the audition; /sam/flags and the
progress ETA reach a client. The real daemon process, real UDP, the stand-in over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from tests.conftest import TEST_KEY
from tests.osc.test_osc_daemon import (  # noqa: F401 - fixtures
    Device,
    client,
    daemon,
    follow_job,
    separate,
    three_tone_source,
)
from tests.test_daemon import read_status, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def service() -> Iterator[Any]:
    """A stand-in that takes a second per job: a job that ends in a few milliseconds may never report
    "running", so its ETA would go unseen and the test would depend on the machine's load."""
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=1.0) as svc:
        yield svc


def test_estimate_answers_and_sends_nothing(client: Device, service: Any,  # noqa: F811
                                            user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "Song" / "Mix.wav", seconds=45.0, rate=8000, channels=1)
    client.send("/sam/estimate", str(source), "4-stems", "est-1")
    got = client.next_where(lambda r: r.address in ("/sam/estimate/ok", "/sam/error"), "estimate answer")
    assert got.address == "/sam/estimate/ok", got.args
    tag, seconds, requests, cost, currency, confirm_above, confirm, whole = got.args
    assert (tag, requests, currency, confirm, whole) == ("est-1", 3, "USD", 0, -1.0)
    assert seconds == pytest.approx(45.0) and cost == pytest.approx(0.225) and confirm_above == pytest.approx(1.0)
    # the same arguments as /sam/separate: a part, an audition, options
    client.send("/sam/estimate", str(source), "piano", "est-2", "", "", "", 30.0, "reranking_candidates=3")
    got = client.next_where(lambda r: r.address in ("/sam/estimate/ok", "/sam/error"), "estimate answer")
    assert got.address == "/sam/estimate/ok", got.args
    assert got.args[1] == pytest.approx(30.0) and got.args[3] == pytest.approx(0.1)  # 1 unit × (0.05 + 2 × 0.025)
    assert got.args[7] == pytest.approx(0.15)  # the whole 45 s
    stats = service.stats()
    assert stats["submits"] == 0
    assert not (source.parent / "Stems").exists()


def test_request_file_estimate_only(daemon: Any, service: Any, user_dirs: dict[str, Path]) -> None:  # noqa: F811
    source = three_tone_source(user_dirs["home"] / "Song" / "Take.wav", seconds=180.0, rate=8000, channels=1)
    request = write_request(requests_dir(daemon.info), "ask", source=source, prompt="piano", estimate_only=True,
                            options={"reranking_candidates": 8}, tag="t")
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "done" and status["job_id"] is None, status
    estimate = status["estimate"]
    assert (estimate["seconds"], estimate["requests"]) == (180.0, 1)
    assert estimate["estimated_cost"] == pytest.approx(6 * (0.05 + 7 * 0.025))
    assert estimate["needs_confirmation"] is True and estimate["confirm_above"] == 1.0
    assert "nothing was sent" in status["message"]
    assert (daemon.info["confirm_above"], daemon.info["currency"]) == (1.0, "USD")  # for the DAW scripts
    assert service.stats()["submits"] == 0
    assert read_status(request)["stems"] == {}


def test_osc_options_reach_the_service_and_progress_carries_an_eta(client: Device, service: Any,  # noqa: F811
                                                                   user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "Song" / "Guitar.wav", seconds=3.0)
    job_id = separate(client, source, "piano", "opt-1", "", "", "", 0.0, "predict_spans=true")
    seen = follow_job(client, job_id)
    assert seen.error is None, seen.error
    assert all(len(p) == 5 for p in seen.progress)  # job, state, fraction, message, eta
    assert any(float(p[4]) >= 0 for p in seen.progress if p[1] == "running")
    import json
    manifest = json.loads(Path(str(seen.done[3])).read_text())
    assert manifest["steps"][0]["options"]["predict_spans"] is True
    assert sf.info(str(seen.done[1])).frames == sf.info(str(source)).frames


def test_an_audition_is_its_own_job_and_never_paid_twice(client: Device, service: Any,  # noqa: F811
                                                          user_dirs: dict[str, Path]) -> None:
    import json
    import os
    import subprocess
    import sys

    source = three_tone_source(user_dirs["home"] / "Song" / "Long.wav", seconds=6.0)
    first = follow_job(client, separate(client, source, "piano", "aud-1", "", "", "", 2.0))
    again = follow_job(client, separate(client, source, "piano", "aud-2", "", "", "", 2.0))
    assert first.done is not None and again.done is not None
    assert Path(str(first.done[1])).name == "Long - piano.audition.target.wav"
    assert sf.info(str(first.done[1])).frames == 2 * 44100
    assert service.stats()["submits"] == 1  # the same audition again: its stems reused, not paid again
    full = follow_job(client, separate(client, source, "piano", "full"))
    assert full.done is not None and Path(str(full.done[1])).name == "Long - piano.target.wav"
    assert service.stats()["submits"] == 2  # the full run is a job of its own
    jobs = json.loads(subprocess.run([sys.executable, "-m", "bridge", "status", "--json"], capture_output=True,
                                     text=True, env={**os.environ}, timeout=30).stdout)
    by_id = {job["job_id"]: job for job in jobs}
    assert by_id[first.job_id]["what"] == "piano (audition 2 s)" and by_id[full.job_id]["what"] == "piano"
    assert by_id[again.job_id]["estimated_cost"] == 0.0 and "audition" in by_id[again.job_id]["flags"]


def test_a_result_unrelated_to_the_source_is_flagged_over_osc_and_in_the_status_file(
        client: Device, daemon: Any, service: Any, user_dirs: dict[str, Path]) -> None:  # noqa: F811
    source = three_tone_source(user_dirs["home"] / "Song" / "Noise.wav", seconds=3.0)
    service.faults.unrelated_result(times=1)
    seen = follow_job(client, separate(client, source, "piano", "bad"))
    assert seen.done is not None
    flags = [r.args for r in client.about(seen.job_id) if r.address == "/sam/flags"]
    assert flags and "target-unlikely" in flags[0][1:], client.backlog
    request = write_request(requests_dir(daemon.info), "good", source=source, prompt="piano")
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "done" and "target-unlikely" not in status["flags"], status  # a genuine band
    service.faults.unrelated_result(times=1)
    request = write_request(requests_dir(daemon.info), "bad", source=source, prompt="piano", tag="b",
                            options={"reranking_candidates": 2})  # not a dedupe hit of "good"
    status = wait_state(request, ("done", "failed"))
    assert "target-unlikely" in status["flags"], status


def test_part_tells_where_the_stems_are_an_audition_its_loudest_window_inside_the_part(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:  # noqa: F811
    """A DAW sends the clip as start and length: the audition is the loudest window inside it (late in it
    here), and /sam/part, before /sam/stem and /sam/done, says where that is, so the device can place it."""
    import numpy as np

    rate = 44100
    noise = 0.01 * np.random.default_rng(4).standard_normal((12 * rate, 1))
    noise[8 * rate: 10 * rate] *= 20  # loud from 8 s to 10 s
    source = user_dirs["home"] / "Song" / "Late.wav"
    source.parent.mkdir(parents=True, exist_ok=True)
    sf.write(source, noise, rate, subtype="PCM_24")
    for tag, rest, window in (("late", (1.0, 10.0, 2.0), (8.0, 2.0)), ("whole", (1.0, 10.0), (1.0, 10.0))):
        seen = follow_job(client, separate(client, source, "piano", tag, "", *rest))
        assert seen.done is not None, seen.error
        assert seen.addresses.count("/sam/part") == 1
        assert seen.addresses.index("/sam/part") < seen.addresses.index("/sam/stem")  # before stems and done
        part = seen.part
        assert part is not None
        assert part[0] == pytest.approx(window[0], abs=0.11) and part[1] == pytest.approx(window[1], abs=1e-5)
        manifest = json.loads(Path(str(seen.done[3])).read_text())
        assert part[0] == pytest.approx(manifest["part"]["start_seconds"], abs=1e-5)
    assert service.stats()["submits"] == 2


def test_spans_over_osc_reach_the_service_and_a_bad_one_is_refused(client: Device, service: Any,  # noqa: F811
                                                                   user_dirs: dict[str, Path]) -> None:
    """Every option from every way in: OSC takes spans as the CLI's --span writes them."""
    source = three_tone_source(user_dirs["home"] / "Song" / "Spans.wav", seconds=3.0)
    job_id = separate(client, source, "piano", "span-1", "", "", "", 0.0, "", "0.5-2 1-1.5:exclude")
    seen = follow_job(client, job_id)
    assert seen.error is None, seen.error
    manifest = json.loads(Path(str(seen.done[3])).read_text())
    assert manifest["request"]["spans"] == [{"start": 0.5, "end": 2.0, "include": True},
                                            {"start": 1.0, "end": 1.5, "include": False}]
    target, rate = sf.read(str(seen.done[1]))
    assert abs(target[: int(0.4 * rate)]).max() < 1e-4  # silent outside the span kept
    assert abs(target[int(1.1 * rate): int(1.4 * rate)]).max() < 1e-4  # and in the one left out
    client.send("/sam/separate", str(source), "piano", "span-2", "", "", "", 0.0, "", "2-1")
    got = client.next_where(lambda r: r.address in ("/sam/accepted", "/sam/error"), "an answer")
    assert got.address == "/sam/error" and "'2-1'" in got.args[1] and "after its start" in got.args[1]

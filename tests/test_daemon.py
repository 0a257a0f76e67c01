"""The daemon as a real process: request files in, stems and status files out; crashes, restarts and
faults never lose a job and never pay twice (the local service's counters prove it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge.os_service.files import NOT_RESTARTED
from tests.conftest import TEST_KEY, wait_for

pytestmark = pytest.mark.timeout(180)


def make_source(path: Path, seconds: float = 2.0, rate: int = 44100, channels: int = 2,
                subtype: str = "PCM_24", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    mono = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.1 * rng.standard_normal(n)
    mono[:: rate // 4] += 0.5  # clicks: transients to line up
    data = np.stack([mono * (0.5 + 0.5 * c / max(channels - 1, 1)) for c in range(channels)], axis=1)
    sf.write(path, np.clip(data, -1, 1) * 0.7, rate, subtype=subtype)
    return path


def write_request(folder: Path, name: str, **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{name}.json.tmp"
    temp.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}))
    final = folder / f"{name}.json"
    os.replace(temp, final)
    return final


def read_status(request: Path) -> dict[str, Any]:
    path = request.with_name(request.name[:-5] + ".status.json")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def wait_state(request: Path, states: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
    wait_for(lambda: read_status(request).get("state") in states, timeout=timeout,
             what=f"{request.name} to reach {states} (last: {read_status(request)})")
    return read_status(request)


def requests_dir(info: dict[str, Any]) -> Path:
    return Path(str(info["requests_dir"]))


def test_request_file_gives_stems_and_status(daemon_factory, service, user_dirs, tmp_path: Path) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "Guitar 01.wav")
    before = source.read_bytes()
    request = write_request(requests_dir(info), "take1", source=source, prompt="bass guitar", tag="t-1")
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "done", status
    assert status["tag"] == "t-1" and status["progress"] == 1.0
    assert list(status["stems"]) == ["target", "residual"]
    target, residual = (Path(status["stems"][k]) for k in ("target", "residual"))
    assert target.name == "Guitar 01 - bass-guitar.target.wav"
    assert target.parent == source.parent / "Stems"
    src, rate = sf.read(source, dtype="float64")
    tgt, t_rate = sf.read(target, dtype="float64")
    res, _ = sf.read(residual, dtype="float64")
    assert t_rate == rate and tgt.shape == src.shape == res.shape
    assert sf.info(str(target)).subtype == "PCM_24"
    assert np.max(np.abs(src - (tgt + res))) <= 2.0 / 2**23  # nulls against the source
    manifest = json.loads(Path(status["manifest"]).read_text())
    assert manifest["stems"]["target"]["path"] == str(target)
    assert source.read_bytes() == before  # the source is never touched
    assert service.stats()["submits"] == 1
    assert daemon.stop() == 0


def test_kill_after_submit_resumes_without_paying_twice(daemon_factory, user_dirs, tmp_path: Path) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=4.0) as slow:
        daemon = daemon_factory(slow.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "vox.wav")
        request = write_request(requests_dir(info), "vox", source=source, prompt="vocals")
        wait_state(request, ("submitted", "running"), timeout=30)
        daemon.kill()  # kill -9: no chance to clean up
        assert slow.stats()["submits"] == 1
        restarted = daemon_factory(slow.url)
        restarted.start()
        status = wait_state(request, ("done", "failed"), timeout=60)
        assert status["state"] == "done", status
        assert slow.stats()["submits"] == 1  # polled by its request id, not submitted again
        assert restarted.stop() == 0


def test_kill_during_download_leaves_no_partial_stem(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "drums.wav")
    service.faults.stall("download", seconds=4.0, times=2)
    request = write_request(requests_dir(info), "drums", source=source, prompt="kick drum")
    wait_state(request, ("downloading",), timeout=30)
    daemon.kill()
    stems = source.parent / "Stems"
    visible = [p.name for p in stems.iterdir() if not p.name.startswith(".")] if stems.exists() else []
    assert visible == []  # nothing a DAW or watcher could pick up
    service.faults.clear()
    restarted = daemon_factory(service.url)
    restarted.start()
    status = wait_state(request, ("done", "failed"))
    assert status["state"] == "done", status
    assert service.stats()["submits"] == 1
    assert sorted(p.name for p in stems.iterdir() if not p.name.startswith(".")) == [
        "drums - kick-drum.residual.wav", "drums - kick-drum.sam.json", "drums - kick-drum.target.wav"]
    assert [p.name for p in stems.iterdir() if p.name.startswith(".")] == []  # temp files cleaned up
    restarted.stop()


def test_in_flight_limit_holds_for_fifty_requests(daemon_factory, user_dirs) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, concurrency=16, job_time=0.3) as svc:
        daemon = daemon_factory(svc.url, extra=["--concurrency", "4"])
        info = daemon.start()
        requests = []
        for n in range(50):
            source = make_source(user_dirs["home"] / f"clip{n:02d}.wav", seconds=0.3, channels=1, seed=n)
            requests.append(write_request(requests_dir(info), f"clip{n:02d}", source=source, prompt="piano"))
        for request in requests:
            assert wait_state(request, ("done", "failed"), timeout=120)["state"] == "done"
        stats = svc.stats()
        assert stats["submits"] == 50
        assert 2 <= stats["max_running"] <= 4
        daemon.stop()


def test_identical_request_reuses_result_without_submitting(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "a.wav")
    copy = user_dirs["home"] / "b.wav"
    copy.write_bytes(source.read_bytes())
    first = write_request(requests_dir(info), "first", source=source, prompt="piano")
    assert wait_state(first, ("done", "failed"))["state"] == "done"
    second = write_request(requests_dir(info), "second", source=copy, prompt="piano")
    status = wait_state(second, ("done", "failed"))
    assert status["state"] == "done" and "reused" in status["message"]
    assert service.stats()["submits"] == 1
    manifest = json.loads(Path(status["manifest"]).read_text())
    assert manifest["reused_from"] and manifest["estimated_cost"]["amount"] == 0.0
    a, _ = sf.read(read_status(first)["stems"]["target"])
    b, _ = sf.read(status["stems"]["target"])
    assert np.array_equal(a, b)
    daemon.stop()


def test_a_closed_terminal_stops_the_daemon_cleanly(daemon_factory, service, user_dirs) -> None:
    """SIGHUP (the terminal `sam-bridge run` ran in was closed) stops it as Ctrl-C does: exit 0, its
    daemon.json removed, the journal closed for the next start."""
    daemon = daemon_factory(service.url)
    daemon.start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.proc.wait(10) == 0
    assert not (user_dirs["state"] / "daemon.json").exists()
    assert "stopping: no new work" in daemon.output()


def test_under_nohup_a_closed_terminal_leaves_the_daemon_running(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    daemon.start(preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what `nohup` does
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert daemon.proc.poll() is None and (user_dirs["state"] / "daemon.json").exists()
    assert daemon.stop() == 0


def test_a_state_folder_it_cannot_write_is_said_plainly(service, user_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM_BRIDGE_STATE_DIR naming a file (or a read-only folder) ended `sam-bridge run` in a traceback."""
    blocked = user_dirs["home"] / "state-is-a-file"
    blocked.write_text("not a folder\n")
    monkeypatch.setenv("SAM_BRIDGE_STATE_DIR", str(blocked))
    started = subprocess.run([sys.executable, "-m", "bridge", "run", "--service-url", service.url,
                              "--osc-port", "0"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "FAL_KEY": TEST_KEY})
    # 75 (EX_TEMPFAIL), not 2: a service manager starts it again later (a drive mounted after login)
    assert started.returncode == 75, started.stderr
    assert 75 not in NOT_RESTARTED
    assert "Traceback" not in started.stderr
    assert f"Cannot write the log folder {blocked / 'logs'}" in started.stderr
    assert "SAM_BRIDGE_STATE_DIR" in started.stderr
    assert blocked.read_text() == "not a folder\n"


def test_sigterm_exits_cleanly_and_second_instance_is_refused(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    second = subprocess.run([sys.executable, "-m", "bridge", "run", "--service-url", service.url,
                             "--osc-port", "0"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FAL_KEY": TEST_KEY})
    assert second.returncode != 0
    assert f"already running (process {info['pid']})" in second.stderr
    assert daemon.stop() == 0  # exited by itself on SIGTERM (a kill after the wait would give -9)
    assert not (user_dirs["state"] / "daemon.json").exists()


@pytest.mark.parametrize(("body", "expected"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"prompt": "piano"}), "source: required"),
    (json.dumps({"source": "/nope/missing.wav", "prompt": "piano"}), "does not exist"),
    (json.dumps({"source": "SOURCE", "preset": "no-such-preset"}), "no-such-preset"),
    (json.dumps({"source": "TEXTFILE", "prompt": "piano"}), "not"),
    (json.dumps({"source": "SOURCE", "prompt": "piano", "colour": "red"}), "colour: unknown field"),
])
def test_bad_request_files_get_a_clear_status(daemon_factory, service, user_dirs, body: str,
                                              expected: str) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "ok.wav", seconds=0.5)
    text_file = user_dirs["home"] / "notes.wav"
    text_file.write_text("this is not audio at all")
    body = body.replace("SOURCE", str(source)).replace("TEXTFILE", str(text_file))
    folder = requests_dir(info)
    (folder / "bad.json.tmp").write_text(body)
    os.replace(folder / "bad.json.tmp", folder / "bad.json")
    status = wait_state(folder / "bad.json", ("failed",), timeout=30)
    assert expected in (status["error"] or ""), status
    good = write_request(folder, "good", source=source, prompt="piano")  # the daemon keeps serving
    assert wait_state(good, ("done", "failed"))["state"] == "done"
    daemon.stop()


def test_service_down_jobs_wait_then_finish(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    service.faults.fail("token", status=503, times=1000)
    service.faults.fail("submit", status=503, times=1000)
    source = make_source(user_dirs["home"] / "late.wav", seconds=0.5)
    request = write_request(requests_dir(info), "late", source=source, prompt="piano")
    status = wait_state(request, ("waiting",), timeout=60)
    assert "unavailable" in status["message"] and "Retrying" in status["message"]
    service.faults.clear()
    assert wait_state(request, ("done", "failed"), timeout=90)["state"] == "done"
    assert service.stats()["submits"] == 1
    daemon.stop()


def test_unwritable_output_folder_fails_the_job_cleanly(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "x.wav", seconds=0.5)
    blocker = user_dirs["home"] / "a-file"
    blocker.write_text("not a folder")
    request = write_request(requests_dir(info), "x", source=source, prompt="piano",
                            output_dir=str(blocker / "Stems"))
    status = wait_state(request, ("failed",))
    assert "is a file (or lies inside one), not a folder" in status["error"]
    assert service.stats()["submits"] == 0  # checked before anything was paid for
    daemon.stop()


def test_status_cancel_and_retry_commands_read_the_journal(daemon_factory, user_dirs) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=30.0) as slow:
        daemon = daemon_factory(slow.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "long.wav", seconds=0.5)
        request = write_request(requests_dir(info), "long", source=source, prompt="piano")
        job_id = wait_state(request, ("running", "submitted"))["job_id"]
        env = {**os.environ}
        shown = subprocess.run([sys.executable, "-m", "bridge", "status", "--json"], capture_output=True,
                               text=True, env=env, timeout=30)
        assert json.loads(shown.stdout)[0]["job_id"] == job_id
        cancelled = subprocess.run([sys.executable, "-m", "bridge", "cancel", job_id[:6]], capture_output=True,
                                   text=True, env=env, timeout=30)
        assert cancelled.returncode == 0, cancelled.stderr
        assert wait_state(request, ("cancelled",), timeout=30)["state"] == "cancelled"
        wait_for(lambda: slow.stats()["cancels"] >= 1, what="the service to see the cancel")
        retried = subprocess.run([sys.executable, "-m", "bridge", "retry", job_id], capture_output=True,
                                 text=True, env=env, timeout=30)
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: slow.stats()["submits"] == 2, what="the retried job to be submitted again")
        daemon.stop()


def test_preset_files_reload_while_running_and_bad_ones_stay_contained(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    presets_file = Path(str(info["presets_file"]))
    user_presets = user_dirs["config"] / "presets"
    user_presets.mkdir()
    (user_presets / "mine.yaml").write_text("name: my-shaker\nprompt: shaker\noptions:\n  acceleration: fast\n")
    (user_presets / "broken.yaml").write_text("name: broken-one\nprompt: hats\noptions:\n  reranking_candidates: 0\n")
    wait_for(lambda: "my-shaker" in presets_file.read_text(), what="presets.json to list the new preset")
    source = make_source(user_dirs["home"] / "perc.wav", seconds=0.5)
    good = write_request(requests_dir(info), "good", source=source, preset="my-shaker")
    status = wait_state(good, ("done", "failed"))
    assert status["state"] == "done", status
    assert Path(status["stems"]["target"]).name == "perc - my-shaker.target.wav"
    bad = write_request(requests_dir(info), "bad", source=source, preset="broken-one")
    status = wait_state(bad, ("failed",))
    assert "broken.yaml:4" in status["error"] and "reranking_candidates" in status["error"]
    other = write_request(requests_dir(info), "other", source=source, preset="vocals")  # built-ins still work
    assert wait_state(other, ("done", "failed"))["state"] == "done"
    daemon.stop()


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_source_changed_or_deleted_mid_job_fails_clearly(daemon_factory, user_dirs, change: str) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=1.5) as slow:
        daemon = daemon_factory(slow.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "moving.wav", seconds=0.5)
        request = write_request(requests_dir(info), "moving", source=source, prompt="piano")
        wait_state(request, ("submitted", "running"))
        if change == "deleted":
            source.unlink()
        else:
            make_source(source, seconds=0.7, seed=3)
        status = wait_state(request, ("failed", "done"))
        assert status["state"] == "failed", status
        assert ("deleted" if change == "deleted" else "changed") in status["error"] or "no longer" in status["error"]
        stems = source.parent / "Stems"
        assert not stems.exists() or [p for p in stems.iterdir() if not p.name.startswith(".")] == []
        daemon.stop()


def journal_rows(user_dirs: dict[str, Path], query: str) -> list[dict[str, Any]]:
    import sqlite3

    db = sqlite3.connect(user_dirs["state"] / "journal.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(query)]
    finally:
        db.close()


def test_a_request_whose_submit_answer_was_lost_in_a_crash_fails_and_is_not_sent_again(
        daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "take.wav", seconds=0.5)
    service.faults.stall("submit", seconds=60.0)  # the service has the job; its answer never reaches us
    request = write_request(requests_dir(info), "take", source=source, prompt="piano", tag="item-1")
    wait_for(lambda: service.stats()["submits"] == 1
             and journal_rows(user_dirs, "SELECT * FROM steps WHERE state='submitting'"), what="the submit")
    job_id = read_status(request)["job_id"]
    daemon.kill()
    restarted = daemon_factory(service.url)
    restarted.start()
    status = wait_state(request, ("done", "failed", "cancelled"))
    assert status["state"] == "failed" and status["job_id"] == job_id and status["tag"] == "item-1"
    assert "lost the answer" in status["error"] and f"sam-bridge retry {job_id}" in status["error"]
    time.sleep(1.0)
    assert service.stats()["submits"] == 1  # not paid twice
    assert [row["id"] for row in journal_rows(user_dirs, "SELECT id FROM jobs")] == [job_id]
    assert read_status(request)["state"] == "failed"
    assert restarted.stop() == 0


def a_submit_on_its_way(daemon_factory, service, user_dirs, answer_after: float) -> tuple[Any, Path, Path]:
    """A daemon whose request file's submit reached the service, its answer held back `answer_after` s:
    (the daemon, the source, the request file)."""
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "take.wav", seconds=0.5)
    service.faults.stall("submit", seconds=answer_after)
    request = write_request(requests_dir(info), "take", source=source, prompt="piano")
    wait_for(lambda: service.stats()["submits"] == 1
             and journal_rows(user_dirs, "SELECT * FROM steps WHERE state='submitting'"), what="the submit")
    return daemon, source, request


def test_a_stop_while_a_submit_awaits_its_answer_waits_for_it_and_the_job_completes_after_a_restart(
        daemon_factory, service, user_dirs) -> None:
    """The service has the request (it is paid) but its answer is slow: a stop that exited at once lost the
    request id, and the next start failed the job ('lost the answer'); the stop now waits for the answer."""
    daemon, source, request = a_submit_on_its_way(daemon_factory, service, user_dirs, answer_after=6.0)
    assert daemon.stop(timeout=60) == 0  # SIGTERM while the answer is on its way
    assert "waiting up to" in daemon.output()
    assert journal_rows(user_dirs, "SELECT * FROM steps WHERE state='submitting'") == []
    restarted = daemon_factory(service.url)
    restarted.start()
    status = wait_state(request, ("done", "failed", "cancelled"))
    assert status["state"] == "done", status
    target, residual = (sf.read(status["stems"][label], dtype="float64")[0] for label in ("target", "residual"))
    assert np.max(np.abs(target + residual - sf.read(source, dtype="float64")[0])) <= 2.0 / 2**23
    assert service.stats()["submits"] == 1  # followed by its request id, never sent again
    assert restarted.stop() == 0


def test_a_second_stop_signal_ends_the_wait_for_a_submits_answer(daemon_factory, service, user_dirs) -> None:
    daemon, _source, request = a_submit_on_its_way(daemon_factory, service, user_dirs, answer_after=60.0)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "waiting up to" in daemon.output(), timeout=20, what="the stop to wait for the answer")
    daemon.proc.send_signal(signal.SIGTERM)  # impatient: quit now
    assert daemon.proc.wait(10) == 0
    restarted = daemon_factory(service.url)
    restarted.start()
    status = wait_state(request, ("done", "failed", "cancelled"))
    assert status["state"] == "failed" and "lost the answer" in status["error"]  # said, and not sent again
    assert service.stats()["submits"] == 1
    assert restarted.stop() == 0


def test_a_request_cancelled_while_the_daemon_was_down_stays_cancelled(daemon_factory, user_dirs) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=3.0) as slow:
        daemon = daemon_factory(slow.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "take.wav", seconds=0.5)
        request = write_request(requests_dir(info), "take", source=source, prompt="piano")
        job_id = wait_state(request, ("running",), timeout=30)["job_id"]
        daemon.kill()
        cancelled = subprocess.run([sys.executable, "-m", "bridge", "cancel", job_id], capture_output=True,
                                   text=True, timeout=30)
        assert cancelled.returncode == 0, cancelled.stderr
        restarted = daemon_factory(slow.url)
        restarted.start()
        status = wait_state(request, ("done", "failed", "cancelled"))
        assert status["state"] == "cancelled" and status["job_id"] == job_id
        time.sleep(1.5)  # the job's end and the folder's look at its request, whichever came first
        assert slow.stats()["submits"] == 1
        assert [row["id"] for row in journal_rows(user_dirs, "SELECT id FROM jobs")] == [job_id]
        assert read_status(request)["state"] == "cancelled"
        assert restarted.stop() == 0


def test_a_job_retried_after_a_restart_reports_to_its_request_files_status(
        daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "take.wav", seconds=0.5)
    service.faults.fail_job("CUDA error: out of memory")
    request = write_request(requests_dir(info), "take", source=source, prompt="piano")
    job_id = wait_state(request, ("failed",))["job_id"]
    assert daemon.stop() == 0
    restarted = daemon_factory(service.url)
    restarted.start()
    retried = subprocess.run([sys.executable, "-m", "bridge", "retry", job_id], capture_output=True, text=True,
                             timeout=30)
    assert retried.returncode == 0, retried.stderr
    status = wait_state(request, ("done",))
    assert status["job_id"] == job_id and len(status["stems"]) == 2
    target, residual = (sf.read(status["stems"][label], dtype="float64")[0] for label in ("target", "residual"))
    assert np.array_equal(target + residual, sf.read(source, dtype="float64")[0])  # whole stems of this take
    assert service.stats()["submits"] == 2
    assert restarted.stop() == 0


def test_a_stop_asked_for_the_moment_daemon_json_appears_is_still_clean(service, user_dirs) -> None:
    """A service manager may stop the daemon right after it starts (a supervisor, a logout): SIGTERM as soon
    as daemon.json is there must stop it cleanly, not kill it and leave a stale daemon.json behind (which
    the DAW scripts would read as a daemon that is running)."""
    info_path = user_dirs["state"] / "daemon.json"
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--service-url", service.url,
                             "--osc-port", "0", "--no-hot-folder"], env={**os.environ, "FAL_KEY": TEST_KEY},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not info_path.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        assert info_path.exists(), "the daemon never wrote daemon.json"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert not info_path.exists()


def test_a_burst_of_stop_signals_still_stops_the_daemon_cleanly(service, user_dirs) -> None:
    """A service manager and the supervisor (`service-run`) may both signal the daemon, and a user presses
    Ctrl-C twice: a second signal arriving while the first one's handler runs must not deadlock it (it
    did: the handler set a threading.Event, whose lock the interrupted handler already held)."""
    info_path = user_dirs["state"] / "daemon.json"
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--service-url", service.url,
                             "--osc-port", "0", "--no-hot-folder"], env={**os.environ, "FAL_KEY": TEST_KEY},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(info_path.exists, timeout=60, what="the daemon to start")
        for _ in range(200):
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert not info_path.exists()


def test_a_requests_folder_unreachable_for_a_while_is_served_again_when_it_is_back(
        daemon_factory, service, user_dirs) -> None:
    """A network share dropped, a NAS asleep, the folder renamed away and back: the rescan could not list
    it and its thread ended for good, while /sam/pong still said `ok` and no request was answered again."""
    from tests.osc_helpers import OscClient

    daemon = daemon_factory(service.url)
    info = daemon.start()
    requests = requests_dir(info)
    osc = info["osc"]
    assert isinstance(osc, dict)
    client = OscClient((str(osc["host"]), int(osc["port"])))
    try:
        assert client.request("/sam/ping", reply="/sam/pong")[1] == "ok"
        away = requests.with_name(requests.name + " (away)")
        requests.rename(away)
        wait_for(lambda: "cannot be read" in daemon.output(), timeout=30, what="the rescan to find the folder gone")
        assert client.request("/sam/ping", reply="/sam/pong")[1] == "requests-folder-unreachable"
        time.sleep(6)  # more rescans while it is gone: said once
        assert daemon.output().count("cannot be read") == 1
        away.rename(requests)
        wait_for(lambda: "can be read again" in daemon.output(), timeout=30, what="the folder to be seen back")
        assert client.request("/sam/ping", reply="/sam/pong")[1] == "ok"
        source = make_source(user_dirs["home"] / "Guitar 01.wav")
        request = write_request(requests, "after", source=source, prompt="bass guitar")
        status = wait_state(request, ("done", "failed"), timeout=30)
        assert status["state"] == "done", status
        target, residual = (sf.read(status["stems"][label], dtype="float64")[0] for label in ("target", "residual"))
        assert np.max(np.abs(sf.read(source, dtype="float64")[0] - (target + residual))) <= 2.0 / 2**23
        assert "Traceback" not in daemon.output()
        assert daemon.stop() == 0
    finally:
        client.close()

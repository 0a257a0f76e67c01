"""Several real daemons (subprocesses with a state folder and an instance name each, standing in for
workstations) on one shared hot folder, one team database on a real PostgreSQL server and ONE stand-in
service: every file done exactly once, a killed daemon's jobs finish on the others without a second
submit, a database restart pauses them and they carry on, and the same audio on two machines is paid once.
The exactly-once run has the issue's 300 files (some 30 s on 2 cores: short files, a 0.3 s service time);
benchmarks/bench_team.py times 1-3 daemons at that size."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.conftest import wait_for
from tests.team.pg_cluster import PgCluster, wait_until_up
from tests.team.team_helpers import StandIn, drop_audio, query, stems_for, team_config, workstation_dirs

pytestmark = [pytest.mark.timeout(240), pytest.mark.daemon]

SECONDS = 0.3  # short audio: the stand-in's fixed job time is what the daemons wait for


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    service = StandIn(tmp_path / "stand-in.log", job_time=0.3)
    yield service
    service.stop()


def start_team(daemon_factory, stand_in: StandIn, team_db: str, tmp_path: Path, hot: Path, count: int,
               lease: float = 3.0):
    daemons = []
    for n in range(count):
        dirs = workstation_dirs(tmp_path, f"studio-{n}")
        daemon = daemon_factory(stand_in.url, dirs=dirs,
                                config=team_config(team_db, f"studio-{n}", hot, lease=lease))
        daemons.append(daemon)
    for daemon in daemons:
        daemon.start()
    return daemons


def assert_each_file_done_once(sources: list[Path], stand_in: StandIn, team_db: str, daemons=()) -> None:
    stats = stand_in.stats()
    jobs = sorted(query(team_db, "SELECT source, state, message FROM jobs"))
    twice = [audio for audio, count in stats["submits_by_audio"].items() if count > 1]
    history = ("SELECT j.id, j.source, j.owner, h.state, h.message FROM jobs j JOIN history h ON h.job_id = j.id "
               "WHERE j.source_hash = ANY(%s) ORDER BY h.at")
    assert stats["submits"] == len(sources), (twice, query(team_db, history, (twice,)), [
        line for d in daemons for line in d.output().splitlines() if "WARNING" in line or "ERROR" in line])
    assert sorted(stats["submits_by_audio"].values()) == [1] * len(sources)
    assert jobs == [(str(s), "done", "Done") for s in sorted(sources)]  # one job per file, each done
    assert_stems_whole(sources)


def assert_stems_whole(sources: list[Path]) -> None:
    """No second copies, no half files: every stem is whole, as long as its source."""
    stems = sources[0].parent / "Stems"
    assert [p.name for p in stems.iterdir() if "(2)" in p.name] == []  # (a killed writer may leave a hidden
    # .sam-partial- temp file: no DAW or watcher takes one)
    for source in sources:
        target, residual, manifest = stems_for(source)
        assert json.loads(manifest.read_text())["source"]["frames"] == int(SECONDS * 44100)
        assert sf.info(str(target)).frames == sf.info(str(residual)).frames == int(SECONDS * 44100)


def test_three_daemons_on_one_shared_folder_do_every_file_exactly_once(
        daemon_factory, stand_in: StandIn, team_db: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    daemons = start_team(daemon_factory, stand_in, team_db, tmp_path, shared, 3)
    sources = [drop_audio(shared / f"take{n:03d}.wav", SECONDS, n) for n in range(300)]  # the count
    for source in sources:
        wait_for(stems_for(source)[2].exists, timeout=150, what=f"stems of {source.name}")
    time.sleep(1.0)  # a late second submit would show now
    assert_each_file_done_once(sources, stand_in, team_db, daemons)
    # a claim is marked done by the daemon that claimed the file, which may learn of the end at its next look
    wait_for(lambda: query(team_db, "SELECT state, count(*) FROM claims GROUP BY state") == [("done", len(sources))],
             timeout=10, what="every claim done")
    for daemon in daemons:
        assert daemon.stop() == 0
    alive = query(team_db, "SELECT instance FROM daemons WHERE NOT stopped")
    assert alive == []  # a clean stop says so: the others need not wait for the lease


def test_a_daemon_killed_mid_run_five_times_has_its_jobs_finished_by_the_others_without_a_second_submit(
        daemon_factory, team_db: str, tmp_path: Path) -> None:
    """kill -9 a working daemon; once the others have taken its jobs over it comes back (same instance),
    and the next one is killed: five times. Takes some 40 s: the jobs must outlast five leases."""
    stand_in = StandIn(tmp_path / "stand-in.log", job_time=3.0)
    try:
        shared = tmp_path / "shared"
        shared.mkdir()
        daemons = start_team(daemon_factory, stand_in, team_db, tmp_path, shared, 3, lease=2.0)
        sources = [drop_audio(shared / f"take{n:03d}.wav", SECONDS, n) for n in range(120)]
        victims, taken_over = [], 0
        for round_ in range(5):
            number = round_ % 3
            name = f"studio-{number}"
            wait_for(lambda name=name: bool(query(
                team_db, "SELECT 1 FROM jobs WHERE owner=%s AND state IN ('submitted','running')", (name,))),
                timeout=60, interval=0.02, what=f"{name} working")
            daemons[number].kill()
            victims.append(name)
            orphans = query(team_db, "SELECT id FROM jobs WHERE owner=%s AND state NOT IN "
                                     "('done','failed','cancelled')", (name,))
            wait_for(lambda name=name: query(team_db, "SELECT count(*) FROM jobs WHERE owner=%s AND state NOT IN "
                                                      "('done','failed','cancelled')", (name,)) == [(0,)],
                     timeout=30, what=f"the others taking over {name}'s jobs")
            taken_over += len(orphans)
            daemons[number].start()
        # A kill between sending a submit and journalling its request id leaves a job that may have landed:
        # it is never sent again on its own; the file gets an error file that says so (a person decides).
        uncertain: list[Path] = []

        def settled(source: Path) -> bool:
            if stems_for(source)[2].exists():
                return True
            error = source.with_name(source.name + ".error.txt")
            if error.exists() and "cannot tell whether the service accepted it" in error.read_text():
                uncertain.append(source)
                return True
            return False

        for source in sources:
            wait_for(lambda source=source: settled(source), timeout=150, what=f"stems of {source.name}")
        time.sleep(1.0)
        assert taken_over >= 5 and len(uncertain) <= len(victims)
        stats = stand_in.stats()
        assert set(stats["submits_by_audio"].values()) == {1}  # 0 second submits
        assert stats["submits"] == len(stats["submits_by_audio"])
        # every file was sent, but one whose submit died before it left may not have been
        assert len(sources) - len(uncertain) <= stats["submits"] <= len(sources)
        done = [s for s in sources if s not in uncertain]
        assert sorted(r[0] for r in query(team_db, "SELECT source FROM jobs WHERE state='done'")) == [
            str(s) for s in done]
        assert query(team_db, "SELECT count(*) FROM jobs") == [(len(sources),)]  # one job per file
        assert_stems_whole(done)  # 0 half files
    finally:
        stand_in.stop()


def test_a_database_restart_pauses_the_daemons_who_say_so_and_carry_on(
        daemon_factory, stand_in: StandIn, team_db: str, pg_cluster: PgCluster, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    daemons = start_team(daemon_factory, stand_in, team_db, tmp_path, shared, 2)
    sources = [drop_audio(shared / f"take{n:02d}.wav", SECONDS, n) for n in range(16)]
    wait_for(lambda: bool(query(team_db, "SELECT 1 FROM jobs WHERE state='done'")), timeout=60,
             what="a first job done")
    pg_cluster.down()
    wait_for(lambda: all("unreachable" in d.output() for d in daemons), timeout=30, what="the daemons saying so")
    time.sleep(1.0)
    pg_cluster.up()
    wait_until_up(team_db)
    for source in sources:
        wait_for(stems_for(source)[2].exists, timeout=150, what=f"stems of {source.name}")
    time.sleep(1.0)
    assert_each_file_done_once(sources, stand_in, team_db)
    for daemon in daemons:
        assert "team database is back" in daemon.output()
        assert daemon.stop() == 0


def test_the_same_audio_dropped_on_two_machines_is_paid_once(
        daemon_factory, stand_in: StandIn, team_db: str, tmp_path: Path) -> None:
    folders = [tmp_path / "room-a", tmp_path / "room-b"]
    daemons = []
    for n, folder in enumerate(folders):  # each machine its own hot folder
        folder.mkdir()
        dirs = workstation_dirs(tmp_path, f"studio-{n}")
        daemons.append(daemon_factory(stand_in.url, dirs=dirs, config=team_config(team_db, f"studio-{n}", folder)))
    for daemon in daemons:
        daemon.start()
    sources = [drop_audio(folder / "mix.wav", SECONDS, 7) for folder in folders]
    for source in sources:
        wait_for(stems_for(source)[2].exists, timeout=60, what=f"stems of {source}")
    assert stand_in.stats()["submits"] == 1
    manifests = [json.loads(stems_for(s)[2].read_text()) for s in sources]
    assert sum(bool(m.get("reused_from")) for m in manifests) == 1  # the other one's stems, copied
    owners = query(team_db, "SELECT owner FROM jobs ORDER BY owner")
    assert owners == [("studio-0",), ("studio-1",)]  # two machines, two jobs, one request
    for source in sources:
        assert sf.read(str(stems_for(source)[0]))[0].shape[0] == int(SECONDS * 44100)


def test_a_shared_request_folder_has_each_request_answered_once_through_the_database(
        daemon_factory, stand_in: StandIn, team_db: str, tmp_path: Path) -> None:
    from tests.test_daemon import wait_state, write_request

    requests = tmp_path / "requests"
    audio = tmp_path / "audio"
    audio.mkdir()
    daemons = []
    for n in range(2):
        dirs = workstation_dirs(tmp_path, f"studio-{n}")
        config = team_config(team_db, f"studio-{n}", tmp_path / f"hot-{n}") + f"requests_dir: {requests}\n"
        daemons.append(daemon_factory(stand_in.url, dirs=dirs, config=config))
    for daemon in daemons:
        daemon.start()
    sources = [drop_audio(audio / f"take{n}.wav", SECONDS, 40 + n) for n in range(8)]
    files = [write_request(requests, f"r{n}", source=s, prompt="piano", output_dir=audio / "out")
             for n, s in enumerate(sources)]
    for file in files:
        assert wait_state(file, ("done", "failed"), timeout=90)["state"] == "done"
    time.sleep(1.0)
    assert stand_in.stats()["submits"] == len(files)
    assert query(team_db, "SELECT count(*) FROM jobs") == [(len(files),)]
    assert not list(requests.glob(".sam-bridge/claims/*.claim"))  # claimed in the database, no markers



def test_a_submit_whose_daemon_was_killed_before_its_answer_ends_on_the_others_as_on_a_restart(
        daemon_factory, stand_in: StandIn, team_db: str, tmp_path: Path) -> None:
    """kill -9 a daemon while the service holds the answer to its submits (the requests landed, no request
    id was journalled): the other daemons take the jobs over and end them as one daemon does at a restart:
    never sent again (0 second charges), failed with what to check and how to retry, in the hot folder's
    error file, the request's status file, `status --team` and `status JOB`."""
    from tests.team.test_team_cli import sam_bridge
    from tests.test_daemon import read_status, write_request

    shared, requests = tmp_path / "shared", tmp_path / "requests"
    shared.mkdir()
    httpx.post(f"{stand_in.url}/_local/faults", json={"action": "stall", "kind": "submit", "seconds": 30,
                                                      "times": 2}, timeout=10).raise_for_status()
    daemons = []
    for n in range(3):
        dirs = workstation_dirs(tmp_path, f"studio-{n}")
        config = team_config(team_db, f"studio-{n}", shared, lease=2.0) + f"requests_dir: {requests}\n"
        daemons.append(daemon_factory(stand_in.url, dirs=dirs, config=config))
    daemons[0].start()  # alone, so both jobs are its own
    source = drop_audio(shared / "take.wav", SECONDS, 1)
    request = write_request(requests, "r1", source=drop_audio(tmp_path / "vocal.wav", SECONDS, 2), prompt="piano",
                            output_dir=tmp_path / "out")
    # the journal marks a step 'submitting' just before its request leaves: wait for the service to count both
    wait_for(lambda: query(team_db, "SELECT count(*) FROM steps WHERE state='submitting' AND handle IS NULL")
             == [(2,)] and stand_in.stats()["submits"] == 2, timeout=30, interval=0.02,
             what="both submits sent, their answers held back")
    for daemon in daemons[1:]:
        daemon.start()
    daemons[0].kill()  # between sending the submits and journalling their request ids
    jobs = {origin: job for job, origin in query(team_db, "SELECT id, origin FROM jobs")}
    wait_for(lambda: query(team_db, "SELECT count(*) FROM jobs WHERE state='failed'") == [(2,)], timeout=30,
             what="the others ending both jobs")
    error_file = source.with_name(source.name + ".error.txt")
    wait_for(error_file.exists, timeout=30, what="the hot folder's error file")
    wait_for(lambda: read_status(request).get("state") == "failed", timeout=30, what="the request's status file")
    time.sleep(2.0)  # a second submit (or a second takeover) would show now
    assert stand_in.stats()["submits"] == 2  # never sent again
    lost = "sam-bridge lost the answer while submitting this job, so it cannot tell whether the service accepted it."
    for origin, job in jobs.items():
        (owner, state, message, error), = query(team_db, "SELECT owner, state, message, error FROM jobs WHERE id=%s",
                                                (job,))
        assert owner in ("studio-1", "studio-2") and state == "failed" and message == lost
        assert f"Check your fal dashboard; `sam-bridge retry {job}` submits it again" in error, origin
        assert query(team_db, "SELECT state FROM history WHERE job_id=%s AND state='failed'", (job,)) == [
            ("failed",)]  # ended once, by one daemon; a third never took it over afterwards
    assert lost in error_file.read_text() and f"sam-bridge retry {jobs['hot-folder']}" in error_file.read_text()
    status = read_status(request)
    assert status["job_id"] == jobs["request-file"] and status["message"] == lost
    assert f"sam-bridge retry {jobs['request-file']}" in status["error"]
    env = {"home": tmp_path / "cli"}
    env["home"].mkdir()
    (env["home"] / "config.yaml").write_text("lease_seconds: 2.0\n")  # the team's lease, as its daemons have
    team = json.loads(sam_bridge(env["home"], "status", "--team", "--all", "--json", database=team_db).stdout)
    shown = {j["job_id"]: j for j in team["jobs"]}
    assert {shown[job]["state"] for job in jobs.values()} == {"failed"}
    assert {shown[job]["message"] for job in jobs.values()} == {lost}
    assert {(d["instance"], d["alive"]) for d in team["daemons"]} == {
        ("studio-0", False), ("studio-1", True), ("studio-2", True)}
    one = sam_bridge(env["home"], "status", jobs["hot-folder"], database=team_db)
    assert "failed" in one.stdout and "Check your fal dashboard" in one.stdout, one.stdout + one.stderr
    # a person checked and retries deliberately: it runs once, on one daemon, and the file is done
    retried = sam_bridge(env["home"], "retry", jobs["hot-folder"], database=team_db)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    wait_for(stems_for(source)[2].exists, timeout=30, what="the retried job's stems")
    wait_for(lambda: not error_file.exists(), timeout=30, what="the error file going once the retry is done")
    time.sleep(2.0)
    assert stand_in.stats()["submits"] == 3  # the deliberate retry, once
    runs = query(team_db, "SELECT state FROM history WHERE job_id=%s AND state IN ('submitted', 'done')",
                 (jobs["hot-folder"],))
    assert runs == [("submitted",), ("done",)]
    assert query(team_db, "SELECT state FROM jobs WHERE id=%s", (jobs["hot-folder"],)) == [("done",)]
    assert sf.info(str(stems_for(source)[0])).frames == int(SECONDS * 44100)


def test_a_cancel_through_the_cli_or_another_daemon_stops_the_job_where_it_runs_and_no_one_takes_it_up(
        daemon_factory, team_db: str, tmp_path: Path) -> None:
    from tests.osc_helpers import OscClient
    from tests.team.test_team_cli import sam_bridge

    slow = StandIn(tmp_path / "stand-in.log", job_time=30.0)
    try:
        shared = tmp_path / "shared"
        shared.mkdir()
        daemons = start_team(daemon_factory, slow, team_db, tmp_path, shared, 3, lease=2.0)
        infos = [json.loads(d.info_path.read_text()) for d in daemons]
        sources = [drop_audio(shared / f"take{n}.wav", SECONDS, n) for n in range(2)]
        wait_for(lambda: query(team_db, "SELECT count(*) FROM jobs WHERE state='running'") == [(2,)], timeout=30,
                 what="both jobs running at the service")
        (by_cli, cli_owner), (by_osc, osc_owner) = query(team_db, "SELECT id, owner FROM jobs ORDER BY source")
        cli = tmp_path / "cli"
        cli.mkdir()
        (cli / "config.yaml").write_text("lease_seconds: 2.0\n")
        cancelled = sam_bridge(cli, "cancel", by_cli, database=team_db)
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        other = next(n for n in range(3) if f"studio-{n}" != osc_owner)  # a daemon that does not run it
        device = OscClient((str(infos[other]["osc"]["host"]), int(infos[other]["osc"]["port"])))
        try:
            device.send("/sam/cancel", by_osc)
            got = device.receive()
            assert (got.address, got.args) == ("/sam/cancel/ok", [by_osc])
        finally:
            device.sock.close()
        wait_for(lambda: query(team_db, "SELECT count(*) FROM jobs WHERE state='cancelled'") == [(2,)], timeout=30,
                 what="both jobs cancelled")
        for source in sources:
            error = source.with_name(source.name + ".error.txt")
            wait_for(error.exists, timeout=30, what=f"{error.name}")
            assert "The job was cancelled." in error.read_text()
        wait_for(lambda: slow.stats()["cancels"] == 2, timeout=10, what="the service seeing both cancels")
        time.sleep(3 * 2.0)  # three leases: time enough for another daemon to take a job up again
        assert slow.stats()["submits"] == 2
        after = query(team_db, "SELECT id, owner, state FROM jobs ORDER BY source")
        assert after == [(by_cli, cli_owner, "cancelled"), (by_osc, osc_owner, "cancelled")]  # still where it ran
        for job in (by_cli, by_osc):
            states = [s for (s,) in query(team_db, "SELECT state FROM history WHERE job_id=%s ORDER BY at", (job,))]
            assert states[-1] == "cancelled" and states.count("cancelled") == 1 and states.count("submitted") == 1
        assert not list(shared.glob("Stems/*.wav"))  # nothing written for a cancelled job
    finally:
        slow.stop()

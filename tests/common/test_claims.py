"""Cross-daemon claims: one winner per file version, takeover when the holder dies, done is forever."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from bridge.common.claims import Claim, ClaimStore, claim_key, claims_dir
from bridge.common.file_gate import FileSnapshot


def make_source(tmp_path: Path, name: str = "take.wav", data: bytes = b"audio") -> tuple[Path, FileSnapshot]:
    path = tmp_path / name
    path.write_bytes(data)
    snapshot = FileSnapshot.of(path)
    assert snapshot is not None
    return path, snapshot


def age_claim(claim_path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(claim_path, (old, old))


def race(stores: list[ClaimStore], source: Path, snapshot: FileSnapshot) -> list[Claim]:
    barrier = threading.Barrier(len(stores))
    won: list[Claim] = []
    lock = threading.Lock()

    def attempt(store: ClaimStore) -> None:
        barrier.wait()
        outcome = store.try_claim(source, snapshot)
        if outcome.claim is not None:
            with lock:
                won.append(outcome.claim)

    threads = [threading.Thread(target=attempt, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_first_claim_wins_and_others_are_told_who_holds_it(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    first, second = ClaimStore("studio-a", ttl=60), ClaimStore("studio-b", ttl=60)
    won = first.try_claim(source, snapshot)
    assert won.claim is not None
    assert won.claim.path.parent == claims_dir(source) == tmp_path / ".sam-bridge" / "claims"
    record = json.loads(won.claim.path.read_text())
    assert record["instance"] == "studio-a" and record["source"] == "take.wav"
    lost = second.try_claim(source, snapshot)
    assert lost.claim is None and not lost.done_elsewhere
    assert lost.holder == first.host
    assert 0 < lost.recheck_after <= 60.05


def test_racing_daemons_yield_exactly_one_winner(tmp_path: Path) -> None:
    for index in range(20):
        source, snapshot = make_source(tmp_path, f"take{index}.wav")
        won = race([ClaimStore(f"daemon-{n}", ttl=60) for n in range(8)], source, snapshot)
        assert len(won) == 1, f"{len(won)} winners for {source.name}"


def _claim_in_process(folder: str, instance: str, queue: multiprocessing.Queue[str]) -> None:
    source = Path(folder) / "shared.wav"
    snapshot = FileSnapshot.of(source)
    assert snapshot is not None
    outcome = ClaimStore(instance, ttl=60).try_claim(source, snapshot)
    queue.put(instance if outcome.claim is not None else "")


def test_racing_processes_yield_exactly_one_winner(tmp_path: Path) -> None:
    make_source(tmp_path, "shared.wav")
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(str(tmp_path), f"p{n}", queue))
                 for n in range(4)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert len([r for r in results if r]) == 1, results


def test_an_expired_claim_is_taken_over_by_exactly_one(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    dead = ClaimStore("crashed", ttl=5).try_claim(source, snapshot).claim
    assert dead is not None
    assert ClaimStore("x", ttl=5).try_claim(source, snapshot).claim is None  # still fresh
    age_claim(dead.path, 6)
    won = race([ClaimStore(f"daemon-{n}", ttl=5) for n in range(6)], source, snapshot)
    assert len(won) == 1
    assert won[0].generation == 2
    assert not ClaimStore("crashed", ttl=5).refresh(dead)  # the dead holder, back, learns it lost
    assert json.loads(won[0].path.read_text())["instance"].startswith("daemon-")


def test_refresh_keeps_a_claim_alive_and_reports_a_lost_one(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    holder = ClaimStore("holder", ttl=5)
    claim = holder.try_claim(source, snapshot).claim
    assert claim is not None
    age_claim(claim.path, 4)
    assert holder.refresh(claim)
    assert ClaimStore("other", ttl=5).try_claim(source, snapshot).claim is None  # refreshed: not stale
    age_claim(claim.path, 6)
    taken = ClaimStore("other", ttl=5).try_claim(source, snapshot).claim
    assert taken is not None
    assert not holder.refresh(claim)


def test_done_never_expires_and_a_new_version_is_a_new_claim(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    holder = ClaimStore("holder", ttl=1)
    claim = holder.try_claim(source, snapshot).claim
    assert claim is not None
    holder.mark_done(claim)
    age_claim(claim.path, 3600)
    assert json.loads(claim.path.read_text())["state"] == "done"
    outcome = ClaimStore("other", ttl=1).try_claim(source, snapshot)
    assert outcome.claim is None and outcome.done_elsewhere
    source.write_bytes(b"exported again, longer")  # a new file version
    new_snapshot = FileSnapshot.of(source)
    assert new_snapshot is not None and new_snapshot != snapshot
    assert ClaimStore("other", ttl=1).try_claim(source, new_snapshot).claim is not None


def test_release_lets_the_next_daemon_claim(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    holder, other = ClaimStore("holder", ttl=60), ClaimStore("other", ttl=60)
    claim = holder.try_claim(source, snapshot).claim
    assert claim is not None
    holder.release(claim)
    assert json.loads(claim.path.read_text())["state"] == "released"
    again = other.try_claim(source, snapshot).claim
    assert again is not None and again.generation == 2
    assert ClaimStore("third", ttl=60).try_claim(source, snapshot).claim is None


def test_own_claim_from_before_a_restart_is_adopted(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    before = ClaimStore("studio-a", ttl=60).try_claim(source, snapshot).claim
    assert before is not None
    after = ClaimStore("studio-a", ttl=60).try_claim(source, snapshot).claim
    assert after == before


def test_claim_of_an_ended_process_on_this_machine_is_taken_at_once(tmp_path: Path) -> None:
    source, snapshot = make_source(tmp_path)
    claim = ClaimStore("old-daemon", ttl=600).try_claim(source, snapshot).claim
    assert claim is not None
    context = multiprocessing.get_context("spawn")
    ended = context.Process(target=int)
    ended.start()
    ended.join(30)
    record = json.loads(claim.path.read_text())
    record["pid"] = ended.pid  # as if that process had claimed it, then died
    claim.path.write_text(json.dumps(record))
    taken = ClaimStore("new-daemon", ttl=600).try_claim(source, snapshot)
    assert taken.claim is not None and taken.claim.generation == 2


def test_a_claim_being_written_counts_as_held(tmp_path: Path) -> None:
    """Between O_EXCL create and the first write a marker is empty: never a reason to take over."""
    source, snapshot = make_source(tmp_path)
    folder = claims_dir(source)
    folder.mkdir(parents=True)
    (folder / f"{claim_key(source.name, snapshot)}.1.claim").touch()
    assert ClaimStore("other", ttl=60).try_claim(source, snapshot).claim is None


def test_prune_removes_markers_of_versions_that_are_gone(tmp_path: Path) -> None:
    store = ClaimStore("holder", ttl=5)
    kept_source, kept_snapshot = make_source(tmp_path, "kept.wav")
    kept = store.try_claim(kept_source, kept_snapshot).claim
    gone_source, gone_snapshot = make_source(tmp_path, "gone.wav")
    gone = store.try_claim(gone_source, gone_snapshot).claim
    running_source, running_snapshot = make_source(tmp_path, "running.wav")
    running = store.try_claim(running_source, running_snapshot).claim
    assert kept and gone and running
    store.mark_done(kept)
    store.mark_done(gone)
    gone_source.unlink()
    running_source.write_bytes(b"changed")  # its version is gone, but the claim is fresh and active
    assert store.prune(tmp_path) == 1
    assert kept.path.exists() and running.path.exists() and not gone.path.exists()
    age_claim(running.path, 10)
    assert store.prune(tmp_path) == 1
    assert not running.path.exists()


@pytest.mark.parametrize("name", ["Gesang – Strophe 1.wav", "a" * 200 + ".wav"])
def test_unusual_names_get_short_safe_keys(tmp_path: Path, name: str) -> None:
    source, snapshot = make_source(tmp_path, name)
    claim = ClaimStore("holder").try_claim(source, snapshot).claim
    assert claim is not None and len(claim.path.name) < 40


def test_a_done_claim_names_who_finished_it(tmp_path: Path) -> None:
    """A request folder's daemon, restarted under the same instance id, knows a request it took as its own."""
    source, snapshot = make_source(tmp_path)
    first = ClaimStore("host:/state-a").try_claim(source, snapshot).claim
    assert first is not None
    ClaimStore("host:/state-a").mark_done(first)
    for instance in ("host:/state-a", "host:/state-b"):
        outcome = ClaimStore(instance).try_claim(source, snapshot)
        assert outcome.claim is None and outcome.done_elsewhere and outcome.done_by == "host:/state-a"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_among_the_markers_stops_neither_a_claim_nor_the_prune(tmp_path: Path) -> None:
    """Anyone who can write a shared folder can plant `.sam-bridge/claims/<key>.1.claim` as a FIFO: reading
    it as a marker waited for a writer for ever, stopping the folder's thread."""
    source, snapshot = make_source(tmp_path)
    folder = claims_dir(source)
    folder.mkdir(parents=True)
    os.mkfifo(folder / f"{claim_key(source.name, snapshot)}.1.claim")  # the first claim's own name
    os.mkfifo(folder / "planted.claim")
    store = ClaimStore("studio-a")
    outcome: list[object] = []

    def claim_and_prune() -> None:
        outcome.append(store.try_claim(source, snapshot))
        outcome.append(store.prune(tmp_path))

    worker = threading.Thread(target=claim_and_prune, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # free the reader, then fail
        for fifo in folder.iterdir():
            with contextlib.suppress(OSError):  # ENXIO: the FIFO nobody is reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO marker blocked")
    assert outcome[1] == 0  # nothing of ours to prune; the FIFOs are not ours to remove


def test_on_windows_a_marker_refused_for_a_moment_is_looked_at_again_soon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Windows refuses to open a file another process is deleting or replacing (ERROR_ACCESS_DENIED, a
    PermissionError) for a moment. That is not another user's private marker: the file waited the whole
    TTL and the log blamed the other user's permissions. It is now looked at again within seconds."""
    import bridge.common.stems as stems

    source, snapshot = make_source(tmp_path)
    holder = ClaimStore("studio-a", ttl=120)
    held = holder.try_claim(source, snapshot).claim
    assert held is not None
    holder.release(held)  # released: the next look may take it
    monkeypatch.setattr(stems, "ON_WINDOWS", True)
    real_open = os.open
    refusals = {"left": 1}

    def windows_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".claim") and refusals["left"] > 0:
            refusals["left"] -= 1
            raise PermissionError(13, "Access is denied", str(path))  # WinError 5, as Windows reports it
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", windows_open)
    other = ClaimStore("studio-b", ttl=120)
    with caplog.at_level("INFO", logger="bridge.common.claims"):
        first = other.try_claim(source, snapshot)
    assert first.claim is None and first.recheck_after is not None and first.recheck_after <= 2.0
    assert "may not read" not in caplog.text and "private" not in caplog.text
    again = other.try_claim(source, snapshot)
    assert again.claim is not None  # the marker was readable again: released, so taken


@pytest.mark.parametrize("error", [errno.EIO, errno.ESTALE, errno.ETIMEDOUT])
def test_prune_keeps_the_done_marker_of_a_file_a_flaky_share_cannot_stat_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """On a network share a file that stays may fail to stat for a moment (EIO, ESTALE): only "no such file"
    says it is gone. Its done marker removed, the file would look new and be paid for again."""
    source, snapshot = make_source(tmp_path, "Net.wav")
    store = ClaimStore("a")
    claim = store.try_claim(source, snapshot).claim
    assert claim is not None
    store.mark_done(claim)
    real_stat = os.stat

    def flaky(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) == os.fspath(source):  # type: ignore[arg-type]
            raise OSError(error, os.strerror(error))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", flaky)
    assert store.prune(tmp_path) == 0
    monkeypatch.undo()
    assert claim.path.exists()
    assert store.try_claim(source, snapshot).done_elsewhere
    source.unlink()  # gone for real: its marker goes
    assert store.prune(tmp_path) == 1

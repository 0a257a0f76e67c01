"""ReadAhead / WriteBehind: order kept, memory bounded, errors raised in the caller, no thread left behind
(the autouse fixture in conftest fails any test that leaks one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bridge.audio.prefetch import Background, ReadAhead, WriteBehind


def test_read_ahead_yields_every_item_in_order() -> None:
    with ReadAhead(iter(range(1000)), depth=3) as items:
        assert list(items) == list(range(1000))
    assert list(items) == []  # exhausted stays exhausted


def test_read_ahead_runs_the_source_in_another_thread_and_no_further_than_depth() -> None:
    produced: list[int] = []
    threads: set[str] = set()

    def source() -> Iterator[int]:
        for n in range(100):
            threads.add(threading.current_thread().name)
            produced.append(n)
            yield n

    with ReadAhead(source(), depth=2, name="test-reader") as items:
        first = next(items)
        time.sleep(0.3)  # give the worker every chance to run ahead
        # consumed 1, queue holds 2, the worker holds 1 it cannot put yet
        assert first == 0 and len(produced) <= 4
    assert threads == {"test-reader"}


def test_read_ahead_raises_the_sources_error_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("unreadable block")

    got: list[int] = []
    with ReadAhead(source()) as items, pytest.raises(ValueError, match="unreadable block"):
        for item in items:
            got.append(item)
    assert got == [1, 2]


def test_read_ahead_closed_early_stops_its_worker() -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    with ReadAhead(endless(), depth=1) as items:
        assert next(items) == 0
    assert list(items) == []


def test_write_behind_writes_every_item_in_order_in_its_thread() -> None:
    written: list[tuple[int, str]] = []
    with WriteBehind(lambda n: written.append((n, threading.current_thread().name)), depth=2,
                     name="test-writer") as writer:
        for n in range(500):
            writer.submit(n)
    assert [n for n, _ in written] == list(range(500))
    assert {name for _, name in written} == {"test-writer"}


def test_write_behind_raises_the_sinks_error_in_the_caller_and_stops_writing() -> None:
    written: list[int] = []

    def sink(n: int) -> None:
        if n == 3:
            raise OSError(28, "No space left on device")
        written.append(n)

    writer = WriteBehind(sink, depth=1)
    with pytest.raises(OSError, match="No space"):
        for n in range(1000):
            writer.submit(n)
        writer.finish()
    writer.abandon()
    assert written == [0, 1, 2]


def test_write_behind_error_surfaces_at_finish_when_nothing_more_is_submitted() -> None:
    def sink(_n: int) -> None:
        raise RuntimeError("libsndfile: System error")

    writer = WriteBehind(sink)
    writer.submit(1)
    with pytest.raises(RuntimeError, match="System error"):
        writer.finish()


def test_write_behind_abandoned_by_a_failing_caller_drops_the_rest() -> None:
    started = threading.Event()
    release = threading.Event()
    written: list[int] = []

    def slow_sink(n: int) -> None:
        started.set()
        release.wait(5)
        written.append(n)

    releaser = threading.Timer(0.2, release.set)  # lets the sink finish while the writer is abandoned
    with pytest.raises(KeyError), WriteBehind(slow_sink, depth=4) as writer:
        for n in range(4):
            writer.submit(n)
        started.wait(5)
        releaser.start()
        raise KeyError("the caller failed")
    releaser.join()
    assert written == [0]  # the item in hand is finished, the queued ones are not written


def test_ctrl_c_while_closing_still_waits_for_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker may be reading a file the caller closes next: a Ctrl-C during the join must not leave it
    running (a thread reading a closed SoundFile crashes the interpreter)."""
    import signal

    def slow() -> Iterator[int]:
        for n in range(3):
            time.sleep(0.3)
            yield n

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        reader = ReadAhead(slow(), depth=1, name="slow-reader")
        with pytest.raises(KeyboardInterrupt):
            with reader:
                signal.setitimer(signal.ITIMER_REAL, 0.05)  # Ctrl-C while close() joins the sleeping worker
        assert not any(t.name == "slow-reader" for t in threading.enumerate())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_used_without_with_they_still_start_and_stop() -> None:
    reader = ReadAhead(iter(range(5)))
    assert list(reader) == list(range(5))
    reader.close()
    written: list[int] = []
    writer = WriteBehind(written.append)
    for n in range(5):
        writer.submit(n)
    writer.finish()
    assert written == list(range(5))


def test_ctrl_c_while_finishing_stops_the_writer_before_the_caller_closes_its_files() -> None:
    """Leaving the `with` waits for room for the end marker; Ctrl-C there must still stop the worker, or it
    would go on writing into stem files the caller deletes next."""
    import signal

    closed = threading.Event()
    after_close: list[int] = []

    def slow_sink(n: int) -> None:
        time.sleep(0.3)
        if closed.is_set():
            after_close.append(n)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.45)  # lands while __exit__ waits to put the end marker
        with pytest.raises(KeyboardInterrupt), WriteBehind(slow_sink, depth=2, name="slow-writer") as writer:
            for n in range(4):
                writer.submit(n)
        closed.set()  # what the caller does next: close and delete its files
        assert not any(t.name == "slow-writer" for t in threading.enumerate())
        time.sleep(0.7)
        assert after_close == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_background_returns_the_calls_value_from_its_own_thread() -> None:
    with Background(lambda: threading.current_thread().name, name="fetch-other") as other:
        assert other.wait(5.0)
        assert other.result() == "fetch-other"


def test_background_raises_the_calls_error_in_the_caller() -> None:
    def broken() -> int:
        raise OSError("disk full")

    with Background(broken) as other, pytest.raises(OSError, match="disk full"):
        other.result()


def test_background_tells_the_call_to_stop_when_the_caller_fails_and_waits_for_it() -> None:
    chunks: list[int] = []

    def download() -> None:
        for chunk in range(1000):
            if other.stopping.is_set():
                raise RuntimeError("told to stop")
            chunks.append(chunk)
            time.sleep(0.01)

    other = Background(download)
    with pytest.raises(KeyError), other:
        time.sleep(0.05)
        raise KeyError("the caller's own download failed")
    assert other.stopping.is_set() and other.wait(0)  # ended before the block was left
    assert 0 < len(chunks) < 1000
    with pytest.raises(RuntimeError, match="told to stop"):
        other.result()


def test_background_left_blocked_does_not_hold_up_a_failing_caller() -> None:
    """A call blocked where it cannot look at `stopping` (a stalled network read) is given `grace`
    seconds, then left to its own timeout; the caller's error goes on at once."""
    release = threading.Event()
    other = Background(lambda: release.wait(30.0), grace=0.2)
    try:
        with pytest.raises(KeyError), other:
            raise KeyError("Ctrl-C")
        assert not other.wait(0)  # still blocked: the caller was not held up until it ended
    finally:
        release.set()
        assert other.result() is True  # ended once released (no thread outlives the test)

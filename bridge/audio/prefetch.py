"""Overlap the stages of a streaming job on a second core: read ahead, write behind, or one call in the
background (the second of two downloads).

libsndfile, soxr and the FFTs release the GIL, so reading and decoding the next block, or writing the
last one, can run while the calling thread computes the current one. Both helpers hold at most `depth`
blocks, so memory stays bounded whatever the file's length, re-raise the worker's error in the calling
thread, and stop and join their thread when closed, also when the caller fails half-way.

Use them in a `with` block: the thread starts in `__enter__` and is always joined on the way out, even
when Ctrl-C lands while it starts or while it is being joined, because the worker may be using files
the caller closes right after (a thread left reading a closed SoundFile crashes the interpreter).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

_POLL = 0.05  # seconds a blocked worker waits before checking whether it was told to stop


class _Done:
    """Marks the end of the stream (carrying the worker's error, if any)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead(Generic[Item]):
    """Iterate `source` in a worker thread, up to `depth` items ahead of the consumer."""

    def __init__(self, source: Iterable[Item], depth: int = 2, name: str = "read-ahead") -> None:
        self._items: queue.Queue[Item | _Done] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._worker = _Worker(lambda: self._produce(source), name)

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        if self._finished:
            raise StopIteration
        if not self._worker.started:  # used without `with`
            self._worker.start(self.close)
        item = self._items.get()
        if isinstance(item, _Done):
            self._finished = True
            self._worker.join()
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def _produce(self, source: Iterable[Item]) -> None:
        end = _Done()
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            end = _Done(exc)
        self._put(end)

    def _put(self, item: Item | _Done) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the worker (it finishes the item it is reading) and wait for it."""
        try:
            self._stop.set()
        finally:  # even if Ctrl-C lands in between
            self._worker.join()
            self._finished = True

    def __enter__(self) -> ReadAhead[Item]:
        self._worker.start(self.close)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class WriteBehind(Generic[Item]):
    """Call `sink(item)` in a worker thread for each submitted item, in order, `depth` items behind.

    A failure of the sink is raised by the next `submit` or by `finish`; later items are dropped.
    """

    def __init__(self, sink: Callable[[Item], None], depth: int = 2, name: str = "write-behind") -> None:
        self._sink = sink
        self._items: queue.Queue[Item | _Done] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._worker = _Worker(self._consume, name)

    def submit(self, item: Item) -> None:
        if not self._worker.started:  # used without `with`
            self._worker.start(self.abandon)
        while True:
            self._raise_failure()
            try:
                self._items.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every submitted item went through the sink; raise the sink's failure, if any."""
        self._stop()
        self._raise_failure()

    def abandon(self) -> None:
        """Stop after the item in hand, dropping the rest (the caller is failing anyway)."""
        self._failed.set()
        self._stop()

    def _stop(self) -> None:
        try:
            while self._worker.started and not self._failed.is_set() and not self._worker.ended.is_set():
                try:
                    self._items.put(_Done(), timeout=_POLL)
                    break
                except queue.Full:
                    continue
        except BaseException:  # Ctrl-C while waiting for room: drop the rest, the caller is failing
            self._failed.set()
            raise
        finally:  # the worker must be gone before the caller closes the files it writes
            self._worker.join()

    def _consume(self) -> None:
        while True:
            try:
                item = self._items.get(timeout=_POLL)
            except queue.Empty:
                if self._failed.is_set():
                    return
                continue
            if isinstance(item, _Done) or self._failed.is_set():
                return
            try:
                self._sink(item)
            except BaseException as exc:  # raised in the caller's thread by submit/finish
                self._error = exc
                self._failed.set()
                return

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> WriteBehind[Item]:
        self._worker.start(self.abandon)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.finish()
        else:
            self.abandon()


class Background(Generic[Result]):
    """Run `call()` once in a worker thread while the caller does something else.

    `result()` returns what `call` returned or raises its error. Leaving the `with` block waits for the
    thread; when the caller failed (Ctrl-C too), it first sets `stopping`, which `call` should check
    often, and waits at most `grace` seconds: a call blocked in a network read cannot see it, and is
    ended by its caller closing the connection (it must hold nothing that may not outlive the block).
    """

    def __init__(self, call: Callable[[], Result], name: str = "background", grace: float = 2.0) -> None:
        self.stopping = threading.Event()
        self.grace = grace
        self._call = call
        self._value: Result | None = None
        self._error: BaseException | None = None
        self._worker = _Worker(self._run, name)

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # raised in the caller's thread by result()
            self._error = exc

    def wait(self, timeout: float) -> bool:
        """True once the call has ended (returned or failed)."""
        return self._worker.ended.wait(timeout)

    def result(self) -> Result:
        self._worker.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set: the call returned

    def __enter__(self) -> Background[Result]:
        self._worker.start(self._stop)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self._worker.join()
        else:
            self._stop()

    def _stop(self) -> None:
        self.stopping.set()
        if self._worker.started and not self._worker.ended.wait(self.grace):
            log.info("%s: still blocked %g s after being told to stop; leaving it to its timeout",
                     self._worker.name, self.grace)


class _Worker:
    """A daemon thread running `target` once, joined reliably: its own end marker is waited on, because
    after Ctrl-C interrupts `Thread.join`, CPython 3.11 may report a running thread as no longer alive."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.ended = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self.ended.set()

    def start(self, undo: Callable[[], None]) -> None:
        """Start the thread; if that is interrupted (Ctrl-C), `undo` (stop and join) before raising."""
        try:
            self._thread.start()
        except BaseException:
            undo()
            raise

    def join(self) -> None:
        """Wait for the thread to end, even through Ctrl-C (re-raised once it has ended)."""
        if not self.started:
            return
        interrupted: BaseException | None = None
        while True:
            try:
                self.ended.wait()
                self._thread.join()  # only the thread's own exit is left
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted

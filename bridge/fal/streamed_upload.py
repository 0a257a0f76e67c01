"""A file uploaded to fal's CDN while it is still being made (the FLAC an encoder writes as it reads).

The multipart flow is the official client's (10 MiB parts, up to 10 at once, `Accept-Encoding: identity`,
a JSON complete), with every part but the last exactly `part_size`: a part's PUT starts with its first byte
and declares `part_size` (a part is never sent chunked), its body following the producer. When the producer
ends inside that part it was the last, shorter one: its PUT is cut off before the declared length (the
file store keeps no part of a body that ends early) and sent again whole with its real length. A file
that ends within the first part goes as one POST of its bytes, as a small file always does.

Memory is bounded: the producer waits while `concurrency` parts are unsent (10 x 10 MiB). A part's bytes
are kept until its PUT is answered, so a failed PUT is retried from its first byte as any other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.common.errors import ServiceError

log = logging.getLogger(__name__)

Emit = Callable[[bytes], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StreamedFile:
    """A file made while it is uploaded: `produce(emit)` passes its bytes, in order, to `emit` (it may be
    run again: a retry of the whole upload starts over)."""

    name: str
    content_type: str
    produce: Callable[[Emit], Any]
    size_bound: int  # never larger: at most one part means one POST of bytes encoded in memory
    size_estimate: int  # for progress only
    whole_file: Callable[[], Path]  # the same file written whole (fal's storage: one PUT of a known length)


class _Stopped(Exception):
    """The upload failed or ended elsewhere: the producer and every part's body stop."""


class _PartCut(Exception):
    """The producer ended inside this part: it is the last one, shorter than its PUT declared."""


class _Part:
    def __init__(self, number: int) -> None:
        self.number = number
        self.chunks: list[bytes] = []  # as the producer passed them on: no copy, no growing buffer
        self.size = 0
        self.sealed = False  # no more bytes will come

    def data(self) -> bytes:
        return b"".join(self.chunks)


class Pipe:
    """Parts filled by the producer's thread, read by the PUTs' threads."""

    def __init__(self, part_size: int, concurrency: int) -> None:
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.changed = threading.Condition()
        self.parts: list[_Part] = []
        self.unsent = 0  # parts made and not yet answered (the memory bound)
        self.size = 0
        self.answered = 0  # bytes of the parts whose PUT was answered
        self.ended = False  # the producer finished
        self.failure: BaseException | None = None
        self.on_new_part: Callable[[_Part], None] = lambda part: None

    def emit(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            with self.changed:
                part = self._open_part()
                take = min(len(view), self.part_size - part.size)
                part.chunks.append(data if take == len(data) else bytes(view[:take]))
                part.size += take
                self.size += take
                if part.size == self.part_size:
                    part.sealed = True
                self.changed.notify_all()
            view = view[take:]

    def _open_part(self) -> _Part:
        """Lock held: the part being filled, a new one once the last is full (waiting for room)."""
        if self.parts and not self.parts[-1].sealed:
            return self.parts[-1]
        while self.unsent >= self.concurrency and self.failure is None:
            self.changed.wait()
        if self.failure is not None:
            raise _Stopped
        part = _Part(len(self.parts) + 1)
        self.parts.append(part)
        self.unsent += 1
        self.on_new_part(part)
        return part

    def end(self) -> None:
        with self.changed:
            if self.parts:
                self.parts[-1].sealed = True
            self.ended = True
            self.changed.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.changed:
            if self.failure is None:
                self.failure = exc
            self.changed.notify_all()

    def sent(self, part: _Part) -> None:
        with self.changed:
            self.unsent -= 1
            self.answered += part.size
            if part.number > 1:  # part 1 stays: a file that ends inside it goes as one POST of its bytes
                part.chunks = []
            self.changed.notify_all()

    def body(self, part: _Part, declared: int) -> Iterator[bytes]:
        """Part `part`'s bytes as they come, up to `declared`; `_PartCut` when it is sealed short of that."""
        offset = index = 0
        while offset < declared:
            with self.changed:
                while index >= len(part.chunks) and not part.sealed and self.failure is None:
                    self.changed.wait()
                if self.failure is not None:
                    raise _Stopped
                if index >= len(part.chunks):
                    raise _PartCut
                chunk = part.chunks[index]
            index += 1
            chunk = chunk[:declared - offset]  # a copy only if it runs past the declared length
            offset += len(chunk)
            yield chunk

    def final_length(self, part: _Part) -> int | None:
        with self.changed:
            return part.size if part.sealed else None


def run_multipart(file: StreamedFile, *, part_size: int, concurrency: int, start: Callable[[], tuple[str, str]],
                  put_part: Callable[[int, int, Callable[[], Iterator[bytes]]], str],
                  complete: Callable[[list[dict[str, Any]]], None],
                  single: Callable[[bytes], str], progress: Progress | None) -> str:
    """Upload `file` while `file.produce` makes it; returns its URL.

    `start()` begins a multipart upload (its URL); `put_part(number, length, body)` sends one part and
    returns its ETag; `complete(parts)` ends it; `single(data)` uploads a file that ended within one part.
    Progress is reported on the caller's thread as parts are answered."""
    pipe = Pipe(part_size, concurrency)
    pool = ThreadPoolExecutor(max_workers=pipe.concurrency, thread_name_prefix="fal-upload-part")
    futures: list[Future[dict[str, Any]]] = []
    started: Future[tuple[str, str]] = Future()

    def send(part: _Part) -> dict[str, Any]:
        started.result()  # the multipart upload has begun (or its failure is raised here)
        declared = pipe.final_length(part) or part_size
        if part.number == 1 and declared < part_size:
            raise _PartCut  # the whole file is this one part: it goes as one POST
        try:
            etag = put_part(part.number, declared, lambda: pipe.body(part, declared))
        except _PartCut:  # the producer ended inside this part: the last part, sent again with its real size
            length = pipe.final_length(part)
            if part.number == 1 or not length:
                raise
            etag = put_part(part.number, length, lambda: pipe.body(part, length))
        pipe.sent(part)
        return {"partNumber": part.number, "etag": etag}

    def on_new_part(part: _Part) -> None:
        future = pool.submit(send, part)
        future.add_done_callback(lambda done: _fail_on_error(pipe, done))
        futures.append(future)

    def produce() -> None:
        try:
            file.produce(pipe.emit)
            pipe.end()
        except BaseException as exc:  # handed to the caller's thread
            pipe.fail(exc)

    pipe.on_new_part = on_new_part
    producer = threading.Thread(target=produce, name="fal-upload-encode", daemon=True)
    producer.start()  # encoding starts while the multipart upload is begun
    try:
        try:
            started.set_result(start())
        except BaseException as exc:
            started.set_exception(exc)
            pipe.fail(exc)
            raise
        _follow(pipe, lambda: pipe.ended, file, progress)
        if pipe.size <= part_size:  # one part: as a small file goes, one POST (the multipart is left unused)
            return single(pipe.parts[0].data() if pipe.parts else b"")
        _follow(pipe, lambda: pipe.unsent == 0, file, progress)  # every part answered, or a failure raised
        parts = [future.result() for future in futures]
        if progress:
            progress(pipe.size, pipe.size)
        complete(sorted(parts, key=lambda part: int(part["partNumber"])))
        return started.result()[0]
    except BaseException as exc:
        pipe.fail(exc)
        raise
    finally:
        producer.join()
        pool.shutdown(wait=True, cancel_futures=True)


def _fail_on_error(pipe: Pipe, done: Future[dict[str, Any]]) -> None:
    exc = done.exception() if not done.cancelled() else None
    if exc is not None and not isinstance(exc, (_PartCut, _Stopped)):
        pipe.fail(exc)


def _follow(pipe: Pipe, finished: Callable[[], bool], file: StreamedFile, progress: Progress | None) -> None:
    """Wait until `finished()` (checked under the pipe's lock), reporting progress as parts are answered;
    raises the first failure of the producer or of a part."""
    reported = -1
    with pipe.changed:
        while not finished() and pipe.failure is None:
            done = pipe.answered
            if progress and done != reported:
                reported = done
                total = pipe.size if pipe.ended else max(file.size_estimate, pipe.size + 1)  # known at the end
                pipe.changed.release()
                try:
                    progress(done, total)
                finally:
                    pipe.changed.acquire()
            pipe.changed.wait(0.25)
        failure = pipe.failure
    if isinstance(failure, _Stopped):
        raise ServiceError("The upload stopped.")
    if failure is not None:
        raise failure

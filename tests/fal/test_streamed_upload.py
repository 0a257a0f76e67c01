"""A file uploaded while it is made, against the stand-in over real HTTP (strict mode: identity ETags, JSON
complete): parts leave before the producer ends, the last part is cut and sent again with its real length,
memory stays bounded, failures are retried or fall back to fal's storage with the whole file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bridge.common.errors import ServiceError, SourceError
from bridge.fal.client import FalClient
from bridge.fal.streamed_upload import Emit, StreamedFile
from bridge.local_service import LocalFalService
from tests.conftest import wait_for

PART = 64 * 1024


def payload(size: int) -> bytes:
    return bytes((i * 7919 + i // 251) % 256 for i in range(size))


def streamed(produce: Callable[[Emit], None], *, bound: int = 100 * PART, whole: Path | None = None) -> StreamedFile:
    def whole_file() -> Path:
        assert whole is not None, "the whole file was not expected to be needed"
        return whole

    return StreamedFile(name="mix.upload.flac", content_type="audio/flac", produce=produce, size_bound=bound,
                        size_estimate=bound // 2, whole_file=whole_file)


@pytest.fixture
def small_parts(client: FalClient) -> FalClient:
    client.storage.data_uri_limit = 0
    client.storage.part_size = PART
    return client


def multipart_calls(service: LocalFalService) -> int:
    return int(service.stats()["calls"].get("multipart", 0))


def test_parts_leave_while_the_file_is_still_being_made(small_parts: FalClient, service: LocalFalService) -> None:
    data = payload(int(2.5 * PART))
    arrived_before_end: list[int] = []

    def produce(emit: Emit) -> None:
        emit(data[:PART + 1])  # part 1 is full: its PUT must be answered while we wait here
        wait_for(lambda: len(service.stats()["upload_body_started"]) >= 1, timeout=10, what="part 1 to arrive")
        arrived_before_end.append(len(service.stats()["upload_body_started"]))
        emit(data[PART + 1:int(2.2 * PART)])
        # part 3 is in flight, declared a whole part: the file ends inside it, so it is cut and sent again
        wait_for(lambda: multipart_calls(service) >= 4, timeout=10, what="part 3's PUT to start")
        emit(data[int(2.2 * PART):])

    progress: list[tuple[int, int]] = []
    url = small_parts.storage.upload_streamed(streamed(produce), lambda done, total: progress.append((done, total)))
    assert httpx.get(url).content == data
    assert arrived_before_end == [1]
    calls = multipart_calls(service)
    assert calls == 1 + 3 + 1 + 1  # initiate, three parts, part 3 again with its real length, complete
    assert progress[-1] == (len(data), len(data))


def test_a_file_that_ends_inside_its_first_part_goes_as_one_post(small_parts: FalClient,
                                                                 service: LocalFalService) -> None:
    data = payload(PART // 3)
    url = small_parts.storage.upload_streamed(streamed(lambda emit: emit(data)))
    assert httpx.get(url).content == data
    assert service.stats()["calls"]["upload"] == 1
    assert multipart_calls(service) <= 2  # begun (and part 1 maybe cut off), never completed


def test_a_file_known_to_fit_one_part_is_made_in_memory_and_posted(small_parts: FalClient,
                                                                   service: LocalFalService) -> None:
    data = payload(PART - 10)
    url = small_parts.storage.upload_streamed(streamed(lambda emit: emit(data), bound=PART))
    assert httpx.get(url).content == data
    assert service.stats()["calls"]["upload"] == 1 and multipart_calls(service) == 0


def test_the_producer_waits_while_the_allowed_parts_are_unsent(small_parts: FalClient,
                                                               service: LocalFalService) -> None:
    """At most `part_concurrency` parts are held: the producer is held back until one is answered."""
    small_parts.storage.part_concurrency = 2
    service.faults.stall("multipart", seconds=0.3, times=100)
    data = payload(6 * PART)
    opened: list[float] = []

    def produce(emit: Emit) -> None:
        for number in range(6):
            emit(data[number * PART:number * PART + 1])  # opens part number+1 (waits for room first)
            opened.append(time.monotonic())
            emit(data[number * PART + 1:(number + 1) * PART])

    url = small_parts.storage.upload_streamed(streamed(produce))
    assert httpx.get(url).content == data
    assert all(opened[n] - opened[n - 2] >= 0.25 for n in range(2, 6))  # then one per answered part
    assert service.stats()["max_in_flight"]["multipart"] <= 2


def test_a_failing_part_is_retried_from_its_first_byte(small_parts: FalClient, service: LocalFalService) -> None:
    data = payload(3 * PART + 100)

    def produce(emit: Emit) -> None:
        wait_for(lambda: multipart_calls(service) >= 1, timeout=10, what="the upload to begin")
        service.faults.drop("multipart", times=1)  # part 1's PUT: the connection closes unanswered
        service.faults.fail("multipart", 503, times=1)  # its retry: a 503
        for offset in range(0, len(data), 5000):
            emit(data[offset:offset + 5000])

    url = small_parts.storage.upload_streamed(streamed(produce))
    assert httpx.get(url).content == data


def test_when_the_cdn_fails_fals_storage_gets_the_whole_file(small_parts: FalClient, service: LocalFalService,
                                                             tmp_path: Path) -> None:
    data = payload(3 * PART)
    whole = tmp_path / "mix.upload.flac"
    whole.write_bytes(data)
    service.faults.fail("multipart", 500, times=1000)
    url = small_parts.storage.upload_streamed(streamed(lambda emit: emit(data), whole=whole))
    assert "/files/f/" in url and httpx.get(url).content == data
    assert service.stats()["calls"]["storage"] == 2  # initiate + the one PUT of the whole file


def test_a_source_error_while_making_the_file_fails_the_upload_as_it_is(small_parts: FalClient,
                                                                        service: LocalFalService) -> None:
    def produce(emit: Emit) -> None:
        emit(payload(PART + 500))
        raise SourceError("“mix.wav” ended early while reading it.")

    started = time.monotonic()
    with pytest.raises(SourceError, match="ended early"):
        small_parts.storage.upload_streamed(streamed(produce))
    assert time.monotonic() - started < 10
    assert service.stats()["calls"].get("storage", 0) == 0  # not a CDN failure: no fallback
    assert service.stats()["stored_bytes"] == 0  # nothing was completed


def test_a_part_that_keeps_failing_fails_the_upload_and_stops_the_producer(small_parts: FalClient,
                                                                           service: LocalFalService,
                                                                           tmp_path: Path) -> None:
    service.faults.fail("storage", 500, times=1000)  # the fallback fails too: the CDN's error is raised
    emitted: list[int] = []

    def produce(emit: Emit) -> None:
        wait_for(lambda: multipart_calls(service) >= 1, timeout=10, what="the upload to begin")
        service.faults.fail("multipart", 500, times=1000)
        for _ in range(1000):
            emit(payload(PART // 2))
            emitted.append(1)

    whole = tmp_path / "w.flac"
    whole.write_bytes(b"x" * 10)
    with pytest.raises(ServiceError):
        small_parts.storage.upload_streamed(streamed(produce, whole=whole))
    assert len(emitted) < 100  # stopped early, not made to the end

"""The stand-in's HTTP plumbing: request bodies read in chunks, and the reply a route gives."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

COPY_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def readline(self, size: int, /) -> bytes: ...


class BadRequestBody(Exception):
    pass


class BodyReader:
    """The request body (Content-Length or chunked), read in chunks so uploads never sit in memory."""

    def __init__(self, rfile: _Readable, transfer_encoding: str, content_length: str | None) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in transfer_encoding.lower()
        try:
            self._remaining = 0 if self._chunked else int(content_length or 0)
        except ValueError:
            raise BadRequestBody("invalid Content-Length") from None
        if self._remaining < 0:
            raise BadRequestBody("invalid Content-Length")
        self._chunk_left = 0
        self._finished = not self._chunked and self._remaining == 0
        self.first_byte_at: float | None = None  # wall clock (time.time) when its first byte was read


    def chunks(self) -> Iterator[bytes]:
        if not self._finished and self.first_byte_at is None:
            peek = getattr(self._rfile, "peek", None)  # a read waits for a whole chunk: peek for the first byte
            if peek is not None:
                peek(1)
            self.first_byte_at = time.time()
        while not self._finished:
            data = self._read_some()
            if data:
                yield data

    def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise BadRequestBody(f"request body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        for _chunk in self.chunks():
            pass

    def _read_some(self) -> bytes:
        if not self._chunked:
            data = self._rfile.read(min(COPY_CHUNK, self._remaining))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            self._remaining -= len(data)
            self._finished = self._remaining == 0
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise ConnectionError("client closed the connection mid-body")
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequestBody("invalid chunked encoding") from None
            if self._chunk_left == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._finished = True
                return b""
        data = self._rfile.read(min(COPY_CHUNK, self._chunk_left))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(16)  # CRLF after the chunk
        return data


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-encodable, bytes, or None
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Any], None] | None = None  # writes the body itself (downloads, SSE)

"""Getting audio to fal: a data URI for small files, fal's CDN (token flow, multipart above 100 MiB) else."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from bridge.common.errors import AccountLocked, AuthError, ServiceError

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 100 * 1024 * 1024
PART_SIZE = 10 * 1024 * 1024
CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class Caller(Protocol):
    """What storage needs of the client: one HTTP call with its retry rules and typed errors."""

    def call(self, method: str, url: str, what: str, *, idempotent: bool = True, auth: bool = True,
             ok: tuple[int, ...] = (200, 201, 202), read_timeout: float | None = None,
             **kwargs: Any) -> httpx.Response: ...


class FalStorage:
    def __init__(self, client: Caller, *, rest_url: str, data_uri_limit: int,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE) -> None:
        self._client = client
        self.rest_url = rest_url
        self.data_uri_limit = data_uri_limit
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._token: dict[str, Any] | None = None
        self._token_lock = threading.Lock()

    def upload(self, path: Path, content_type: str, progress: Progress | None = None) -> str:
        """Return a URL (or data URI) the service can read `path` from."""
        size = path.stat().st_size
        if size <= self.data_uri_limit:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            if progress:
                progress(size, size)
            return f"data:{content_type};base64,{data}"
        try:
            return self._upload_to_cdn(path, content_type, size, progress)
        except AuthError as refused:
            if isinstance(refused, AccountLocked) or not self._forget_token():
                raise
            # a token the file store no longer takes (revoked early, or a stand-in restarted): ask anew once
            log.info("the file store refused the upload token (%s); asking for a new one", refused.message)
            return self._upload_to_cdn(path, content_type, size, progress)

    def _upload_to_cdn(self, path: Path, content_type: str, size: int, progress: Progress | None) -> str:
        if size > self.multipart_threshold:
            return self._upload_multipart(path, content_type, size, progress)
        token = self._cdn_token()
        response = self._client.call(
            "POST", f"{token['base_url']}/files/upload", "upload", auth=False,
            headers=self._cdn_headers(token, path, content_type) | {"Content-Length": str(size)},
            content=lambda: _read_chunks(path, 0, size, progress, size),
        )
        return str(response.json()["access_url"])

    def _upload_multipart(self, path: Path, content_type: str, size: int, progress: Progress | None) -> str:
        token = self._cdn_token()
        headers = self._cdn_headers(token, path, content_type)
        started = self._client.call("POST", f"{token['base_url']}/files/upload/multipart", "upload",
                                    auth=False, headers=headers).json()
        access_url, upload_id = str(started["access_url"]), str(started["uploadId"])
        parts: list[dict[str, Any]] = []
        for number, offset in enumerate(range(0, size, self.part_size), start=1):
            length = min(self.part_size, size - offset)
            response = self._client.call(
                "PUT", f"{access_url}/multipart/{upload_id}/{number}", f"upload part {number}", auth=False,
                headers={**headers, "Content-Length": str(length)},
                # a fresh 1 MiB-chunk stream per try: a whole 10 MiB part held by the request would live
                # until the cyclic GC runs (httpx's response and its stream refer to each other)
                content=lambda start=offset, count=length: _read_chunks(path, start, count, None, size),
            )
            etag = response.headers.get("etag")
            if not etag:
                raise ServiceError(f"The file store did not confirm part {number} of the upload.")
            parts.append({"partNumber": number, "etag": etag})
            if progress:
                progress(offset + length, size)
        done = self._client.call("POST", f"{access_url}/multipart/{upload_id}/complete", "upload",
                                 auth=False, headers=headers, json={"parts": parts}).json()
        return str(done.get("access_url", access_url))

    def _cdn_token(self) -> dict[str, Any]:
        with self._token_lock:
            if self._token and self._token["expires"] - 60 > time.time():
                return self._token
            data: dict[str, Any] = self._client.call("POST", f"{self.rest_url}/storage/auth/token", "upload",
                                     params={"storage_type": "fal-cdn-v3"}, json={}).json()
            data["expires"] = _parse_expiry(data.get("expires_at"))
            data["base_url"] = str(data["base_url"]).rstrip("/")
            self._token = data
            return data

    def _forget_token(self) -> bool:
        """Drop the cached upload token; False when there was none (the refusal was of a new one)."""
        with self._token_lock:
            had, self._token = self._token is not None, None
            return had

    @staticmethod
    def _cdn_headers(token: dict[str, Any], path: Path, content_type: str) -> dict[str, str]:
        return {
            "Authorization": f"{token.get('token_type', 'Bearer')} {token['token']}",
            "Content-Type": content_type,
            "X-Fal-File-Name": quote(path.name),
        }


def _read_chunks(path: Path, offset: int, length: int, progress: Progress | None, total: int) -> Iterator[bytes]:
    sent = 0
    with open(path, "rb") as source:
        source.seek(offset)
        while sent < length:
            chunk = source.read(min(CHUNK, length - sent))
            if not chunk:
                break
            sent += len(chunk)
            if progress:
                progress(offset + sent, total)
            yield chunk


def _parse_expiry(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return time.time() + 600

"""Getting audio to fal: a data URI for small files, fal's CDN else, fal's GCS storage when the CDN fails.

The flows are the official client's (`fal-client` 1.0.3, `client.py`): a CDN token from
`{rest}/storage/auth/token?storage_type=fal-cdn-v3`; one POST of the bytes, or above 100 MiB a multipart
upload (10 MiB parts, up to 10 at once, each PUT asking for `Accept-Encoding: identity` so the answer keeps
its ETag; the complete POST is JSON and its answer is not used). When the CDN upload fails: fal's storage
(`{rest}/storage/upload/initiate?storage_type=gcs` with the key, then one PUT of the bytes to the signed
`upload_url` it returns, without the key; the file is at `file_url`). A file made while it is uploaded (the
FLAC of a part, encoded as it goes): see streamed_upload.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from bridge.common.errors import AccountLocked, AuthError, ServiceError
from bridge.fal.streamed_upload import StreamedFile, run_multipart

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 100 * 1024 * 1024
PART_SIZE = 10 * 1024 * 1024
PART_CONCURRENCY = 10
CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class Caller(Protocol):
    """What storage needs of the client: one HTTP call with its retry rules and typed errors."""

    def call(self, method: str, url: str, what: str, *, idempotent: bool = True, auth: bool = True,
             ok: tuple[int, ...] = (200, 201, 202), read_timeout: float | None = None,
             attempts: int | None = None, **kwargs: Any) -> httpx.Response: ...


class FalStorage:
    def __init__(self, client: Caller, *, rest_url: str, data_uri_limit: int,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE,
                 part_concurrency: int = PART_CONCURRENCY) -> None:
        self._client = client
        self.rest_url = rest_url
        self.data_uri_limit = data_uri_limit
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.part_concurrency = part_concurrency
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
            return self._upload_to_cdn_with_fresh_token(path, content_type, size, progress)
        except AccountLocked:
            raise  # fal's storage would refuse it just the same
        except ServiceError as cdn_failed:
            log.warning("the upload to fal's CDN failed (%s); trying fal's storage instead", cdn_failed.message)
            try:
                return self._upload_to_storage(path, content_type, size, progress)
            except ServiceError as storage_failed:
                log.warning("the upload to fal's storage failed too: %s", storage_failed.message)
                raise cdn_failed from None

    def upload_streamed(self, file: StreamedFile, progress: Progress | None = None) -> str:
        """Upload `file` while it is made: see streamed_upload. fal's storage (the fallback when the CDN
        fails) takes one PUT of a known length, so it gets `file.whole_file()`, written whole."""
        try:
            return self._with_fresh_token(lambda: self._stream_to_cdn(file, progress))
        except AccountLocked:
            raise
        except ServiceError as cdn_failed:
            log.warning("the upload to fal's CDN failed (%s); trying fal's storage instead", cdn_failed.message)
            try:
                path = file.whole_file()
                return self._upload_to_storage(path, file.content_type, path.stat().st_size, progress)
            except ServiceError as storage_failed:
                log.warning("the upload to fal's storage failed too: %s", storage_failed.message)
                raise cdn_failed from None

    def _stream_to_cdn(self, file: StreamedFile, progress: Progress | None) -> str:
        if file.size_bound <= self.part_size:  # one POST with its length: made in memory first (<= 10 MiB)
            data = bytearray()
            file.produce(data.extend)
            return self._post_bytes(bytes(data), file, progress)
        token = self._cdn_token()
        headers = self._cdn_headers(token, file.name, file.content_type)
        state: dict[str, str] = {}

        def start() -> tuple[str, str]:
            started = self._client.call("POST", f"{token['base_url']}/files/upload/multipart", "upload",
                                        auth=False, headers=headers | {"Accept": "application/json"}).json()
            state["url"], state["id"] = str(started["access_url"]), str(started["uploadId"])
            return state["url"], state["id"]

        def put_part(number: int, length: int, body: Callable[[], Iterator[bytes]]) -> str:
            response = self._client.call(
                "PUT", f"{state['url']}/multipart/{state['id']}/{number}", f"upload part {number}", auth=False,
                headers={"Authorization": headers["Authorization"], "Content-Type": file.content_type,
                         "Accept-Encoding": "identity", "Content-Length": str(length)},
                content=body)
            etag = response.headers.get("etag")
            if not etag:
                raise ServiceError(f"The file store did not confirm part {number} of the upload (no ETag).")
            return str(etag)

        def complete(parts: list[dict[str, Any]]) -> None:
            self._client.call("POST", f"{state['url']}/multipart/{state['id']}/complete", "upload", auth=False,
                              headers={"Authorization": headers["Authorization"]}, json={"parts": parts},
                              ok=(200, 201, 202, 204))

        return run_multipart(file, part_size=self.part_size, concurrency=self.part_concurrency, start=start,
                             put_part=put_part, complete=complete,
                             single=lambda data: self._post_bytes(data, file, progress), progress=progress)

    def _post_bytes(self, data: bytes, file: StreamedFile, progress: Progress | None) -> str:
        if len(data) <= self.data_uri_limit:
            if progress:
                progress(len(data), len(data))
            return f"data:{file.content_type};base64,{base64.b64encode(data).decode('ascii')}"
        token = self._cdn_token()
        response = self._client.call(
            "POST", f"{token['base_url']}/files/upload", "upload", auth=False,
            headers=self._cdn_headers(token, file.name, file.content_type) | {"Content-Length": str(len(data))},
            content=lambda: _byte_chunks(data, progress))
        return str(response.json()["access_url"])

    def _upload_to_cdn_with_fresh_token(self, path: Path, content_type: str, size: int,
                                        progress: Progress | None) -> str:
        return self._with_fresh_token(lambda: self._upload_to_cdn(path, content_type, size, progress))

    def _with_fresh_token(self, upload: Callable[[], str]) -> str:
        try:
            return upload()
        except AuthError as refused:
            if isinstance(refused, AccountLocked) or not self._forget_token():
                raise
            # a token the file store no longer takes (revoked early, or a stand-in restarted): ask anew once
            log.info("the file store refused the upload token (%s); asking for a new one", refused.message)
            return upload()

    def _upload_to_cdn(self, path: Path, content_type: str, size: int, progress: Progress | None) -> str:
        if size > self.multipart_threshold:
            return self._upload_multipart(path, content_type, size, progress)
        token = self._cdn_token()
        response = self._client.call(
            "POST", f"{token['base_url']}/files/upload", "upload", auth=False,
            headers=self._cdn_headers(token, path.name, content_type) | {"Content-Length": str(size)},
            content=lambda: _read_chunks(path, 0, size, progress, size),
        )
        return str(response.json()["access_url"])

    def _upload_multipart(self, path: Path, content_type: str, size: int, progress: Progress | None) -> str:
        token = self._cdn_token()
        headers = self._cdn_headers(token, path.name, content_type) | {"Accept": "application/json"}
        started = self._client.call("POST", f"{token['base_url']}/files/upload/multipart", "upload",
                                    auth=False, headers=headers).json()
        access_url, upload_id = str(started["access_url"]), str(started["uploadId"])
        part_headers = {"Authorization": headers["Authorization"], "Content-Type": content_type,
                        "Accept-Encoding": "identity"}  # identity: else the file store may drop the ETag

        def send_part(number: int, offset: int, length: int) -> dict[str, Any]:
            response = self._client.call(
                "PUT", f"{access_url}/multipart/{upload_id}/{number}", f"upload part {number}", auth=False,
                headers=part_headers | {"Content-Length": str(length)},
                # a fresh 1 MiB-chunk stream per try: no whole 10 MiB part sits in memory
                content=lambda: _read_chunks(path, offset, length, None, size),
            )
            etag = response.headers.get("etag")
            if not etag:
                raise ServiceError(f"The file store did not confirm part {number} of the upload (no ETag).")
            return {"partNumber": number, "etag": etag}

        parts: list[dict[str, Any]] = []
        sent = 0
        with ThreadPoolExecutor(max_workers=max(1, self.part_concurrency),
                                thread_name_prefix="fal-upload-part") as pool:
            lengths: dict[Future[dict[str, Any]], int] = {}
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                length = min(self.part_size, size - offset)
                lengths[pool.submit(send_part, number, offset, length)] = length
            try:
                for future in as_completed(lengths):  # each part as it is answered; its failure raised here
                    parts.append(future.result())
                    sent += lengths[future]
                    if progress:
                        progress(sent, size)  # on the caller's thread, like every other progress report
            except BaseException:
                for other in lengths:
                    other.cancel()  # parts not yet begun are never sent
                raise
        parts.sort(key=lambda part: int(part["partNumber"]))
        # JSON (Content-Type: application/json); the answer (often empty) is not used: access_url is the file
        self._client.call("POST", f"{access_url}/multipart/{upload_id}/complete", "upload", auth=False,
                          headers={"Authorization": headers["Authorization"]}, json={"parts": parts},
                          ok=(200, 201, 202, 204))
        return access_url

    def _upload_to_storage(self, path: Path, content_type: str, size: int, progress: Progress | None) -> str:
        """fal's GCS storage: a signed upload URL from the REST API (with the key), then one PUT there."""
        started = self._client.call("POST", f"{self.rest_url}/storage/upload/initiate", "upload",
                                    params={"storage_type": "gcs"},
                                    json={"file_name": path.name, "content_type": content_type},
                                    headers={"Accept": "application/json"}).json()
        upload_url, file_url = str(started["upload_url"]), str(started["file_url"])
        self._client.call("PUT", upload_url, "upload", auth=False,  # a signed URL: the key never goes there
                          headers={"Content-Type": content_type, "Content-Length": str(size)},
                          content=lambda: _read_chunks(path, 0, size, progress, size))
        return file_url

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
    def _cdn_headers(token: dict[str, Any], name: str, content_type: str) -> dict[str, str]:
        return {
            "Authorization": f"{token.get('token_type', 'Bearer')} {token['token']}",
            "Content-Type": content_type,
            "X-Fal-File-Name": quote(name),
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


def _byte_chunks(data: bytes, progress: Progress | None) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        chunk = view[offset:offset + CHUNK]
        if progress:
            progress(offset + len(chunk), len(data))
        yield bytes(chunk)


def _parse_expiry(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return time.time() + 600

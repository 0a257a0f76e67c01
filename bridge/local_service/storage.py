"""The local service's file store: fal's CDN token, single and multipart uploads, fal's GCS storage
(a signed upload URL), public file URLs, and how long files are kept.

Files live under `<data dir>/files/<id>`; their URL is `{base}/files/f/{id}/{quoted name}`. Bodies are
streamed to disk in chunks (uploads can be hundreds of MB) and appear under their final name only when
complete (temp name, then `os.replace`). An upload costs the store its bytes written once and nothing more:
no hash on the way in (a file's SHA-256 is made when a request first reads it), a part's ETag is a fresh
token (the client only hands it back, and a part sent again gets a new one), and the completion joins the
parts in the kernel (`copy_file_range`) where it can.

Kept files: once both results of a request have been downloaded in full, its upload is deleted at once and
its results after `fetched_grace` seconds (a download retried straight away still works); any file is
deleted `file_ttl` seconds (an hour) after it was made; past `max_bytes` the oldest files go first. A
deleted file's URL answers 404, as an expired CDN link does.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

TOKEN_LIFETIME = 3600.0
FILE_TTL = 3600.0
FETCHED_GRACE = 60.0
MAX_STORE_BYTES = 4 << 30
MAX_PARTS = 10_000
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class StorageError(Exception):
    """A storage call the caller got wrong: answered with `status` and `{"detail": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StoredFile:
    file_id: str
    name: str
    content_type: str
    path: Path
    size: int = 0
    sha256: str = ""
    complete: bool = False
    expired: bool = False
    created: float = field(default_factory=time.monotonic)
    delete_at: float | None = None  # set once the request it belongs to has had its results fetched


@dataclass
class MultipartUpload:
    upload_id: str
    file: StoredFile
    parts_dir: Path
    etags: dict[int, str] = field(default_factory=dict)


@dataclass
class RequestFiles:
    """The files of one request: what it read, what it made, which of those were downloaded in full."""

    inputs: list[str]
    results: list[str]
    fetched: set[str] = field(default_factory=set)


class FileStore:
    """Thread-safe; `base_url` is set once the server knows its port."""

    def __init__(self, root: Path, *, file_ttl: float = FILE_TTL, fetched_grace: float = FETCHED_GRACE,
                 max_bytes: int = MAX_STORE_BYTES) -> None:
        self.base_url = ""
        self.file_ttl, self.fetched_grace, self.max_bytes = file_ttl, fetched_grace, max_bytes
        self._requests: dict[str, RequestFiles] = {}  # result file id -> its request's files
        self._signed: dict[str, tuple[StoredFile, str]] = {}  # GCS-style uploads awaiting their PUT
        self._files_dir = root / "files"
        self._parts_dir = root / "parts"
        self._work_dir = root / "work"
        for folder in (self._files_dir, self._parts_dir, self._work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, MultipartUpload] = {}

    # -- CDN token --------------------------------------------------------------------------------

    def issue_token(self) -> dict[str, str]:
        token = secrets.token_urlsafe(24)
        expires = time.time() + TOKEN_LIFETIME
        with self._lock:
            self._tokens[token] = expires
        return {
            "token": token,
            "token_type": "Bearer",
            "base_url": self.base_url,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        }

    def token_valid(self, token: str) -> bool:
        now = time.time()
        with self._lock:
            return any(hmac.compare_digest(token, known) and expires > now
                       for known, expires in self._tokens.items())

    # -- uploads ----------------------------------------------------------------------------------

    def save_upload(self, body: Iterable[bytes], name: str, content_type: str) -> StoredFile:
        record = self._new_record(name, content_type)
        record.size = _write_atomically(body, record.path)
        return self._publish(record)

    def start_signed_upload(self, name: str, content_type: str) -> tuple[StoredFile, str]:
        """fal's GCS flow: a record and the signature of its one-time upload URL (the key never goes there)."""
        record = self._new_record(name, content_type)
        signature = secrets.token_hex(16)
        with self._lock:
            self._signed[record.file_id] = (record, signature)
        return record, signature

    def save_signed_upload(self, file_id: str, signature: str, body: Iterable[bytes]) -> StoredFile:
        with self._lock:
            pending = self._signed.get(file_id)
            if pending is None or not hmac.compare_digest(pending[1], signature):
                raise StorageError(403, "The signed upload URL is invalid or was used already")
            del self._signed[file_id]
        record = pending[0]
        record.size = _write_atomically(body, record.path)
        return self._publish(record)

    def start_multipart(self, name: str, content_type: str) -> tuple[StoredFile, str]:
        record = self._new_record(name, content_type)
        upload = MultipartUpload(uuid.uuid4().hex, record, self._parts_dir / uuid.uuid4().hex)
        upload.parts_dir.mkdir()
        with self._lock:
            self._files[record.file_id] = record
            self._uploads[upload.upload_id] = upload
        return record, upload.upload_id

    def save_part(self, file_id: str, upload_id: str, number: int, body: Iterable[bytes]) -> str:
        upload = self._upload(file_id, upload_id)
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(400, f"partNumber must be between 1 and {MAX_PARTS}")
        part_path = upload.parts_dir / f"{number:05d}.part"
        _write_atomically(body, part_path)
        etag = f'"{uuid.uuid4().hex}"'  # opaque, as fal's: what counts is that the client hands this one back
        with self._lock:
            upload.etags[number] = etag
        return etag

    def complete_multipart(self, file_id: str, upload_id: str, parts: object) -> StoredFile:
        upload = self._upload(file_id, upload_id)
        numbers = _checked_parts(parts, upload)
        paths = [upload.parts_dir / f"{number:05d}.part" for number in numbers]
        record = upload.file
        record.size = _join_atomically(paths, record.path)
        with self._lock:
            self._uploads.pop(upload_id, None)
        shutil.rmtree(upload.parts_dir, ignore_errors=True)
        return self._publish(record)

    # -- results and lookups ----------------------------------------------------------------------

    def work_path(self, suffix: str = "") -> Path:
        """A fresh path for a job's scratch or result file (never an existing file)."""
        return self._work_dir / f"{uuid.uuid4().hex}{suffix}"

    def adopt(self, path: Path, name: str, content_type: str) -> StoredFile:
        """Publish a finished work file (moved into the store) and return its record."""
        record = self._new_record(name, content_type)
        os.replace(path, record.path)
        record.size = record.path.stat().st_size
        return self._publish(record)

    def url_for(self, record: StoredFile) -> str:
        return f"{self.base_url}/files/f/{record.file_id}/{quote(record.name, safe='')}"

    def lookup(self, file_id: str) -> StoredFile | None:
        """A complete, unexpired file, or None (the URL answers 404)."""
        self.sweep()
        with self._lock:
            record = self._files.get(file_id)
        if record is None or not record.complete or record.expired:
            return None
        return record

    def file_id_in(self, url: str) -> str | None:
        """The file id when `url` is a file URL of this service, else None (somebody else's URL)."""
        parts = urlsplit(url)
        ours = urlsplit(self.base_url)
        segments = parts.path.split("/")
        if (parts.scheme != "http" or (parts.hostname or "") not in LOOPBACK_NAMES | {ours.hostname}
                or parts.port != ours.port or len(segments) < 5 or segments[1:3] != ["files", "f"]):
            return None
        return segments[3]

    def file_hash(self, record: StoredFile) -> str:
        if not record.sha256:
            digest = hashlib.sha256()
            with open(record.path, "rb") as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
            record.sha256 = digest.hexdigest()
        return record.sha256

    def expire_all(self) -> None:
        with self._lock:
            for record in self._files.values():
                record.expired = True

    # -- retention --------------------------------------------------------------------------------

    def link_request(self, inputs: list[StoredFile], results: list[StoredFile]) -> None:
        """Remember which files a finished request read and made, so they go once its results are fetched."""
        files = RequestFiles([r.file_id for r in inputs], [r.file_id for r in results])
        with self._lock:
            for file_id in files.results:
                self._requests[file_id] = files

    def fetched(self, file_id: str) -> None:
        """A result file was downloaded in full; when all of its request's are, schedule their deletion."""
        now = time.monotonic()
        with self._lock:
            files = self._requests.get(file_id)
            if files is None:
                return
            files.fetched.add(file_id)
            if files.fetched != set(files.results):
                return
            for known in files.inputs:
                if (record := self._files.get(known)) is not None:
                    record.delete_at = now
            for known in files.results:
                self._requests.pop(known, None)
                if (record := self._files.get(known)) is not None:
                    record.delete_at = now + self.fetched_grace
        self.sweep()

    def sweep(self) -> None:
        """Delete files whose time has come, then the oldest while the store holds more than `max_bytes`."""
        now = time.monotonic()
        with self._lock:
            records = sorted(self._files.values(), key=lambda r: r.created)
            doomed = [r for r in records if (r.delete_at is not None and r.delete_at <= now)
                      or r.created + self.file_ttl <= now]
            left = [r for r in records if r not in doomed and r.complete]
            total = sum(r.size for r in left)
            while len(left) > 1 and total > self.max_bytes:  # the newest file always stays
                oldest = left.pop(0)
                total -= oldest.size
                doomed.append(oldest)
            for record in doomed:
                self._files.pop(record.file_id, None)
                self._requests.pop(record.file_id, None)
                record.expired = True
            stale = [u for u in self._uploads.values() if u.file.created + self.file_ttl <= now]
            for upload in stale:
                self._uploads.pop(upload.upload_id, None)
            for file_id in [f for f, (r, _sig) in self._signed.items() if r.created + self.file_ttl <= now]:
                del self._signed[file_id]
        for record in doomed:
            record.path.unlink(missing_ok=True)
        for upload in stale:
            shutil.rmtree(upload.parts_dir, ignore_errors=True)

    def stored_bytes(self) -> int:
        with self._lock:
            return sum(r.size for r in self._files.values() if r.complete)

    def _new_record(self, name: str, content_type: str) -> StoredFile:
        file_id = uuid.uuid4().hex
        safe_name = unquote(name).replace("/", "_").replace("\\", "_").strip() or "file"
        return StoredFile(file_id, safe_name, content_type or "application/octet-stream",
                          self._files_dir / file_id)

    def _publish(self, record: StoredFile) -> StoredFile:
        record.complete = True
        record.created = time.monotonic()
        with self._lock:
            self._files[record.file_id] = record
        self.sweep()
        return record

    def _upload(self, file_id: str, upload_id: str) -> MultipartUpload:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None or upload.file.file_id != file_id or upload.file.expired:
            raise StorageError(404, "No such multipart upload (it may be complete or expired)")
        return upload


def _checked_parts(parts: object, upload: MultipartUpload) -> list[int]:
    if not isinstance(parts, list) or not parts:
        raise StorageError(400, "parts must be a non-empty list of {partNumber, etag}")
    numbers: list[int] = []
    for item in parts:
        if not isinstance(item, dict) or not isinstance(item.get("partNumber"), int):
            raise StorageError(400, "each part needs an integer partNumber and its etag")
        number = item["partNumber"]
        known = upload.etags.get(number)
        if known is None:
            raise StorageError(400, f"part {number} was never uploaded")
        if str(item.get("etag", "")).strip('"') != known.strip('"'):
            raise StorageError(400, f"etag of part {number} does not match the uploaded part")
        numbers.append(number)
    if len(set(numbers)) != len(numbers):
        raise StorageError(400, "a part is listed twice")
    return sorted(numbers)


def _write_atomically(body: Iterable[bytes], final: Path) -> int:
    """Stream `body` to a temp file beside `final`, then rename; returns its size."""
    temp = _temp_beside(final)
    size = 0
    try:
        with open(temp, "xb") as out:
            for chunk in body:
                out.write(chunk)
                size += len(chunk)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return size


def _join_atomically(paths: list[Path], final: Path) -> int:
    """The parts one after another in a temp file beside `final`, then renamed; returns its size."""
    temp = _temp_beside(final)
    try:
        with open(temp, "xb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    _copy_rest(part, out)
        size = temp.stat().st_size
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return size


def _copy_rest(source: BinaryIO, out: BinaryIO) -> None:
    """Append what is left of `source` to `out`: in the kernel where it can (no trip through Python)."""
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while copy_range(source.fileno(), out.fileno(), 1 << 30):
                pass
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # a file system that cannot: copy in Python from the positions reached (both advanced alike)
    shutil.copyfileobj(source, out, 1 << 20)


def _temp_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")

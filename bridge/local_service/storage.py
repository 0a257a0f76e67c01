"""The local service's file store: fal's CDN token, single and multipart uploads, public file URLs.

Files live under `<data dir>/files/<id>`; their URL is `{base}/files/f/{id}/{quoted name}`. Bodies are
streamed to disk in chunks (uploads can be hundreds of MB) and appear under their final name only when
complete (temp name, then `os.replace`).
"""

from __future__ import annotations

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
from urllib.parse import quote, unquote, urlsplit

TOKEN_LIFETIME = 3600.0
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


@dataclass
class MultipartUpload:
    upload_id: str
    file: StoredFile
    parts_dir: Path
    etags: dict[int, str] = field(default_factory=dict)


class FileStore:
    """Thread-safe; `base_url` is set once the server knows its port."""

    def __init__(self, root: Path) -> None:
        self.base_url = ""
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
        record.size, record.sha256 = _write_atomically(body, record.path)
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
        md5 = hashlib.md5(usedforsecurity=False)
        part_path = upload.parts_dir / f"{number:05d}.part"
        _write_atomically(_tee(body, md5), part_path)
        etag = f'"{md5.hexdigest()}"'
        with self._lock:
            upload.etags[number] = etag
        return etag

    def complete_multipart(self, file_id: str, upload_id: str, parts: object) -> StoredFile:
        upload = self._upload(file_id, upload_id)
        numbers = _checked_parts(parts, upload)
        paths = [upload.parts_dir / f"{number:05d}.part" for number in numbers]
        record = upload.file
        record.size, record.sha256 = _write_atomically(_concat(paths), record.path)
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

    def _new_record(self, name: str, content_type: str) -> StoredFile:
        file_id = uuid.uuid4().hex
        safe_name = unquote(name).replace("/", "_").replace("\\", "_").strip() or "file"
        return StoredFile(file_id, safe_name, content_type or "application/octet-stream",
                          self._files_dir / file_id)

    def _publish(self, record: StoredFile) -> StoredFile:
        record.complete = True
        with self._lock:
            self._files[record.file_id] = record
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


def _write_atomically(body: Iterable[bytes], final: Path) -> tuple[int, str]:
    """Stream `body` to a temp file beside `final`, then rename; returns (size, sha256)."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(temp, "xb") as out:
            for chunk in body:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return size, digest.hexdigest()


def _tee(body: Iterable[bytes], digest: hashlib._Hash) -> Iterable[bytes]:
    for chunk in body:
        digest.update(chunk)
        yield chunk


def _concat(paths: list[Path]) -> Iterable[bytes]:
    for path in paths:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                yield chunk

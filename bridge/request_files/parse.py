"""A request file's JSON → a `SeparationRequest`: fields checked, paths resolved beside the request file,
the internal fields a request file may not set dropped, and (for a requests folder others can write)
the door policy attached for the engine to check at use."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import pydantic
from pydantic_core import ErrorDetails

from bridge.common.path_policy import PathPolicy
from bridge.common.plain import plain_problem
from bridge.common.request import INTERNAL_REQUEST_FIELDS, Origin, SeparationRequest
from bridge.common.small_files import MIB, SideFileError, TooLarge, read_small_file

# A request or status file is a few KiB: anything larger (or a FIFO, a device) is refused unread, so a
# planted one neither fills memory nor stops the folder's only reader thread.
REQUEST_LIMIT = MIB

# request fields that name files or folders: `~` and relative paths are resolved beside the request file
PATH_FIELDS = ("source", "project_dir", "output_dir")


class RequestVersion(NamedTuple):
    """One version of a request file. Its mtime alone is not enough: on a folder with coarse times (FAT,
    some NAS: 2 s) a file saved again within the same slot keeps it, so its content (its hash; a request
    is read whole anyway) tells the versions apart. `size` is what the folder's claim markers know."""

    mtime_ns: int
    size: int
    sha256: str  # "" when the file cannot be read as a request (a FIFO, too large): its mtime and size say

    def answers(self, status: dict[str, Any]) -> bool:
        """Whether a status file's `request_mtime_ns`/`request_sha256` name this version (a status written
        before the hash was kept names its version by mtime alone)."""
        return (status.get("request_mtime_ns") == self.mtime_ns
                and status.get("request_sha256", self.sha256) == self.sha256)

    def key(self) -> str:
        return f"{self.mtime_ns}:{self.size}:{self.sha256}"


def read_version(path: Path, attempts: int = 3) -> tuple[RequestVersion, bytes | None] | None:
    """The request file's version and its bytes (None when it is not a file to read as a request); None
    when it is gone. Stat, read, stat again: the bytes belong to the version only if the file did not
    change (replaced, rewritten) meanwhile; while it keeps changing, None (its next event looks again)."""
    for _ in range(attempts):
        try:
            before = os.stat(path)
            try:
                data: bytes | None = read_small_file(path, REQUEST_LIMIT)
            except SideFileError:
                data = None
            after = os.stat(path)
        except FileNotFoundError:
            return None
        if (before.st_ino, before.st_mtime_ns, before.st_size) != (after.st_ino, after.st_mtime_ns, after.st_size):
            continue
        if data is None:
            return RequestVersion(after.st_mtime_ns, after.st_size, ""), None
        return RequestVersion(after.st_mtime_ns, len(data), hashlib.sha256(data).hexdigest()), data
    return None


def parse_request_file(path: Path, version: RequestVersion, confined_to: PathPolicy | None = None,
                       data: bytes | None = None) -> SeparationRequest:
    """A request file → SeparationRequest; BridgeError with the field and what is allowed. `confined_to`:
    the allowed folders when the requests folder is not private (the engine checks them at use); `data`:
    the bytes `version` was read from (else the file is read now)."""
    from bridge.common.errors import InputError

    try:
        data_read = decode_json(read_small_file(path, REQUEST_LIMIT) if data is None else data)
    except FieldTwice as exc:
        raise InputError(f"{path.name}: {exc.field} is written twice; keep one.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                         hint="Write the file whole, then rename it into place.") from None
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text.",
                         hint="Save the request as UTF-8 (with or without a byte order mark).") from None
    except TooLarge as exc:
        raise InputError(f"{path.name} is too large: {exc.reason}.",
                         hint="A request names its audio by path; it never holds the audio itself.") from None
    except SideFileError as exc:
        raise InputError(f"{path.name} cannot be used as a request: {exc.reason}.",
                         hint="Write the request as an ordinary file, then rename it into place.") from None
    except OSError as exc:  # gone since it was seen
        raise InputError(f"{path.name} cannot be read: {exc.strerror or exc}.",
                         hint="Write the file whole, then rename it into place.") from None
    return _request_from(path, version, data_read, confined_to)


class FieldTwice(ValueError):
    """A JSON object names a key twice: JSON itself keeps the last one silently, so which was meant is unknown."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _refuse_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise FieldTwice(key)
        found[key] = value
    return found


def decode_json(data: bytes) -> Any:
    """A request's or status file's bytes → JSON. utf-8-sig: Windows PowerShell 5.1's `Out-File` and
    `Set-Content -Encoding UTF8` start the file with a byte order mark. Raises FieldTwice, or the
    JSONDecodeError/UnicodeDecodeError (both ValueError) that says where it stops being JSON."""
    return json.loads(data.decode("utf-8-sig"), object_pairs_hook=_refuse_twice)


def _request_from(path: Path, version: RequestVersion, data: Any,
                  confined_to: PathPolicy | None) -> SeparationRequest:
    from bridge.common.errors import InputError

    if not isinstance(data, dict):
        raise InputError(f"{path.name} must hold a JSON object with at least source and preset or prompt.")
    for field in PATH_FIELDS:
        value = data.get(field)
        if isinstance(value, str) and value:
            data[field] = str(_resolve_beside(path, value))
    for internal in INTERNAL_REQUEST_FIELDS:
        data.pop(internal, None)
    try:
        return SeparationRequest(**data, origin=Origin.request_file, confined_to=confined_to,
                                 idempotency_key=f"request-file:{path.resolve()}:{version.key()}")
    except pydantic.ValidationError as exc:
        raise InputError(f"{path.name}: " + "; ".join(_problem(error) for error in exc.errors())) from None


def _problem(error: ErrorDetails) -> str:
    """One validation error as `field: what is wrong`, in the request file's words."""
    field = ".".join(str(p) for p in error["loc"]) or "request"
    if error["type"] == "extra_forbidden":
        allowed = [name for name in SeparationRequest.model_fields if name not in INTERNAL_REQUEST_FIELDS]
        return f"{field}: unknown field; allowed: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{field}: required"
    return f"{field}: {plain_problem(error)}"


def _resolve_beside(request_file: Path, value: str) -> Path:
    """`~` is the user's home; a relative path is relative to the request file's folder, not to wherever
    the daemon happened to start (a DAW script knows its request's folder, never the daemon's)."""
    expanded = Path(value).expanduser()
    if expanded.is_absolute():
        return expanded
    # normpath: `../Stems` reads as the user wrote it, in status files and manifests alike
    return Path(os.path.normpath(request_file.absolute().parent / expanded))


def raw_tag(path: Path) -> str:
    """The request's tag, read without judging the rest of it."""
    data = read_json(path)
    tag = data.get("tag") if isinstance(data, dict) else None
    return tag if isinstance(tag, str) else ""


def read_json(path: Path) -> Any:
    """The file's JSON; None when it is missing, not JSON, or not a file to read (a FIFO, huge)."""
    try:
        return decode_json(read_small_file(path, REQUEST_LIMIT))
    except (OSError, ValueError):
        return None

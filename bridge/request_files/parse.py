"""A request file's JSON → a `SeparationRequest`: fields checked, paths resolved beside the request file,
the internal fields a request file may not set dropped, and (for a requests folder others can write)
the door policy attached for the engine to check at use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydantic

from bridge.common.path_policy import PathPolicy
from bridge.common.request import INTERNAL_REQUEST_FIELDS, Origin, SeparationRequest
from bridge.common.small_files import MIB, SideFileError, TooLarge, read_small_text

# A request or status file is a few KiB: anything larger (or a FIFO, a device) is refused unread, so a
# planted one neither fills memory nor stops the folder's only reader thread.
REQUEST_LIMIT = MIB

# request fields that name files or folders: `~` and relative paths are resolved beside the request file
PATH_FIELDS = ("source", "project_dir", "output_dir")


def parse_request_file(path: Path, mtime_ns: int, confined_to: PathPolicy | None = None) -> SeparationRequest:
    """A request file → SeparationRequest; BridgeError with the field and what is allowed. `confined_to`:
    the allowed folders when the requests folder is not private (the engine checks them at use)."""
    from bridge.common.errors import InputError

    try:
        data = json.loads(read_small_text(path, REQUEST_LIMIT))
    except TooLarge as exc:
        raise InputError(f"{path.name} is too large: {exc.reason}.",
                         hint="A request names its audio by path; it never holds the audio itself.") from None
    except SideFileError as exc:
        raise InputError(f"{path.name} cannot be used as a request: {exc.reason}.",
                         hint="Write the request as an ordinary file, then rename it into place.") from None
    except (OSError, ValueError):  # gone since it was seen, not UTF-8, not JSON
        raise InputError(f"{path.name} is not valid JSON.",
                         hint="Write the file whole, then rename it into place.") from None
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
                                 idempotency_key=f"request-file:{path.resolve()}:{mtime_ns}")
    except pydantic.ValidationError as exc:
        raise InputError(f"{path.name}: " + "; ".join(_problem(error) for error in exc.errors())) from None


def _problem(error: Any) -> str:
    """One validation error as `field: what is wrong`, in the request file's words."""
    field = ".".join(str(p) for p in error["loc"]) or "request"
    if error["type"] == "extra_forbidden":
        allowed = [name for name in SeparationRequest.model_fields if name not in INTERNAL_REQUEST_FIELDS]
        return f"{field}: unknown field; allowed: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{field}: required"
    return f"{field}: {str(error['msg']).removeprefix('Value error, ')}"


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
        return json.loads(read_small_text(path, REQUEST_LIMIT))
    except (OSError, ValueError):
        return None

"""Secrets (the fal key) and text from outside, made safe for every place a user or log reads.

A service answer may echo the key (a 401/422 detail quoting the Authorization header). Error messages
are built from such text, so `BridgeError` masks it where it is made; every sink (OSC replies, status
files, `.error.txt`, the journal, CLI output, logs) masks again as a last guard. The key counts whole, and
each half of an `id:secret` pair. Control characters from outside are escaped, so a newline in a path
cannot forge a log line, and a file name cannot drive the terminal that prints it (ESC [ …, an OSC 52
clipboard write, the 8-bit CSI \x9b).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
from typing import TextIO

REDACTED = "<redacted>"
KEY_ENV_VARS = ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")
_MIN_PART = 8  # a shorter half of id:secret is too common a string to mask (and too weak to matter)

_lock = threading.Lock()
_registered: set[str] = set()
# C0 (tab and newline kept where asked), DEL, C1 (its CSI \x9b and OSC \x9d work like ESC [ and ESC ])
# and the Unicode line separators
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_AND_NEWLINES = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LEFT_BY_JSON = re.compile(r"[\x7f-\x9f\u2028\u2029]")  # json.dumps escapes C0 itself


def secret_parts(secret: str) -> set[str]:
    """The strings that must never be shown: the secret, and each long enough half of `id:secret`."""
    secret = secret.strip()
    if not secret:
        return set()
    return {secret, *(p for p in secret.split(":") if len(p) >= _MIN_PART)}


def register_secret(secret: str) -> None:
    """From now on `redact` masks `secret` (and its halves) in this process."""
    with _lock:
        _registered.update(secret_parts(secret))


def _secrets() -> list[str]:
    found = set(_registered)
    for name in KEY_ENV_VARS:  # a key in the environment counts even before a client is made
        value = os.environ.get(name, "")
        if value.strip():
            found |= secret_parts(value)
    if "FAL_KEY_ID" in os.environ and "FAL_KEY_SECRET" in os.environ:
        found |= secret_parts(f"{os.environ['FAL_KEY_ID']}:{os.environ['FAL_KEY_SECRET']}")
    return sorted(found, key=len, reverse=True)  # the whole key first, then its halves


def redact(text: str) -> str:
    """`text` with every known secret masked."""
    if not text:
        return text
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_any(value: object) -> object:
    """`redact` through JSON-like data (dicts, lists, strings); other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_any(v) for v in value]
    return value


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """Control characters shown as escapes (`\\n`, `\\x1b`): outside text stays on its own line."""
    pattern = _CONTROL if keep_newlines else _CONTROL_AND_NEWLINES
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def safe_text(text: str, *, keep_newlines: bool = False) -> str:
    """Both at once: what any sink writes."""
    return escape_control(redact(text), keep_newlines=keep_newlines)


def say(line: str = "", *, keep_newlines: bool = False) -> None:
    """Print one line of command output (status, team) to stdout: file names, prompts, tags, messages and
    errors come from outside, and a control sequence in them (ESC [ 2J, an OSC 52 clipboard write) must
    reach the terminal as visible text, never as a command."""
    print(safe_text(line, keep_newlines=keep_newlines))


def safe_json(data: object, indent: int | None = 2) -> str:
    """`json.dumps` (non-ASCII kept) for a terminal: the key masked, and the control characters JSON
    leaves raw written as `\\u` escapes, so the text still parses to the same data."""
    text = json.dumps(redact_any(data), indent=indent, ensure_ascii=False)
    return _LEFT_BY_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeLogFilter(logging.Filter):
    """On every handler: the key masked and control characters escaped in each log line, whoever logs
    it (a newline in an OSC path would otherwise forge a CRITICAL entry). Tracebacks keep their lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = safe_text(message)
        if safe != message:
            record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True

    @classmethod
    def install(cls, *handlers: logging.Handler) -> None:
        for handler in handlers or tuple(logging.getLogger().handlers):
            if not any(isinstance(f, cls) for f in handler.filters):
                handler.addFilter(cls())


class RedactingStream(io.TextIOBase):
    """stdout/stderr of the CLI: what is printed passes `redact` (a last guard for CLI output)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

"""Where the team database is (`database:` in the config, or SAM_BRIDGE_DATABASE), and how to name it in a
message or a log without its password."""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import ClassVar
from urllib.parse import unquote

ENV_VAR = "SAM_BRIDGE_DATABASE"


def database_url(configured: str | None) -> str | None:
    """The environment wins over the config file (a password need not be written to disk)."""
    return os.environ.get(ENV_VAR) or configured or None


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ***: URL form (user:pw@) and key=value form (password=pw)."""
    text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    text = re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", text)


def password_forms(dsn: str) -> set[str]:
    """Every way the DSN's password may be quoted back: as written and percent-decoded (libpq's own errors
    quote a token it cannot parse, `invalid percent-encoded token: "50%off-Secret"`)."""
    found = re.findall(r"://[^:/@]*:([^@]*)@", dsn) + re.findall(r"(?i)[?&]password=([^&]*)", dsn)
    for quoted in re.findall(r"(?i)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
        found += [quoted, re.sub(r"\\(.)", r"\1", quoted.strip("'"))]
    return {form for raw in found for form in (raw, unquote(raw)) if form}


def mask_password(text: str, dsn: str) -> str:
    """`text` (an error about `dsn`) with the DSN's password masked in every form."""
    for form in sorted(password_forms(dsn), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


class PoolLogMask(logging.Filter):
    """On psycopg.pool's logger: its warnings quote libpq's errors (a password among them) on every try to
    connect, and go to stderr and the daemon log whatever their handlers' filters."""

    _lock = threading.Lock()
    _dsns: ClassVar[set[str]] = set()  # every DSN a journal of this process was given

    def filter(self, record: logging.LogRecord) -> bool:
        message = original = record.getMessage()
        with self._lock:
            dsns = list(self._dsns)
        for dsn in dsns:
            message = mask_password(message, dsn)
        if message != original:
            record.msg, record.args = message, None
        return True

    @classmethod
    def guard(cls, dsn: str) -> None:
        """From now on psycopg.pool's log lines never show `dsn`'s password."""
        with cls._lock:
            cls._dsns.add(dsn)
        logger = logging.getLogger("psycopg.pool")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())

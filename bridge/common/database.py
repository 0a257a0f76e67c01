"""Where the team database is (`database:` in the config, or SAM_BRIDGE_DATABASE), and how to name it in a
message or a log without its password."""

from __future__ import annotations

import os
import re

ENV_VAR = "SAM_BRIDGE_DATABASE"


def database_url(configured: str | None) -> str | None:
    """The environment wins over the config file (a password need not be written to disk)."""
    return os.environ.get(ENV_VAR) or configured or None


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ***: URL form (user:pw@) and key=value form (password=pw)."""
    text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    text = re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", text)

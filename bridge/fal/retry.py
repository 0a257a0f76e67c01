"""Retry timing: exponential backoff with jitter, honouring a server's Retry-After."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in all, the first included
    base_delay: float = 0.25
    max_delay: float = 30.0
    jitter: tuple[float, float] = (0.5, 1.5)
    max_retry_after: float = 120.0  # never sleep longer than this on a server's say-so

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return float(backoff * random.uniform(*self.jitter))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds: either form RFC 9110 allows (delay-seconds or an HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


Sleeper = Callable[[float], None]
default_sleep: Sleeper = time.sleep

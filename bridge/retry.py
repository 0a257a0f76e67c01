"""Retry timing: exponential backoff with jitter, honouring a server's Retry-After."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


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


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for APIs and read as 'no hint')."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


Sleeper = Callable[[float], None]
default_sleep: Sleeper = time.sleep

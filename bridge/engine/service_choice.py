"""Choosing the service: fal (needs FAL_KEY), the built-in local stand-in, or a local service at a URL."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from bridge.common.loopback import is_loopback_url
from bridge.fal.auth import ApiKey, RedactingFilter, secret_from_env
from bridge.fal.client import DEFAULT_QUEUE_URL, DEFAULT_REST_URL, DEFAULT_START_TIMEOUT, FalClient, Timeouts
from bridge.fal.retry import RetryPolicy

log = logging.getLogger(__name__)

LOCAL_KEY = "local-stand-in-key"
LOCAL_NOTICE = "using the built-in local stand-in, not SAM Audio (its stems are a simple band split)"
STAND_IN = "stand-in"  # the built-in stand-in's name in manifests and dedupe keys: one on every port it gets


@dataclass(frozen=True)
class ServiceChoice:
    local: bool = False  # start the built-in local service in this process
    url: str | None = None  # a local service already running (e.g. `sam-bridge local-service`)
    local_delay: float = 0.02  # the in-process stand-in's seconds of work per second of audio
    retry: RetryPolicy | None = None
    start_timeout: float | None = DEFAULT_START_TIMEOUT  # X-Fal-Request-Timeout (None: no limit)
    priorities: Mapping[str, str] = field(default_factory=lambda: {"hot-folder": "low"})  # way in → priority

    @property
    def is_stand_in(self) -> bool:
        return self.local or self.url is not None

    @property
    def service_name(self) -> str | None:
        """What made the stems, for the manifest and the dedupe key; None: the client's app at its host."""
        return STAND_IN if self.local else None

    def describe(self) -> str:
        if self.local:
            return LOCAL_NOTICE
        if self.url:
            return f"using the service at {self.url} (a local stand-in, not SAM Audio)"
        return "using SAM Audio on fal (fal-ai/sam-audio/separate)"


@contextmanager
def open_client(choice: ServiceChoice) -> Iterator[FalClient]:
    """A ready FalClient; the key check happens here."""
    if choice.local:
        from bridge.local_service import LocalFalService

        with LocalFalService(processing_delay=choice.local_delay) as service, FalClient(
            ApiKey(LOCAL_KEY), queue_url=service.url, rest_url=service.url, retry=choice.retry,
            start_timeout=choice.start_timeout, priorities=choice.priorities,
        ) as client:
            yield client
        return
    if choice.url:
        # A stand-in you started gets FAL_KEY (to try keys against it) only on this machine: a real key
        # never travels to another host, least of all over plain http.
        secret = secret_from_env() if is_loopback_url(choice.url) else None
        key = ApiKey(secret or LOCAL_KEY)
        if secret:
            RedactingFilter.install(key)  # FAL_KEY may hold a real key: mask it in logs here too
        with FalClient(key, queue_url=choice.url, rest_url=choice.url, retry=choice.retry, timeouts=Timeouts(),
                       start_timeout=choice.start_timeout, priorities=choice.priorities) as client:
            yield client
        return
    with FalClient(ApiKey.from_env(), queue_url=DEFAULT_QUEUE_URL, rest_url=DEFAULT_REST_URL,
                   retry=choice.retry, start_timeout=choice.start_timeout, priorities=choice.priorities) as client:
        yield client

"""Which hosts are fal's: where the key may go, and where a connect failure moves to.

From the official Python client (`fal-client` 1.0.3, `client.py`): a connect failure on `fal.run` or
`queue.fal.run` is tried once more on its backup domain (`falrun.com`, `queue.falrun.com`), and the connect
timeout to those domains (primary and backup alike) is capped at 5 s, so an unreachable domain is left
quickly. fal names no backup for `rest.fal.ai` there. Hosts here are `host[:port]` (the port only when it
is not the scheme's default), so tests can map one loopback port to another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

FAL_BACKUP_HOSTS: Mapping[str, str] = {"fal.run": "falrun.com", "queue.fal.run": "queue.falrun.com"}
BACKUP_CONNECT_CAP = 5.0
# fal's own hosts: the key goes only to these (and to the configured service URL's host).
FAL_HOSTS = frozenset({"fal.run", "queue.fal.run", "rest.fal.ai", "falrun.com", "queue.falrun.com"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_of(url: str | httpx.URL) -> str:
    """`host[:port]` of a URL, lower case, the port only when it is not the scheme's default."""
    parts = httpx.URL(str(url)) if not isinstance(url, httpx.URL) else url
    host = parts.host.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"


class KeyHosts:
    """The hosts the Authorization header may be sent to."""

    def __init__(self, urls: Iterable[str], backups: Mapping[str, str]) -> None:
        hosts = {host_of(url) for url in urls if urlsplit(url).hostname}
        if hosts & FAL_HOSTS:  # talking to fal: all of fal's own hosts
            hosts |= FAL_HOSTS
        hosts |= {backups[h] for h in list(hosts) if h in backups}
        self.hosts = frozenset(hosts)

    def allows(self, url: str | httpx.URL) -> bool:
        return host_of(url) in self.hosts


class BackupHostTransport(httpx.BaseTransport):
    """Sends a request to its host; a connect failure on a host with a backup goes to the backup once.

    Nothing was sent when the connection could not be made, so this is safe even for a submit. The caller
    sees the primary's error when the backup fails too.
    """

    def __init__(self, backups: Mapping[str, str], inner: httpx.BaseTransport | None = None) -> None:
        self._backups = dict(backups)
        self._capped = set(self._backups) | set(self._backups.values())
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = host_of(request.url)
        if host in self._capped:
            _cap_connect(request)
        try:
            return self._inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            backup = self._backups.get(host)
            if backup is None:
                raise
            log.warning("could not connect to %s (%s); trying its backup host %s", host, type(exc).__name__,
                        backup)
            try:
                return self._inner.handle_request(_moved(request, backup))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                raise exc from None

    def close(self) -> None:
        self._inner.close()


def _cap_connect(request: httpx.Request) -> None:
    timeouts = dict(request.extensions.get("timeout", {}))
    connect = timeouts.get("connect")
    timeouts["connect"] = BACKUP_CONNECT_CAP if connect is None else min(connect, BACKUP_CONNECT_CAP)
    request.extensions["timeout"] = timeouts


def _moved(request: httpx.Request, host: str) -> httpx.Request:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or not port.isdigit():
        name, port = host, ""
    url = request.url.copy_with(host=name.strip("[]"), port=int(port) if port else None)
    headers = request.headers.copy()
    headers["Host"] = host
    return httpx.Request(request.method, url, headers=headers, stream=request.stream,
                         extensions=request.extensions)

"""`LocalFalService`: the built-in stand-in for fal on 127.0.0.1, and `serve()` for the sub-command.

One base URL answers the queue (`/fal-ai/sam-audio/...`), the CDN token and uploads (`/storage/...`,
`/files/...`) and the test controls (`GET /_local/stats`, `POST /_local/faults`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from bridge.common.errors import InputError
from bridge.common.loopback import is_loopback_host
from bridge.common.processes import SignalStop, owner_tag
from bridge.local_service.faults import Faults
from bridge.local_service.handler import Handler
from bridge.local_service.queue import JobQueue, QueueSettings
from bridge.local_service.storage import FETCHED_GRACE, FILE_TTL, MAX_STORE_BYTES, FileStore

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    """Tracks its connection threads so `stop()` can end and join every one of them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[Handler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="local-fal-connection", daemon=True)
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.debug("local fal: connection from %s failed", client_address, exc_info=True)
        finally:
            self.shutdown_request(request)
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)

    def close_connections(self) -> None:
        with self._connections_lock:
            open_now = list(self._connections.items())
        for _thread, connection in open_now:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread, _connection in open_now:
            thread.join(timeout=10)


class LocalFalService:
    """fal's queue and storage protocol on this computer, with a deterministic "separation"."""

    def __init__(
        self,
        key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        processing_delay: float = 0.0,
        job_time: float = 0.0,
        concurrency: int = 2,
        data_dir: Path | None = None,
        *,
        sse_ping_interval: float = 15.0,
        allow_remote: bool = False,
        strict: bool = True,
        store_limits: dict[str, float] | None = None,
    ) -> None:
        """`strict`: enforce what fal's servers do (see `Handler`); `store_limits`: FileStore's `file_ttl`,
        `fetched_grace`, `max_bytes` (how long and how much it keeps)."""
        if not allow_remote and not is_loopback_host(host):
            raise InputError(f"The local service only listens on this computer (127.0.0.1), not on {host}.",
                             hint="Leave out --host, or give --host explicitly to accept the risk.")
        if concurrency < 1 or processing_delay < 0 or job_time < 0 or sse_ping_interval <= 0:
            raise InputError("concurrency must be 1 or more, and delays must not be negative.")
        self.key = key
        self.strict = strict
        self._store_limits = dict(store_limits or {})
        self.host = host
        self.port = port
        self.sse_ping_interval = sse_ping_interval
        self.faults = Faults(self._expire_files)
        self.stopping = threading.Event()
        self._settings = QueueSettings(processing_delay, job_time, concurrency)
        self._data_dir = data_dir
        self._owned_dir: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._store: FileStore | None = None
        self._queue: JobQueue | None = None
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        # wall-clock times the last uploads' bodies (a POST, a part, a signed PUT) began to arrive
        self._upload_starts: deque[float] = deque(maxlen=256)

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the local service is already running")
        if self._data_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix=f"sam-bridge-local-fal{owner_tag()}-"))
        root = self._data_dir or self._owned_dir
        assert root is not None
        limits = self._store_limits
        self._store = FileStore(root, file_ttl=limits.get("file_ttl", FILE_TTL),
                                fetched_grace=limits.get("fetched_grace", FETCHED_GRACE),
                                max_bytes=int(limits.get("max_bytes", MAX_STORE_BYTES)))
        handler = type("BoundHandler", (Handler,), {"service": self})
        try:
            self._server = _Server((self.host, self.port), handler)
        except OSError as exc:
            self._remove_owned_dir()
            raise InputError(f"The local service could not listen on {self.host}:{self.port} "
                             f"({exc.strerror}).",
                             hint="Another program may use that port: pick another with --port.") from None
        self.port = int(self._server.server_address[1])
        self._store.base_url = self.url
        self._queue = JobQueue(self._store, self.faults, self._settings)
        self._queue.start()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-fal-server", daemon=True)
        self._thread.start()
        log.info("local fal service listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving, end running jobs and open connections, join every thread, remove temp files."""
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        if self._queue is not None:
            self._queue.stop()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
        self._remove_owned_dir()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def store(self) -> FileStore:
        if self._store is None:
            raise RuntimeError("the local service is not started")
        return self._store

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            raise RuntimeError("the local service is not started")
        return self._queue

    def count_call(self, kind: str) -> None:
        with self._calls_lock:
            self._calls[kind] += 1

    def upload_body_started(self, at: float) -> None:
        with self._calls_lock:
            self._upload_starts.append(at)

    @contextlib.contextmanager
    def in_flight(self, kind: str) -> Iterator[None]:
        """Counts calls of `kind` being answered at once (the most at once is in stats: `max_in_flight`)."""
        with self._calls_lock:
            self._in_flight[kind] += 1
            self._max_in_flight[kind] = max(self._max_in_flight[kind], self._in_flight[kind])
        try:
            yield
        finally:
            with self._calls_lock:
                self._in_flight[kind] -= 1

    def stats(self) -> dict[str, Any]:
        counters = self._queue.counters() if self._queue is not None else {
            "submits": 0, "submits_by_audio": {}, "running": 0, "max_running": 0, "queued": 0,
            "cancels": 0, "completed": 0, "failed": 0, "started": 0, "start_timeouts": 0}
        with self._calls_lock:
            counters["calls"] = dict(self._calls)
            counters["max_in_flight"] = dict(self._max_in_flight)
            counters["upload_body_started"] = list(self._upload_starts)
        counters["stored_bytes"] = self._store.stored_bytes() if self._store is not None else 0
        return counters

    def __enter__(self) -> LocalFalService:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _expire_files(self) -> None:
        if self._store is not None:
            self._store.expire_all()

    def _remove_owned_dir(self) -> None:
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None


def serve(host: str = "127.0.0.1", port: int = 8765, key: str | None = None, processing_delay: float = 0.0,
          job_time: float = 0.0, concurrency: int = 2, *, allow_remote: bool = False,
          out: TextIO | None = None) -> None:
    """Run the local service until SIGINT or SIGTERM (or Ctrl-C)."""
    out = out or sys.stdout
    stop = SignalStop()  # set from a signal handler: no lock (see SignalStop)
    previous: dict[signal.Signals, Any] = {}
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, stop.set)
    try:
        with LocalFalService(key, host, port, processing_delay, job_time, concurrency,
                             allow_remote=allow_remote) as service:
            print(f"local fal service on {service.url}", file=out, flush=True)
            print(f"point sam-bridge at it with --service-url {service.url}", file=out, flush=True)
            while not stop.wait(0.5):
                pass
            print("local fal service stopping", file=out, flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

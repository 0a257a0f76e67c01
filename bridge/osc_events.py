"""OSC job events: sent to the client that submitted the job and to every subscriber, from one thread
of their own, so an engine thread only ever puts an event on a queue."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bridge.jobs import JobEvent
from bridge.osc_wire import encode_reply, event_messages

logger = logging.getLogger(__name__)

Address = tuple[str, int]

MAX_SUBSCRIBERS = 32
_MAX_OWNED_JOBS = 10_000
_EVENT_QUEUE_SIZE = 10_000


class EventForwarder:
    """Sends job events to the client that submitted the job and to every subscriber, from its own thread."""

    def __init__(self, prefix: str, send: Callable[[Address, bytes], None]) -> None:
        self._prefix = prefix
        self._send = send
        self._queue: queue.Queue[JobEvent | None] = queue.Queue(_EVENT_QUEUE_SIZE)
        # Held by the server across submit → "remember the owner" → /accepted, so that a job's first
        # events can neither overtake its /accepted nor miss its owner.
        self.lock = threading.RLock()
        self._owners: dict[str, set[Address]] = {}
        self._subscribers: set[Address] = set()
        self._thread = threading.Thread(target=self._run, name="osc-events", daemon=True)
        self._dropped = 0

    def listener(self, event: JobEvent) -> None:
        """The sink's listener: called on engine threads, so it only queues."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                logger.warning("OSC: event queue full, %d job events not forwarded", self._dropped)

    def add_owner(self, job_id: str, client: Address) -> None:
        with self.lock:
            if len(self._owners) >= _MAX_OWNED_JOBS:
                self._owners.pop(next(iter(self._owners)))
            self._owners.setdefault(job_id, set()).add(client)

    def subscribe(self, client: Address) -> bool:
        with self.lock:
            if client not in self._subscribers and len(self._subscribers) >= MAX_SUBSCRIBERS:
                return False
            self._subscribers.add(client)
            return True

    def unsubscribe(self, client: Address) -> None:
        with self.lock:
            self._subscribers.discard(client)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self._deliver(event)
            except Exception:
                logger.exception("OSC: could not forward an event of job %s", event.job_id)

    def _deliver(self, event: JobEvent) -> None:
        with self.lock:
            owners = self._owners.pop(event.job_id, set()) if event.state.finished \
                else set(self._owners.get(event.job_id, ()))
            destinations = owners | self._subscribers
        if not destinations:
            return
        datagrams = [encode_reply(self._prefix, name, args) for name, args in event_messages(event)]
        for destination in sorted(destinations):
            for data in datagrams:
                self._send(destination, data)

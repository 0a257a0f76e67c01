"""OSC job events: sent to the client that submitted the job and to every subscriber, from one thread
of their own, so an engine thread only ever puts an event on a queue.

The end of an OSC job whose submitter is unknown is kept a while and sent to each client that subscribes
afterwards and has not had it yet: after a daemon restart the jobs resume, but neither the submitters nor
the subscriptions survive it, so a job that ends before its device has subscribed again (even if another
client already has) would otherwise never reach Live.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bridge.common.jobs import JobEvent
from bridge.common.request import Origin
from bridge.osc.wire import encode_reply, event_messages

logger = logging.getLogger(__name__)

Address = tuple[str, int]

MAX_SUBSCRIBERS = 32
_MAX_OWNED_JOBS = 10_000
_EVENT_QUEUE_SIZE = 10_000
UNHEARD_KEPT = 64  # ends of OSC jobs without a known submitter, kept for later subscribers...
UNHEARD_SECONDS = 3600.0  # ...for this long


@dataclass
class _Kept:
    """A kept job end, and the clients it has already been sent to."""

    since: float
    event: JobEvent
    sent_to: set[Address]


@dataclass(frozen=True)
class _Replay:
    """Send the kept job ends this new subscriber has not had (queued: after every earlier event)."""

    client: Address


@dataclass(frozen=True)
class _Flush:
    """Set `done` once every event queued before it has been sent."""

    done: threading.Event


class EventForwarder:
    """Sends job events to the client that submitted the job and to every subscriber, from its own thread."""

    def __init__(self, prefix: str, send: Callable[[Address, bytes], None]) -> None:
        self._prefix = prefix
        self._send = send
        self._queue: queue.Queue[JobEvent | _Replay | _Flush | None] = queue.Queue(_EVENT_QUEUE_SIZE)
        # Held by the server across submit → "remember the owner" → /accepted, so that a job's first
        # events can neither overtake its /accepted nor miss its owner.
        self.lock = threading.RLock()
        self._owners: dict[str, set[Address]] = {}
        self._subscribers: set[Address] = set()
        self._unheard: deque[_Kept] = deque(maxlen=UNHEARD_KEPT)  # forwarder thread only
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
            if client in self._subscribers:
                return True
            if len(self._subscribers) >= MAX_SUBSCRIBERS:
                return False
            self._subscribers.add(client)
        try:
            self._queue.put_nowait(_Replay(client))
        except queue.Full:  # the events in the queue matter more than a replay
            logger.warning("OSC: event queue full, no replay of unheard job ends for %s:%d", *client)
        return True

    def unsubscribe(self, client: Address) -> None:
        with self.lock:
            self._subscribers.discard(client)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued so far has been sent; False if that took over `timeout` s."""
        marker = _Flush(threading.Event())
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, _Flush):
                    item.done.set()
                elif isinstance(item, _Replay):
                    self._replay(item.client)
                else:
                    self._deliver(item)
            except Exception:
                logger.exception("OSC: could not forward %s", item)

    def _deliver(self, event: JobEvent) -> None:
        with self.lock:
            owners = self._owners.pop(event.job_id, set()) if event.state.finished \
                else set(self._owners.get(event.job_id, ()))
            destinations = owners | self._subscribers
        if event.state.finished and event.origin == Origin.osc and not owners:
            self._unheard.append(_Kept(time.monotonic(), event, set(destinations)))
        if not destinations:
            return
        datagrams = self._datagrams(event)
        for destination in sorted(destinations):
            for data in datagrams:
                self._send(destination, data)

    def _replay(self, client: Address) -> None:
        kept_since = time.monotonic() - UNHEARD_SECONDS
        while self._unheard and self._unheard[0].since < kept_since:
            self._unheard.popleft()
        missed = [kept for kept in self._unheard if client not in kept.sent_to]
        if missed:
            logger.info("OSC: sending %d job end(s) of unknown submitters to new subscriber %s:%d",
                        len(missed), *client)
        for kept in missed:
            kept.sent_to.add(client)
            for data in self._datagrams(kept.event):
                self._send(client, data)

    def _datagrams(self, event: JobEvent) -> list[bytes]:
        return [encode_reply(self._prefix, name, args) for name, args in event_messages(event)]

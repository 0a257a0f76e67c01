"""The OSC event forwarder: who gets a job's events, and the ends of OSC jobs whose submitter is unknown
(resumed after a daemon restart) kept for the clients that subscribe later. Datagrams go out through a
real UDP socket to real listening sockets on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pythonosc.osc_message import OscMessage

from bridge.common.jobs import JobEvent, JobState
from bridge.common.request import Origin
from bridge.osc import events as osc_events
from bridge.osc.events import UNHEARD_KEPT, EventForwarder

WAIT = 5.0


class Listener:
    """A client's UDP port: what the forwarder sent it, as (address, args)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.address: tuple[str, int] = self.sock.getsockname()

    def receive(self) -> tuple[str, list[object]]:
        message = OscMessage(self.sock.recvfrom(65535)[0])
        return message.address, list(message.params)

    def receive_until_silent(self, quiet: float = 0.3) -> list[tuple[str, list[object]]]:
        got = []
        self.sock.settimeout(quiet)
        try:
            while True:
                got.append(self.receive())
        except TimeoutError:
            return got
        finally:
            self.sock.settimeout(WAIT)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


@pytest.fixture
def forwarder(sender: socket.socket) -> Iterator[EventForwarder]:
    forwarder = EventForwarder("/sam", lambda address, data: sender.sendto(data, address) and None)
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.sock.close()


def listener(listeners: list[Listener]) -> Listener:
    listeners.append(Listener())
    return listeners[-1]


def ended_unheard(forwarder: EventForwarder, *events: JobEvent) -> None:
    """Hand the events to the forwarder and wait until it has dealt with them (before anyone subscribes)."""
    for event in events:
        forwarder.listener(event)
    assert forwarder.flush()


def ended(job_id: str, origin: str = Origin.osc.value, state: JobState = JobState.done) -> JobEvent:
    stems = {"target": f"/stems/{job_id}.target.wav", "residual": f"/stems/{job_id}.residual.wav"}
    return JobEvent(job_id, f"tag-{job_id}", state, 1.0, "Done", stems=stems if state is JobState.done else {},
                    manifest=f"/stems/{job_id}.sam.json", error=None if state is JobState.done else "It failed.",
                    origin=origin)


def ends_in(messages: list[tuple[str, list[object]]]) -> list[object]:
    """The job ids of the /sam/done and /sam/error messages, in order."""
    return [args[0] for address, args in messages if address in ("/sam/done", "/sam/error")]


def test_an_osc_jobs_end_that_reached_nobody_goes_to_the_next_subscriber(
        forwarder: EventForwarder, listeners: list[Listener]) -> None:
    # finished while nobody listened (the daemon had just restarted)
    ended_unheard(forwarder, ended("j-1"), ended("j-2", state=JobState.failed))
    device = listener(listeners)
    assert forwarder.subscribe(device.address)
    messages = device.receive_until_silent()
    assert messages == [
        ("/sam/progress", ["j-1", "done", 1.0, "Done", -1.0]),
        ("/sam/stem", ["j-1", "target", "/stems/j-1.target.wav"]),
        ("/sam/stem", ["j-1", "residual", "/stems/j-1.residual.wav"]),
        ("/sam/done", ["j-1", "/stems/j-1.target.wav", "/stems/j-1.residual.wav", "/stems/j-1.sam.json"]),
        ("/sam/progress", ["j-2", "failed", 1.0, "Done", -1.0]),
        ("/sam/error", ["j-2", "It failed."]),
    ]


def test_each_subscriber_gets_a_kept_end_once(forwarder: EventForwarder, listeners: list[Listener]) -> None:
    ended_unheard(forwarder, ended("j-1"))
    first, second = listener(listeners), listener(listeners)
    assert forwarder.subscribe(first.address)
    assert ends_in(first.receive_until_silent()) == ["j-1"]
    assert forwarder.subscribe(first.address)  # the device's keep-alive: already subscribed, no replay
    assert first.receive_until_silent() == []
    assert forwarder.subscribe(second.address)  # another device (another track) may have been waiting too
    assert ends_in(second.receive_until_silent()) == ["j-1"]
    forwarder.unsubscribe(first.address)
    assert forwarder.subscribe(first.address)  # new again (its port changed back and forth): had it already
    assert first.receive_until_silent() == []


def test_an_end_another_subscriber_heard_first_still_reaches_its_device(
        forwarder: EventForwarder, listeners: list[Listener]) -> None:
    """After a restart a monitor (or another device) may subscribe before the job's own device does."""
    monitor, device = listener(listeners), listener(listeners)
    forwarder.subscribe(monitor.address)
    ended_unheard(forwarder, ended("resumed"))  # its submitter is unknown after the restart
    assert ends_in(monitor.receive_until_silent()) == ["resumed"]
    forwarder.subscribe(device.address)
    assert ends_in(device.receive_until_silent()) == ["resumed"]
    forwarder.unsubscribe(monitor.address)
    forwarder.subscribe(monitor.address)
    assert monitor.receive_until_silent() == []  # not twice to the same client


def test_only_ends_of_osc_jobs_without_a_known_submitter_are_kept(
        forwarder: EventForwarder, listeners: list[Listener]) -> None:
    owner = listener(listeners)
    forwarder.add_owner("mine", owner.address)  # sent in this run of the daemon: its submitter has it
    ended_unheard(forwarder,
                  ended("mine"),
                  ended("from-the-hot-folder", origin=Origin.hot_folder.value),  # has its status file
                  JobEvent("still-running", "", JobState.running, 0.5, "separating", origin="osc"),
                  ended("resumed"))
    assert ends_in(owner.receive_until_silent()) == ["mine"]
    late = listener(listeners)
    forwarder.subscribe(late.address)
    messages = late.receive_until_silent()
    assert ends_in(messages) == ["resumed"]
    assert {args[0] for _, args in messages} == {"resumed"}


def test_kept_ends_are_bounded_and_expire(forwarder: EventForwarder, listeners: list[Listener],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ended_unheard(forwarder, *(ended(f"j-{number}", state=JobState.cancelled) for number in range(UNHEARD_KEPT + 5)))
    device = listener(listeners)
    forwarder.subscribe(device.address)
    assert ends_in(device.receive_until_silent()) == [f"j-{n}" for n in range(5, UNHEARD_KEPT + 5)]
    monkeypatch.setattr(osc_events, "UNHEARD_SECONDS", 0.0)
    later = listener(listeners)
    forwarder.subscribe(later.address)
    assert later.receive_until_silent() == []  # older than UNHEARD_SECONDS: dropped

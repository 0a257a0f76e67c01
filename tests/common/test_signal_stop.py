"""SignalStop: what a signal handler may set (no lock), and what the stopping thread waits on."""

from __future__ import annotations

import os
import signal
import threading

from bridge.common.processes import SignalStop


def test_a_signal_handler_can_set_it_again_and_again_while_it_is_waited_on() -> None:
    stop = SignalStop(poll=0.01)
    assert not stop.is_set() and stop.wait(0.05) is False  # times out, says so
    previous = signal.signal(signal.SIGUSR1, stop.set)
    try:
        assert threading.current_thread() is threading.main_thread()
        for _ in range(100):
            os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5.0) is True and stop.is_set()
    finally:
        signal.signal(signal.SIGUSR1, previous)

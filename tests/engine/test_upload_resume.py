"""kill -9 while the part's FLAC is being encoded and sent: the daemon left no file behind and had sent no
submit; the restarted daemon uploads again and submits once (the stand-in's counters prove it)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import TEST_KEY, wait_for
from tests.test_daemon import make_source, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(180)


def test_kill_during_a_streamed_upload_resumes_and_submits_once(daemon_factory, user_dirs) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY) as service:
        service.faults.stall("upload", seconds=30.0)  # the first upload's answer never comes before the kill
        daemon = daemon_factory(service.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "take.wav", seconds=20.0)
        # a part of the file: its mono 48 kHz FLAC is made and sent while encoding (a whole file would go as is
        # to a stand-in on this machine)
        request = write_request(requests_dir(info), "take", source=source, prompt="piano", start=1.0, length=15.0)
        wait_for(lambda: service.stats()["calls"].get("upload", 0) == 1, timeout=60, what="the upload to arrive")
        daemon.kill()  # kill -9 while the upload waits for its answer
        assert service.stats()["submits"] == 0
        leftovers = [p.name for p in (user_dirs["state"]).rglob("*") if p.is_file() and ".upload." in p.name]
        assert leftovers == []  # nothing was written for the upload: it went out as it was encoded

        service.faults.clear()
        restarted = daemon_factory(service.url)
        restarted.start()
        status = wait_state(request, ("done", "failed"), timeout=90)
        assert status["state"] == "done", status
        assert service.stats()["submits"] == 1 and service.stats()["calls"]["upload"] == 2
        original, rate = sf.read(source, dtype="float64", start=44_100, frames=15 * 44_100)
        target, _ = sf.read(status["stems"]["target"], dtype="float64")
        residual, _ = sf.read(status["stems"]["residual"], dtype="float64")
        assert rate == 44_100 and target.shape == original.shape
        assert np.max(np.abs(original - target - residual)) <= 2.0 / 2**23  # the stems null the part
        assert restarted.stop() == 0

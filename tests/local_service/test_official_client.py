"""The official Python client (`fal-client`, the test extra) drives the strict stand-in: the stand-in is
faithful by the official client's own measure. Its module constants point it at 127.0.0.1 (it has no
setting for another host), and its multipart threshold and part size are lowered on both sides."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client as official
import httpx
import pytest

from bridge.local_service import LocalFalService
from tests.conftest import TEST_KEY
from tests.fal.test_fal_client import make_wav

APP = "fal-ai/sam-audio/separate"


@pytest.fixture
def sync_client(service: LocalFalService, monkeypatch: pytest.MonkeyPatch) -> Iterator[fal_client.SyncClient]:
    monkeypatch.setattr(official, "REST_URL", service.url)
    monkeypatch.setattr(official, "CDN_URL", service.url)
    monkeypatch.setattr(official, "QUEUE_URL_FORMAT", f"{service.url}/")
    monkeypatch.setattr(official, "MULTIPART_THRESHOLD", 100_000)
    monkeypatch.setattr(official, "MULTIPART_CHUNK_SIZE", 40_000)
    client = fal_client.SyncClient(key=TEST_KEY)
    yield client
    client._client.close()


def download(url: str) -> bytes:
    return httpx.get(url).content


def test_small_upload(sync_client: fal_client.SyncClient, service: LocalFalService, tmp_path: Path) -> None:
    audio = make_wav(tmp_path / "small.wav", seconds=0.5)
    url = sync_client.upload_file(audio)
    assert url.startswith(service.url) and download(url) == audio.read_bytes()
    assert service.stats()["calls"]["upload"] == 1


def test_multipart_upload(sync_client: fal_client.SyncClient, service: LocalFalService, tmp_path: Path) -> None:
    audio = make_wav(tmp_path / "big.wav", seconds=3.0)  # 288 kB: 8 parts of 40 kB
    url = sync_client.upload_file(audio)
    assert download(url) == audio.read_bytes()
    assert service.stats()["calls"]["multipart"] == 1 + 8 + 1


def test_gcs_fallback(sync_client: fal_client.SyncClient, service: LocalFalService, tmp_path: Path) -> None:
    audio = make_wav(tmp_path / "small.wav", seconds=0.5)
    service.faults.fail("upload", 500)  # the CDN upload fails: the official client goes to fal's storage
    url = sync_client.upload_file(audio)
    assert download(url) == audio.read_bytes()
    assert service.stats()["calls"]["storage"] == 2


def test_submit_events_with_logs_result_and_status_by_id(sync_client: fal_client.SyncClient,
                                                         service: LocalFalService, tmp_path: Path) -> None:
    url = sync_client.upload_file(make_wav(tmp_path / "in.wav", seconds=1.0))
    service.faults.fail("submit", 503)  # the ingress proxy's page: the official client resends, as we do
    handle = sync_client.submit(APP, {"audio_url": url, "prompt": "bass"}, start_timeout=60, priority="low")
    events = list(handle.iter_events(with_logs=True, interval=0.02))
    assert isinstance(events[-1], fal_client.Completed) and events[-1].error is None
    logs = [line["message"] for line in events[-1].logs or []]
    assert logs[0].startswith("Loading audio") and logs[-1] == "Done"
    result = handle.get()
    assert result["sample_rate"] == 48000 and download(result["target"]["url"])
    by_id = sync_client.status(APP, handle.request_id, with_logs=True)
    assert isinstance(by_id, fal_client.Completed) and by_id.logs
    assert sync_client.result(APP, handle.request_id)["duration"] == pytest.approx(1.0, abs=0.05)
    assert service.stats()["submits"] == 1  # one charge


def test_cancel(sync_client: fal_client.SyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalFalService(key=TEST_KEY, concurrency=1, job_time=30.0) as slow:
        monkeypatch.setattr(official, "QUEUE_URL_FORMAT", f"{slow.url}/")
        url = "data:audio/wav;base64," + base64.b64encode(make_wav(tmp_path / "a.wav").read_bytes()).decode()
        running = sync_client.submit(APP, {"audio_url": url, "prompt": "bass"})
        queued = sync_client.submit(APP, {"audio_url": url, "prompt": "piano"})
        assert isinstance(queued.status(), fal_client.Queued)
        queued.cancel()
        sync_client.cancel(APP, running.request_id)
        deadline = time.monotonic() + 10
        while not isinstance(status := running.status(), fal_client.Completed):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status.error_type == "client_cancelled"
        assert slow.stats()["cancels"] == 2

"""The stand-in keeps a request's files only until its results are fetched (or an hour), in a bounded store."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for
from tests.fal.test_fal_client import make_wav


def files_on_disk(root: Path) -> list[Path]:
    return [p for p in (root / "files").iterdir() if not p.name.startswith(".")]


def test_a_requests_files_are_deleted_once_its_results_are_fetched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalFalService(key=TEST_KEY, data_dir=data, store_limits={"fetched_grace": 0.0}) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      data_uri_limit=0) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav", seconds=2.0), "audio/wav")
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        client.wait(handle, poll_interval=0.02)
        result = client.result(handle)
        assert len(files_on_disk(data)) == 3  # the upload, the target, the residual
        client.download(result["target"]["url"], tmp_path / "t.wav")
        assert len(files_on_disk(data)) == 3  # one result still to fetch: nothing goes yet
        client.download(result["residual"]["url"], tmp_path / "r.wav")
        # the service's side of the last download ends a moment after the client has every byte
        wait_for(lambda: files_on_disk(data) == [], what="the request's files to be deleted")
        for gone in (url, result["target"]["url"]):
            assert httpx.get(gone).status_code == 404
        assert service.stats()["stored_bytes"] == 0


def test_results_stay_a_grace_period_for_a_download_retried_at_once(tmp_path: Path) -> None:
    with LocalFalService(key=TEST_KEY, data_dir=tmp_path / "data") as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      data_uri_limit=0) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        client.wait(handle, poll_interval=0.02)
        result = client.result(handle)
        for name in ("target", "residual"):
            client.download(result[name]["url"], tmp_path / f"{name}.wav")
        wait_for(lambda: httpx.get(url).status_code == 404, what="the upload to go")  # at once
        assert httpx.get(result["target"]["url"]).status_code == 200  # the results after the grace


def test_unfetched_files_go_after_their_lifetime(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalFalService(key=TEST_KEY, data_dir=data, store_limits={"file_ttl": 0.3}) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      data_uri_limit=0) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        assert httpx.get(url).status_code == 200
        time.sleep(0.4)  # past its lifetime (a lower bound only: no upper bound is asserted)
        assert httpx.get(url).status_code == 404
        assert files_on_disk(data) == []


def test_the_store_is_bounded_oldest_files_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalFalService(key=TEST_KEY, data_dir=data, store_limits={"max_bytes": 250_000}) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      data_uri_limit=0) as client:
        urls = [client.storage.upload(make_wav(tmp_path / f"{n}.wav", seconds=1.0), "audio/wav")
                for n in range(4)]  # 96 kB each
        assert [httpx.get(u).status_code for u in urls] == [404, 404, 200, 200]
        assert service.stats()["stored_bytes"] <= 250_000
        assert len(files_on_disk(data)) == 2


def test_an_upload_deleted_as_a_job_reads_it_fails_that_job_as_an_expired_link(tmp_path: Path) -> None:
    """The sweep may delete a file between a submit's lookup and its reading of the file (its time came,
    or the store was full): the submit then broke with an unhandled FileNotFoundError (a 500) instead of
    failing the job the way fal does for an expired link."""
    from tests.local_service.test_local_service_faults import KEY_AUTH, run_job

    data = tmp_path / "data"
    with LocalFalService(key=TEST_KEY, data_dir=data) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      data_uri_limit=0) as client, \
            httpx.Client(base_url=service.url, headers=KEY_AUTH, timeout=30) as http:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        (uploaded,) = files_on_disk(data)
        uploaded.unlink()  # as the sweep does, after the submit looked the file up
        failed = run_job(http, url)
        assert failed["accepted"]["status_url"], failed
        assert "404" in failed["status"]["error"] and failed["result"].status_code == 422

"""Our client keeps the official client's rules (fal-client 1.0.3), against the strict stand-in on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fal_client.client as official
import httpx
import pytest

from bridge.common.errors import AuthError, ServiceError, ServiceJobFailed, SubmitUncertain
from bridge.common.options import ServiceOptions
from bridge.fal.auth import ApiKey, key_in_env
from bridge.fal.client import FalClient, RequestHandle, Timeouts
from bridge.fal.hosts import BACKUP_CONNECT_CAP, FAL_BACKUP_HOSTS, BackupHostTransport
from bridge.local_service import LocalFalService
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for
from tests.fal.test_fal_client import make_wav, separate


def our_client(service: LocalFalService, **kwargs: object) -> FalClient:
    return FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                     data_uri_limit=0, **kwargs)  # type: ignore[arg-type]


def fetch(client: FalClient, url: str, dest: Path) -> bytes:
    client.download(url, dest)
    return dest.read_bytes()


# -- multipart ---------------------------------------------------------------------------------------


def test_multipart_passes_the_strict_store_with_parts_in_parallel(service: LocalFalService, tmp_path: Path) -> None:
    """identity encoding on each part (else no ETag), the complete as JSON, its empty 204 answer ignored."""
    assert service.strict
    audio = make_wav(tmp_path / "in.wav", seconds=3.0)
    service.faults.stall("multipart", seconds=0.1, times=100)  # parts take a while: they overlap
    with our_client(service) as client:
        client.storage.multipart_threshold = 50_000
        client.storage.part_size = 40_000  # 8 parts, the last one short
        seen: list[tuple[int, int]] = []
        url = client.storage.upload(audio, "audio/wav", progress=lambda done, total: seen.append((done, total)))
        assert fetch(client, url, tmp_path / "back.wav") == audio.read_bytes()
    assert service.stats()["max_in_flight"]["multipart"] > 1  # several parts at once
    assert seen[-1] == (audio.stat().st_size, audio.stat().st_size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_multipart_progress_moves_as_parts_are_answered_not_all_at_the_end(service: LocalFalService,
                                                                           tmp_path: Path) -> None:
    audio = make_wav(tmp_path / "in.wav", seconds=3.0)
    service.faults.stall("multipart", seconds=0.2, times=100)
    with our_client(service) as client:
        client.storage.multipart_threshold = 50_000
        client.storage.part_size = 40_000  # 8 parts, two at a time: four rounds of 0.2 s
        client.storage.part_concurrency = 2
        calls_seen: list[int] = []  # the stand-in's multipart calls begun (the initiate, then each part's PUT)
        client.storage.upload(audio, "audio/wav",
                              progress=lambda _done, _total: calls_seen.append(service.stats()["calls"]["multipart"]))
    assert calls_seen and calls_seen[0] < 1 + 8  # the first report came before the last part was sent


def test_the_strict_store_gives_no_etag_without_identity_and_refuses_a_complete_that_is_not_json(
        service: LocalFalService) -> None:
    with httpx.Client(base_url=service.url) as http:
        token = http.post("/storage/auth/token", json={}, headers={"Authorization": f"Key {TEST_KEY}"}).json()
        bearer = {"Authorization": f"Bearer {token['token']}"}
        started = http.post("/files/upload/multipart", headers=bearer | {"Content-Type": "audio/flac"}).json()
        base = f"{started['access_url']}/multipart/{started['uploadId']}"
        assert "etag" not in http.put(f"{base}/1", content=b"x" * 100, headers=bearer).headers
        etag = http.put(f"{base}/1", content=b"x" * 100, headers=bearer | {"Accept-Encoding": "identity"})
        parts = {"parts": [{"partNumber": 1, "etag": etag.headers["etag"]}]}
        flac = http.post(f"{base}/complete", json=parts, headers=bearer | {"Content-Type": "audio/flac"})
        assert flac.status_code == 415
        assert http.post(f"{base}/complete", json=parts, headers=bearer).status_code == 204


# -- the GCS fallback --------------------------------------------------------------------------------


@pytest.mark.parametrize("multipart", [False, True])
def test_a_failing_cdn_upload_falls_back_to_fals_storage(service: LocalFalService, tmp_path: Path,
                                                         multipart: bool) -> None:
    audio = make_wav(tmp_path / "in.wav", seconds=2.0)
    service.faults.fail("multipart" if multipart else "upload", 503, times=FAST_RETRY.attempts)
    with our_client(service) as client:
        if multipart:
            client.storage.multipart_threshold = 50_000
        url = client.storage.upload(audio, "audio/wav")
        assert "/files/f/" in url
        assert fetch(client, url, tmp_path / "back.wav") == audio.read_bytes()
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})  # the service reads it
        client.wait(handle, poll_interval=0.02)
    calls = service.stats()["calls"]
    assert calls["storage"] == 2  # initiate (with the key) and the PUT to the signed URL
    assert "authorization_at_signed_url" not in calls  # the key never went to the signed URL


# -- the submit retry rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_submit_is_resent_only_after_the_ingress_proxys_own_error(service: LocalFalService, tmp_path: Path,
                                                                    status: int) -> None:
    audio = make_wav(tmp_path / "in.wav")
    with our_client(service) as client:
        url = client.storage.upload(audio, "audio/wav")
        service.faults.fail("submit", status, answered_by="proxy")  # nginx answered: the queue never saw it
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        client.wait(handle, poll_interval=0.02)
        assert service.stats()["submits"] == 1
        service.faults.fail("submit", status, answered_by="gateway")  # the queue took it, then a bare 5xx
        with pytest.raises(SubmitUncertain, match=f"HTTP {status}.*may or may not be running") as caught:
            client.submit("separate", {"audio_url": url, "prompt": "piano"})
        assert "dashboard" in caught.value.hint
    assert service.stats()["submits"] == 2  # one charge each: the uncertain one was not sent again


# -- backup hosts, timeouts ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_connect_failure_on_the_primary_host_moves_to_its_backup(service: LocalFalService, tmp_path: Path) -> None:
    dead = f"127.0.0.2:{free_port()}"  # nothing listens there: connection refused
    with FalClient(ApiKey(TEST_KEY), queue_url=f"http://{dead}", rest_url=service.url, retry=FAST_RETRY,
                   backup_hosts={dead: f"127.0.0.1:{service.port}"}) as client:
        result = separate(client, make_wav(tmp_path / "in.wav"))
        assert str(result["target"]["url"]).startswith(service.url)  # type: ignore[index]
    assert service.stats()["submits"] == 1


def test_the_connect_to_a_host_with_a_backup_is_capped_at_five_seconds() -> None:
    seen: dict[str, float] = {}

    def remote(request: httpx.Request) -> httpx.Response:  # the far side: records what the client allowed
        seen[request.url.host] = request.extensions["timeout"]["connect"]
        return httpx.Response(200, json={})

    # fal's host names only as URLs: the mock transport answers, nothing leaves (tests/loopback_guard.py)
    transport = BackupHostTransport(FAL_BACKUP_HOSTS, inner=httpx.MockTransport(remote))
    with httpx.Client(transport=transport, timeout=httpx.Timeout(120, connect=30)) as http:
        for url in ("https://queue.fal.run/x", "https://queue.falrun.com/x", "https://rest.fal.ai/x"):
            http.get(url)
    assert seen == {"queue.fal.run": 5.0, "queue.falrun.com": 5.0, "rest.fal.ai": 30.0}


def test_our_timeouts_and_backup_hosts_are_the_official_clients() -> None:
    ours = Timeouts()
    assert ours.read == official.SyncClient.default_timeout == 120  # submit
    assert (ours.status_read, ours.connect) == (official.QUEUE_POLL_TIMEOUT.read, official.QUEUE_POLL_TIMEOUT.connect)
    assert dict(FAL_BACKUP_HOSTS) == official._BACKUP_DOMAINS
    assert BACKUP_CONNECT_CAP == official._BACKUP_DOMAIN_CONNECT_TIMEOUT


# -- start timeout and queue priority ------------------------------------------------------------------


def test_a_request_that_does_not_start_in_time_fails_saying_so_and_is_sent_anew(tmp_path: Path) -> None:
    with LocalFalService(key=TEST_KEY, concurrency=1, job_time=30.0) as service, \
            our_client(service, start_timeout=1.5) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        busy = client.submit("separate", {"audio_url": url, "prompt": "bass"})  # holds the only worker
        stuck = client.submit("separate", {"audio_url": url, "prompt": "piano"})
        with pytest.raises(ServiceJobFailed, match=r"did not start within the start timeout \(1.5 s\)") as caught:
            client.wait(stuck, poll_interval=0.05)
        assert caught.value.results_unusable  # so the job's retry submits it anew
        assert "nothing was charged" in caught.value.message
        client.cancel(busy)
        service.queue._settings.job_time = 0.0  # the queue is free again: the new request runs
        again = client.submit("separate", {"audio_url": url, "prompt": "piano"})
        assert client.wait(again, poll_interval=0.05).completed
    assert service.stats()["submits"] == 3


def test_hot_folder_jobs_ask_for_low_priority_and_interactive_ones_go_first(tmp_path: Path) -> None:
    with LocalFalService(key=TEST_KEY, concurrency=1, job_time=30.0) as service, \
            our_client(service, priorities={"hot-folder": "low"}) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        busy = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        wait_for(lambda: client.status(busy).state == "IN_PROGRESS", what="the worker to take the first job")
        batch = client.submit("separate", {"audio_url": url, "prompt": "x"}, origin="hot-folder")
        daw = client.submit("separate", {"audio_url": url, "prompt": "y"}, origin="osc")
        assert client.status(daw).queue_position == 0
        assert client.status(batch).queue_position == 1
        for handle in (batch, daw, busy):
            client.cancel(handle)


def test_start_timeout_and_priorities_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match="more than 1 second"):
        FalClient(ApiKey(TEST_KEY), start_timeout=1)
    with pytest.raises(ValueError, match="normal, low"):
        FalClient(ApiKey(TEST_KEY), priorities={"osc": "urgent"})


# -- the key goes only to fal's hosts ------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_PUT = do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_host() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.2", 0), type("Rec", (_Recorder,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="foreign-host")
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_submit_answer_naming_another_host_is_refused_and_gets_no_key(
        service: LocalFalService, foreign_host: tuple[str, list[dict[str, str]]], tmp_path: Path) -> None:
    base, seen = foreign_host
    service.faults.foreign_urls(base)
    with our_client(service) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        with pytest.raises(SubmitUncertain, match=r"named another host \(127\.0\.0\.2:\d+\)"):
            client.submit("separate", {"audio_url": url, "prompt": "bass"})
        journal_handle = RequestHandle("abc", f"{base}/status", base, f"{base}/cancel")  # e.g. from an old journal
        with pytest.raises(ServiceError, match="not fal's host"):
            client.status(journal_handle)
        with pytest.raises(ServiceError, match="not fal's host"):
            client.wait(journal_handle)
    assert seen == []  # not a single call went there, so no key either
    assert service.stats()["submits"] == 1  # and it was not sent again


def test_the_key_goes_to_fals_own_hosts_and_the_configured_service_only() -> None:
    with FalClient(ApiKey(TEST_KEY)) as fal:  # headers only are computed: no request is made
        for url in ("https://queue.fal.run/x", "https://queue.falrun.com/x", "https://rest.fal.ai/storage"):
            assert fal.auth_headers(url)["Authorization"] == f"Key {TEST_KEY}"
        for url in ("https://queue.fal.run.evil.example/x", "http://127.0.0.1:8765/x", "https://v3.fal.media/x"):
            with pytest.raises(ServiceError, match="not fal's host"):
                fal.auth_headers(url)


# -- the key from FAL_KEY_ID + FAL_KEY_SECRET ----------------------------------------------------------


def test_fal_key_id_and_secret_make_the_key_as_the_official_client_does() -> None:
    pair = {"FAL_KEY_ID": "key-id-1234", "FAL_KEY_SECRET": "secret-5678abcd"}
    assert ApiKey.from_env(pair).authorization() == "Key key-id-1234:secret-5678abcd"
    assert key_in_env(pair) and not key_in_env({"FAL_KEY_ID": "key-id-1234"})
    assert ApiKey.from_env(pair | {"FAL_KEY": "whole-key-9999"}).authorization() == "Key whole-key-9999"
    with pytest.raises(AuthError, match="FAL_KEY_ID is set but FAL_KEY_SECRET is not"):
        ApiKey.from_env({"FAL_KEY_ID": "key-id-1234"})


# -- what we send ----------------------------------------------------------------------------------------


def test_chunk_fields_are_sent_only_when_a_user_set_them() -> None:
    assert set(ServiceOptions().to_payload()) == {"predict_spans", "reranking_candidates", "acceleration",
                                                  "output_format"}
    chosen = ServiceOptions(max_chunk_duration=30, chunk_overlap=2).to_payload()
    assert (chosen["max_chunk_duration"], chosen["chunk_overlap"]) == (30, 2)


def test_the_key_pair_alone_makes_the_daemon_use_fal_with_the_configured_queue_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.common.config import Config, ServiceConfig
    from bridge.daemon import choose_service

    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert choose_service(Config(), local=False, url=None).local  # no key: the stand-in
    monkeypatch.setenv("FAL_KEY_ID", "key-id-1234")
    monkeypatch.setenv("FAL_KEY_SECRET", "secret-5678abcd")
    config = Config(service=ServiceConfig(start_timeout=120, queue_priority={"osc": "low"}))
    choice = choose_service(config, local=False, url=None)
    assert not choice.local and not choice.url
    assert (choice.start_timeout, dict(choice.priorities)) == (120, {"osc": "low"})


def test_the_pipeline_sends_a_hot_folder_job_at_low_priority_and_a_cli_job_at_normal(
        service: LocalFalService, tmp_path: Path) -> None:
    from bridge.common.request import Origin, SeparationRequest
    from bridge.engine.pipeline import Pipeline
    from bridge.engine.pipeline_hooks import StandaloneHooks
    from bridge.engine.service_choice import ServiceChoice
    from bridge.presets.library import PresetLibrary, builtin_presets_dir
    from bridge.presets.recipe import recipe_for

    library = PresetLibrary([("built-in", builtin_presets_dir())])
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   priorities=ServiceChoice().priorities) as client:  # the default: hot folders go low
        for number, origin in enumerate((Origin.hot_folder, Origin.cli)):
            source = make_wav(tmp_path / f"in{number}.wav")
            request = SeparationRequest(source=source, prompt="bass", origin=origin,
                                        output_dir=tmp_path / f"out{number}")
            Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), StandaloneHooks(),
                                                     tmp_path / f"work{number}")
    assert service.stats()["submits_by_priority"] == {"normal": 1, "low": 1}

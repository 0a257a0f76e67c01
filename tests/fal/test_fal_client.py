"""The real fal client over real HTTP against the local fal-protocol service on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.common.errors import (
    AuthError,
    JobFailed,
    RequestGone,
    ServiceJobFailed,
    ServiceUnavailable,
    SubmitUncertain,
    ValidationError,
)
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient, Timeouts
from bridge.fal.retry import RetryPolicy, parse_retry_after
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for


def make_wav(path: Path, seconds: float = 1.0, rate: int = 48000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 100 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t), rate, subtype="PCM_16")
    return path


def separate(client: FalClient, audio: Path, prompt: str = "bass") -> dict[str, object]:
    url = client.storage.upload(audio, "audio/wav")
    handle = client.submit("separate", {"audio_url": url, "prompt": prompt})
    client.wait(handle, poll_interval=0.02)
    return client.result(handle)


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_round_trip_returns_mono_48k_target_and_residual(client: FalClient, service, tmp_path: Path) -> None:
    result = separate(client, make_wav(tmp_path / "in.wav", rate=44100))
    for key in ("target", "residual"):
        dest = tmp_path / f"{key}.wav"
        size = client.download(result[key]["url"], dest)  # type: ignore[index]
        assert size == dest.stat().st_size > 0
        info = sf.info(str(dest))
        assert (info.samplerate, info.channels) == (48000, 1)
        assert abs(info.frames - 48000) <= 1
    assert service.stats()["submits"] == 1


@pytest.mark.parametrize("mode", ["data-uri", "cdn", "multipart"])
def test_upload_paths_deliver_the_same_bytes(service, tmp_path: Path, mode: str) -> None:
    audio = make_wav(tmp_path / "in.wav", seconds=2.0)
    limit = 1 << 30 if mode == "data-uri" else 0
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   data_uri_limit=limit) as client:
        if mode == "multipart":
            client.storage.multipart_threshold = 50_000
            client.storage.part_size = 40_000  # several parts, the last one short
        url = client.storage.upload(audio, "audio/wav")
        if mode == "data-uri":
            assert url.startswith("data:audio/wav;base64,")
            return
        assert url.startswith(service.url)
        dest = tmp_path / "back.wav"
        client.download(url, dest)
        assert dest.read_bytes() == audio.read_bytes()


def test_a_locked_account_stops_the_upload_with_a_billing_message(service, tmp_path: Path) -> None:
    """fal's storage token call is billable too: a locked account gets 403 there first."""
    locked = "User is locked. Reason: Exhausted balance. Top up your balance."  # fal's words, less its address
    service.faults.fail("token", 403, detail=locked)
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   data_uri_limit=0) as client:
        with pytest.raises(AuthError, match="Your fal account is locked") as err:
            client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
    assert locked in str(err.value) and "https://fal.ai/dashboard/billing" in str(err.value.hint)
    assert "FAL_KEY" not in str(err.value) + str(err.value.hint)


@pytest.mark.parametrize(("call", "detail", "says"), [
    ("submit", "User is locked. Reason: Admin lock. Please contact support.", "locked; nothing charged"),
    ("status", "User is locked. Reason: Exhausted balance.", "locked"),  # submitted already: maybe charged
    ("submit", "This API key has been blocked.", "bad key"),  # "blocked" is not "locked": a new key helps
])
def test_403_tells_a_locked_account_from_a_refused_key(client: FalClient, service, tmp_path: Path, call: str,
                                                       detail: str, says: str) -> None:
    audio = make_wav(tmp_path / "in.wav")
    if call == "status":
        handle = client.submit("separate", {"audio_url": client.storage.upload(audio, "audio/wav"), "prompt": "x"})
        service.faults.fail("status", 403, detail=detail)
        with pytest.raises(AuthError) as err:
            client.status(handle)
    else:
        service.faults.fail("submit", 403, detail=detail)
        with pytest.raises(AuthError) as err:
            client.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "x"})
    text = f"{err.value} {err.value.hint}"
    assert ("Your fal account is locked" in text) == says.startswith("locked")
    assert ("nothing was charged" in text) == (says == "locked; nothing charged")
    assert ("dashboard/keys" in text) == (says == "bad key")


def test_submit_retried_after_ingress_503s_and_charged_once(service, tmp_path: Path) -> None:
    sleeper = RecordingSleep()
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   sleep=sleeper) as client:
        service.faults.fail("submit", status=503, times=2)
        result = separate(client, make_wav(tmp_path / "in.wav"))
    assert "target" in result
    assert service.stats()["submits"] == 1
    assert len(sleeper.delays) >= 2


def test_429_retry_after_is_honoured(service, tmp_path: Path) -> None:
    sleeper = RecordingSleep()
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   sleep=sleeper) as client:
        audio = make_wav(tmp_path / "in.wav")
        url = client.storage.upload(audio, "audio/wav")
        service.faults.fail("status", status=429, times=1, retry_after=1.5)
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        client.wait(handle, poll_interval=0.0, use_stream=False)
    assert 1.5 in sleeper.delays


def test_dropped_status_connection_is_recovered(client: FalClient, service, tmp_path: Path) -> None:
    service.faults.drop("status", times=2)
    service.faults.drop("stream", times=1)
    result = separate(client, make_wav(tmp_path / "in.wav"))
    assert "residual" in result
    assert service.stats()["submits"] == 1


def test_lost_submit_answer_is_never_repeated(client: FalClient, service, tmp_path: Path) -> None:
    url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
    service.faults.lose_submit_answer(times=1)
    with pytest.raises(SubmitUncertain) as err:
        client.submit("separate", {"audio_url": url, "prompt": "bass"})
    assert "never charged twice" in str(err.value)
    assert service.stats()["submits"] == 1  # it landed once; we did not send it again


def test_stalled_read_times_out_and_is_retried(service, tmp_path: Path) -> None:
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                   timeouts=Timeouts(read=0.3, status_read=0.3)) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        service.faults.stall("status", seconds=1.0, times=1)
        status = client.wait(handle, poll_interval=0.02, use_stream=False)
    assert status.completed


@pytest.mark.parametrize("key", ["", "wrong-key-value"])
def test_bad_or_missing_key_is_an_auth_error(service, tmp_path: Path, key: str) -> None:
    if not key:
        with pytest.raises(AuthError, match="FAL_KEY is not set") as err:
            ApiKey.from_env({})
        assert "--local" in str(err.value)
        return
    with FalClient(ApiKey(key), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as client:
        with pytest.raises(AuthError, match="refused the API key") as err:
            client.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "x"})
    assert key not in str(err.value)
    assert service.stats()["submits"] == 0


def test_validation_error_names_the_field(client: FalClient, service) -> None:
    with pytest.raises(ValidationError, match="reranking_candidates"):
        client.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "piano",
                                   "reranking_candidates": 0})
    assert service.stats()["submits"] == 0


def test_service_down_says_nothing_was_charged(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    with FalClient(ApiKey(TEST_KEY), queue_url=url, rest_url=url, retry=FAST_RETRY, sleep=RecordingSleep()) as c:
        with pytest.raises(ServiceUnavailable, match="nothing was charged") as err:
            c.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "piano"})
    assert f"{FAST_RETRY.attempts} tries" in str(err.value)
    assert f"Is the stand-in service at {url} still running?" in err.value.hint  # not "your internet"


def test_failed_job_reports_service_message_and_logs(client: FalClient, service, tmp_path: Path) -> None:
    service.faults.fail_job(message="CUDA error: out of memory")
    with pytest.raises(JobFailed, match="out of memory") as err:
        separate(client, make_wav(tmp_path / "in.wav"))
    assert "Last service log lines" in str(err.value)


def test_cancel_a_queued_request(service, tmp_path: Path) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=5.0, concurrency=1) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
        first = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        second = client.submit("separate", {"audio_url": url, "prompt": "bass"})
        assert client.status(second).queue_position is not None
        assert client.cancel(second) == "CANCELLATION_REQUESTED"
        assert client.cancel(first) == "CANCELLATION_REQUESTED"
        with pytest.raises(JobFailed, match="cancelled"):
            client.wait(second, poll_interval=0.02, use_stream=False)


def test_expired_result_links_are_reported(client: FalClient, service, tmp_path: Path) -> None:
    result = separate(client, make_wav(tmp_path / "in.wav"))
    service.faults.expire_files()
    with pytest.raises(RequestGone, match="expired") as err:
        client.download(result["target"]["url"], tmp_path / "t.wav")  # type: ignore[index]
    assert err.value.results_unusable and "charged again" in err.value.hint  # asking again gives the same links


def test_a_request_the_service_no_longer_has_is_gone_not_an_outage(client: FalClient, service) -> None:
    forgotten = client.handle_for("0c3b-forgotten-by-a-restart")
    for call in (client.status, client.result):
        with pytest.raises(RequestGone, match="no longer has this request") as err:
            call(forgotten)
        assert err.value.results_unusable  # a retry sends it anew; polling it again never ends
    assert service.stats()["submits"] == 0


@pytest.mark.parametrize(("status", "error", "unusable"), [
    (422, ServiceJobFailed, True),   # the job's own error: a retry must send it anew
    (500, JobFailed, False),         # the runner's answer: asked for again (free) on a retry, not waited out
    (503, ServiceUnavailable, False),  # an ingress outage: waited out
])
def test_an_error_from_the_result_endpoint_says_what_became_of_the_job(
        client: FalClient, service, tmp_path: Path, status: int, error: type[Exception], unusable: bool) -> None:
    url = client.storage.upload(make_wav(tmp_path / "in.wav"), "audio/wav")
    handle = client.submit("separate", {"audio_url": url, "prompt": "bass"})
    client.wait(handle, poll_interval=0.02)
    service.faults.fail("result", status=status, times=100, detail="Audio too short")
    with pytest.raises(error) as err:
        client.result(handle)
    assert type(err.value) is error and err.value.results_unusable is unusable
    assert "Fix the named field" not in err.value.hint and "after 1 tries" not in err.value.message
    assert service.stats()["submits"] == 1


def test_an_upload_token_the_file_store_no_longer_takes_is_replaced_not_blamed_on_the_key(tmp_path: Path) -> None:
    """A stand-in restarted on the same port (or a token fal revoked early): the cached token is refused
    with 401; a new one is asked for once, instead of every later upload failing as "a bad key"."""
    from bridge.local_service import LocalFalService

    audio = make_wav(tmp_path / "in.wav", seconds=12.0)  # past the data-URI limit: the CDN flow
    with LocalFalService(key=TEST_KEY) as first:
        port = int(first.url.rsplit(":", 1)[1])
        client = FalClient(ApiKey(TEST_KEY), queue_url=first.url, rest_url=first.url, retry=FAST_RETRY)
        assert client.storage.upload(audio, "audio/wav").startswith(first.url)
    try:
        with LocalFalService(key=TEST_KEY, port=port) as restarted:
            url = client.storage.upload(audio, "audio/wav")
            assert url.startswith(restarted.url)
            assert restarted.stats()["calls"]["token"] == 1
    finally:
        client.close()


def test_retry_after_as_an_http_date_is_honoured() -> None:
    now = 1_767_225_600.0  # Thu, 01 Jan 2026 00:00:00 GMT
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:42 GMT", now=now) == pytest.approx(42.0)
    assert parse_retry_after("Wed, 31 Dec 2025 23:59:00 GMT", now=now) == 0.0  # past: no wait
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("soon", now=now) is None


def test_a_download_the_server_compresses_anyway_is_whole(tmp_path: Path) -> None:
    """httpx decodes gzip on the fly: the size check counts the bytes as sent, and we ask for none."""
    import gzip
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = bytes(range(256)) * 4096
    asked: list[str] = []

    class Gzipping(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.headers.get("Accept-Encoding", ""))
            body = gzip.compress(payload)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gzipping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FalClient(ApiKey(TEST_KEY), queue_url="http://127.0.0.1:9", retry=FAST_RETRY) as client:
            client.download(f"http://127.0.0.1:{server.server_port}/result.wav", tmp_path / "r.wav")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (tmp_path / "r.wav").read_bytes() == payload
    assert asked == ["identity"]


@pytest.mark.parametrize(("key", "says"), [
    ("\u201ctest-key-0123456789abcdef\u201d", "a quote mark (character 1 of 27)"),
    ("test-key 0123456789abcdef", "a space or line break (character 9 of 25)"),
    ("test-key-0123456789abcd\u00e9f", "a character that is not plain ASCII (character 24 of 25)"),
])
def test_a_mistyped_key_is_named_by_position_never_shown(key: str, says: str) -> None:
    with pytest.raises(AuthError) as err:
        ApiKey(key)
    assert says in err.value.message and "0123456789" not in str(err.value)


def test_key_never_appears_in_logs_reprs_or_errors(service, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    secret = "fal-secret-id-123456:fal-secret-part-abcdef"
    key = ApiKey(secret)
    caplog.set_level(logging.DEBUG)
    with FalClient(key, queue_url=service.url, rest_url=service.url,
                   retry=RetryPolicy(attempts=2, base_delay=0.01)) as client:
        shown = f"{client!r} {key!r} {key}"
        with pytest.raises(AuthError) as err:
            client.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "x"})
        logging.getLogger("test").debug("client is %r", client)
    out = capsys.readouterr()
    everything = shown + str(err.value) + repr(err.value) + caplog.text + out.out + out.err
    for part in (secret, "fal-secret-id-123456", "fal-secret-part-abcdef"):
        assert part not in everything
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)


@pytest.mark.parametrize("status", [500, 504])
def test_a_server_error_after_the_queue_saw_the_submit_is_not_repeated(status: int, tmp_path: Path) -> None:
    """fal's own retry rules: a 5xx carrying a request id came from behind the ingress: it may be running."""
    import httpx

    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, headers={"x-fal-request-id": "req-1"}, json={"detail": "Internal error"})

    with FalClient(ApiKey(TEST_KEY), queue_url="http://127.0.0.1:9", rest_url="http://127.0.0.1:9",
                   retry=FAST_RETRY, sleep=RecordingSleep()) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(answer))  # the remote side, not our code
        with pytest.raises(SubmitUncertain, match="may or may not be running"):
            client.submit("separate", {"audio_url": "data:audio/wav;base64,AAAA", "prompt": "piano"})
    assert len(calls) == 1


def test_a_real_key_is_only_sent_to_a_stand_in_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.engine.service_choice import LOCAL_KEY, ServiceChoice, is_loopback_url, open_client

    monkeypatch.setenv("FAL_KEY", "real-key-from-the-user-123456")
    assert is_loopback_url("http://127.0.0.1:8765") and is_loopback_url("http://localhost:1")
    assert not is_loopback_url("http://192.0.2.10:8765") and not is_loopback_url("http://studio.example:80")
    with open_client(ServiceChoice(url="http://127.0.0.1:8765")) as near:  # no request is made here
        assert near.auth_headers("http://127.0.0.1:8765/x")["Authorization"] == "Key real-key-from-the-user-123456"
    with open_client(ServiceChoice(url="http://192.0.2.10:8765")) as far:
        assert far.auth_headers("http://192.0.2.10:8765/x")["Authorization"] == f"Key {LOCAL_KEY}"


def _stored_result(client: FalClient, tmp_path: Path) -> tuple[str, bytes]:
    """A file on the stand-in's CDN (a separated target) and its bytes."""
    result = separate(client, make_wav(tmp_path / "in.wav", seconds=8.0))
    url = str(result["target"]["url"])  # type: ignore[index]
    reference = tmp_path / "reference.wav"
    client.download(url, reference)
    return url, reference.read_bytes()


def test_a_download_told_to_stop_while_stalled_leaves_a_later_one_intact(
        client: FalClient, service, tmp_path: Path) -> None:
    """A try that outlives its caller (its read stalled past the caller's patience) must neither empty
    nor overwrite the file a later download of the same result wrote meanwhile."""
    import threading

    from bridge.common.errors import Cancelled

    url, expected = _stored_result(client, tmp_path)
    dest = tmp_path / "work" / "step0.service-target.wav"
    dest.parent.mkdir()
    service.faults.stall("download", 1.5)
    stop = threading.Event()
    outcome: list[BaseException | int] = []

    def stale() -> None:
        try:
            outcome.append(client.download(url, dest, stop=stop))
        except BaseException as exc:
            outcome.append(exc)

    calls = service.stats()["calls"].get("download", 0)
    worker = threading.Thread(target=stale)
    worker.start()
    wait_for(lambda: service.stats()["calls"].get("download", 0) > calls, timeout=10, what="the held download")
    stop.set()  # its caller gave up on it while the service holds its answer
    assert client.download(url, dest) == len(expected)  # the next attempt, same name, not held
    worker.join(10)
    assert not worker.is_alive() and isinstance(outcome[0], Cancelled)
    assert dest.read_bytes() == expected
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no part file left


def test_a_failed_download_leaves_no_part_file_and_a_stopped_one_asks_nothing(
        client: FalClient, service, tmp_path: Path) -> None:
    import threading

    from bridge.common.errors import Cancelled

    url, _ = _stored_result(client, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    service.faults.drop("download", times=10)  # every try breaks off
    with pytest.raises(ServiceUnavailable):
        client.download(url, work / "residual.wav")
    assert list(work.iterdir()) == []
    service.faults.clear()
    before = service.stats()["calls"].get("download", 0)
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(Cancelled):
        client.download(url, work / "residual.wav", stop=stopped)
    assert service.stats()["calls"].get("download", 0) == before and list(work.iterdir()) == []

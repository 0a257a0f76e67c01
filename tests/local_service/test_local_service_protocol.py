"""The local fal service speaks fal's storage and queue protocol: plain httpx against it on 127.0.0.1."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from bridge.common.errors import InputError
from bridge.local_service import LocalFalService
from tests.conftest import TEST_KEY, wait_for

KEY_AUTH = {"Authorization": f"Key {TEST_KEY}"}
SEPARATE = "/fal-ai/sam-audio/separate"


def wav_bytes(seconds: float = 0.5, rate: int = 48000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * freq * t), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(data).decode()


@pytest.fixture
def http(service: LocalFalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, headers=KEY_AUTH, timeout=30) as client:
        yield client


def upload_token(http: httpx.Client) -> dict[str, Any]:
    answer = http.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert answer.status_code == 200
    token: dict[str, Any] = answer.json()
    return token


def submit(http: httpx.Client, payload: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = http.post(SEPARATE, json=payload, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_completed(http: httpx.Client, status_url: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(status_url, params={"logs": 1}).json()
        if body["status"] == "COMPLETED":
            return body
        time.sleep(0.02)
    raise AssertionError("job did not complete")


# -- storage -----------------------------------------------------------------------------------------


def test_token_has_fal_shape_and_points_at_the_service(service: LocalFalService, http: httpx.Client) -> None:
    token = upload_token(http)
    assert token["token_type"] == "Bearer"
    assert token["base_url"] == service.url
    assert token["token"] and token["expires_at"].endswith("Z")


def test_upload_and_download_round_trip_streamed(service: LocalFalService, http: httpx.Client) -> None:
    token = upload_token(http)
    payload = np.random.default_rng(3).bytes(3 * 1024 * 1024 + 17)  # several server read chunks

    def body() -> Iterator[bytes]:  # sent chunked: no Content-Length
        for offset in range(0, len(payload), 500_000):
            yield payload[offset : offset + 500_000]

    answer = httpx.post(f"{token['base_url']}/files/upload", content=body(), headers={
        "Authorization": f"Bearer {token['token']}", "Content-Type": "audio/x-test",
        "X-Fal-File-Name": "My%20Take%20%C3%A9.wav"})
    assert answer.status_code == 200, answer.text
    url = answer.json()["access_url"]
    assert url.startswith(f"{service.url}/files/f/") and url.endswith("/My%20Take%20%C3%A9.wav")
    back = httpx.get(url)  # public: no auth
    assert back.status_code == 200
    assert back.content == payload
    assert back.headers["content-type"] == "audio/x-test"
    assert int(back.headers["content-length"]) == len(payload)
    head = httpx.head(url)
    assert int(head.headers["content-length"]) == len(payload) and head.content == b""


def test_upload_needs_an_issued_token(service: LocalFalService) -> None:
    for header in ({}, {"Authorization": "Bearer not-a-token"}, KEY_AUTH):
        answer = httpx.post(f"{service.url}/files/upload", content=b"abc", headers=header)
        assert answer.status_code == 401
        assert "token" in answer.json()["detail"]


def test_multipart_assembles_parts_in_part_order(service: LocalFalService, http: httpx.Client) -> None:
    token = upload_token(http)
    auth = {"Authorization": f"Bearer {token['token']}", "X-Fal-File-Name": "big.wav",
            "Content-Type": "audio/wav"}
    started = httpx.post(f"{service.url}/files/upload/multipart", headers=auth)
    assert started.status_code == 200
    access_url, upload_id = started.json()["access_url"], started.json()["uploadId"]
    assert httpx.get(access_url).status_code == 404  # not there until complete
    parts = [bytes([n]) * (40_000 + n) for n in range(1, 4)]
    etags = {}
    for number in (3, 1, 2):  # sent out of order
        put = httpx.put(f"{access_url}/multipart/{upload_id}/{number}", content=parts[number - 1],
                        headers=auth | {"Accept-Encoding": "identity"})
        assert put.status_code == 200
        etags[number] = put.headers["etag"]
    assert len(set(etags.values())) == 3 and all(etag.startswith('"') for etag in etags.values())
    listing = [{"partNumber": n, "etag": etags[n]} for n in (2, 3, 1)]
    done = httpx.post(f"{access_url}/multipart/{upload_id}/complete", json={"parts": listing},
                      headers={"Authorization": auth["Authorization"]})
    assert done.status_code == 204, done.text  # strict: no body (the official client never reads one)
    assert httpx.get(access_url).content == b"".join(parts)


def test_multipart_refuses_a_wrong_etag(service: LocalFalService, http: httpx.Client) -> None:
    token = upload_token(http)
    auth = {"Authorization": f"Bearer {token['token']}", "X-Fal-File-Name": "x.wav"}
    started = httpx.post(f"{service.url}/files/upload/multipart", headers=auth).json()
    base = f"{started['access_url']}/multipart/{started['uploadId']}"
    assert httpx.put(f"{base}/1", content=b"part one",
                     headers=auth | {"Accept-Encoding": "identity"}).status_code == 200
    bad = httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 1, "etag": '"0000"'}]}, headers=auth)
    assert bad.status_code == 400 and "etag" in bad.json()["detail"]
    missing = httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 2, "etag": "x"}]}, headers=auth)
    assert missing.status_code == 400 and "never uploaded" in missing.json()["detail"]
    assert httpx.put(f"{base}/1", content=b"x").status_code == 401


def test_a_part_sent_again_gets_a_new_etag_and_only_the_newest_completes(service: LocalFalService,
                                                                          http: httpx.Client) -> None:
    token = upload_token(http)
    auth = {"Authorization": f"Bearer {token['token']}", "X-Fal-File-Name": "again.wav"}
    started = httpx.post(f"{service.url}/files/upload/multipart", headers=auth).json()
    base = f"{started['access_url']}/multipart/{started['uploadId']}"
    identity = auth | {"Accept-Encoding": "identity"}
    first = httpx.put(f"{base}/1", content=b"first try", headers=identity).headers["etag"]
    second = httpx.put(f"{base}/1", content=b"second try", headers=identity).headers["etag"]
    assert first != second
    stale = httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 1, "etag": first}]}, headers=auth)
    assert stale.status_code == 400 and "etag" in stale.json()["detail"]
    done = httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 1, "etag": second}]}, headers=auth)
    assert done.status_code == 204
    assert httpx.get(started["access_url"]).content == b"second try"


@pytest.mark.parametrize("kernel", ["refuses", "absent"])
def test_multipart_joins_its_parts_where_the_kernel_cannot_copy(service: LocalFalService, http: httpx.Client,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                kernel: str) -> None:
    refused: list[object] = []
    if kernel == "absent":  # macOS: no copy_file_range
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:  # a file system (or an old kernel) that cannot copy between these files
        def refuse(*args: object) -> int:
            refused.append(args)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    token = upload_token(http)
    auth = {"Authorization": f"Bearer {token['token']}", "X-Fal-File-Name": "joined.wav"}
    started = httpx.post(f"{service.url}/files/upload/multipart", headers=auth).json()
    base = f"{started['access_url']}/multipart/{started['uploadId']}"
    parts = [np.random.default_rng(n).bytes(300_000 + n) for n in range(1, 5)]
    listing = [{"partNumber": n, "etag": httpx.put(f"{base}/{n}", content=parts[n - 1], headers=auth | {
        "Accept-Encoding": "identity"}).headers["etag"]} for n in range(1, 5)]
    assert httpx.post(f"{base}/complete", json={"parts": listing}, headers=auth).status_code == 204
    assert httpx.get(started["access_url"]).content == b"".join(parts)
    assert len(refused) == (4 if kernel == "refuses" else 0)


def test_unknown_file_is_404(service: LocalFalService) -> None:
    assert httpx.get(f"{service.url}/files/f/0123abcd/none.wav").status_code == 404


# -- auth and validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), ({"Authorization": "Bearer abc"}, 401), ({"Authorization": "Key"}, 401),
    ({"Authorization": "Key wrong-key"}, 403),
])
def test_queue_and_token_calls_need_the_key(service: LocalFalService, headers: dict[str, str],
                                            status: int) -> None:
    calls = [("POST", SEPARATE), ("GET", "/fal-ai/sam-audio/requests/abc/status"),
             ("GET", "/fal-ai/sam-audio/requests/abc"), ("PUT", "/fal-ai/sam-audio/requests/abc/cancel"),
             ("POST", "/storage/auth/token")]
    for method, path in calls:
        answer = httpx.request(method, f"{service.url}{path}", headers=headers, json={})
        assert answer.status_code == status, (method, path)
        detail = answer.json()["detail"]
        assert detail == "Invalid key" if status == 403 else detail.startswith("Missing authorization header")
        assert "wrong-key" not in answer.text
    assert service.stats()["submits"] == 0


def test_any_key_works_when_none_is_configured() -> None:
    with LocalFalService() as svc:
        answer = httpx.post(f"{svc.url}/storage/auth/token", json={},
                            headers={"Authorization": "Key anything"})
        assert answer.status_code == 200


@pytest.mark.parametrize(("payload", "field", "error_type"), [
    ({"prompt": "bass"}, "audio_url", "missing"),
    ({"audio_url": 5, "prompt": "bass"}, "audio_url", "string_type"),
    ({"audio_url": "data:,", "prompt": ""}, "prompt", "string_too_short"),
    ({"audio_url": "data:,", "prompt": "   "}, "prompt", "value_error"),
    ({"audio_url": "data:,"}, "prompt", "missing"),
    ({"audio_url": "data:,", "prompt": "x", "reranking_candidates": 0}, "reranking_candidates",
     "greater_than_equal"),
    ({"audio_url": "data:,", "prompt": "x", "acceleration": "turbo"}, "acceleration", "literal_error"),
    ({"audio_url": "data:,", "prompt": "x", "output_format": "flac"}, "output_format", "literal_error"),
    ({"audio_url": "data:,", "prompt": "x", "max_chunk_duration": 0}, "max_chunk_duration", "greater_than"),
    ({"audio_url": "data:,", "prompt": "x", "chunk_overlap": -1}, "chunk_overlap", "greater_than_equal"),
])
def test_invalid_input_is_422_in_fals_shape(service: LocalFalService, http: httpx.Client,
                                            payload: dict[str, Any], field: str, error_type: str) -> None:
    answer = http.post(SEPARATE, json=payload)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert isinstance(detail, list) and len(detail) == 1
    assert detail[0]["loc"] == ["body", field]
    assert detail[0]["type"] == error_type and detail[0]["msg"]
    assert service.stats()["submits"] == 0


def test_span_separate_validates_spans(service: LocalFalService, http: httpx.Client) -> None:
    url = "/fal-ai/sam-audio/span-separate"
    assert http.post(url, json={"audio_url": "data:,"}).json()["detail"][0]["loc"] == ["body", "spans"]
    empty = http.post(url, json={"audio_url": "data:,", "spans": []})
    assert empty.json()["detail"][0]["type"] == "too_short"
    reversed_span = http.post(url, json={"audio_url": "data:,", "spans": [{"start": 2, "end": 1}]})
    assert reversed_span.status_code == 422
    assert reversed_span.json()["detail"][0]["loc"] == ["body", "spans", 0]
    assert http.post(SEPARATE, content=b"{not json").json()["detail"][0]["type"] == "json_invalid"


# -- the queue ---------------------------------------------------------------------------------------


def test_submit_status_result_round_trip(service: LocalFalService, http: httpx.Client) -> None:
    accepted = submit(http, {"audio_url": data_uri(wav_bytes()), "prompt": "bass"})
    request_id = accepted["request_id"]
    base = f"{service.url}/fal-ai/sam-audio/requests/{request_id}"
    assert accepted["status"] == "IN_QUEUE" and accepted["queue_position"] == 0
    assert (accepted["status_url"], accepted["response_url"], accepted["cancel_url"]) == (
        f"{base}/status", base, f"{base}/cancel")
    final = wait_completed(http, accepted["status_url"])
    assert final["request_id"] == request_id and final["status_url"] == accepted["status_url"]
    assert "error" not in final and final["metrics"]["inference_time"] >= 0
    messages = [line["message"] for line in final["logs"]]
    assert messages[0] == "Loading audio (0.5 s, 1 ch, 48000 Hz)"
    assert "Separating 'bass' chunk 1/1" in messages and messages[-1] == "Done"
    assert all(set(line) == {"timestamp", "level", "source", "message"} for line in final["logs"])
    assert http.get(accepted["status_url"]).json()["logs"] is None  # only with ?logs=1
    result = http.get(accepted["response_url"])
    assert result.status_code == 200
    output = result.json()
    assert output["sample_rate"] == 48000 and output["duration"] == pytest.approx(0.5)
    for stem in ("target", "residual"):
        meta = output[stem]
        downloaded = httpx.get(meta["url"])
        assert len(downloaded.content) == meta["file_size"]
        assert meta["content_type"] == "audio/wav" and meta["file_name"] == f"{stem}.wav"
        assert sf.info(io.BytesIO(downloaded.content)).frames == 24000
    assert http.get(f"{service.url}/fal-ai/sam-audio/requests/ffff/status").status_code == 404
    assert http.get(f"{service.url}/fal-ai/sam-audio/requests/ffff").status_code == 404


def test_queue_positions_and_logs_while_running() -> None:
    with LocalFalService(key=TEST_KEY, job_time=0.6, concurrency=1) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30) as client:
        audio = data_uri(wav_bytes())
        jobs = [submit(client, {"audio_url": audio, "prompt": "piano 0"})]
        assert jobs[0]["queue_position"] == 0
        deadline = time.monotonic() + 10
        while (first := client.get(jobs[0]["status_url"], params={"logs": 1})).json()["status"] == "IN_QUEUE":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert first.status_code == 202
        jobs += [submit(client, {"audio_url": audio, "prompt": f"piano {n}"}) for n in (1, 2)]
        assert [job["queue_position"] for job in jobs[1:]] == [0, 1]
        deadline = time.monotonic() + 10
        while not first.json()["logs"]:
            assert time.monotonic() < deadline
            first = client.get(jobs[0]["status_url"], params={"logs": 1})
        assert first.json()["logs"][0]["message"].startswith("Loading audio")
        waiting = [client.get(job["status_url"]) for job in jobs[1:]]
        assert [w.status_code for w in waiting] == [202, 202]
        assert [w.json()["status"] for w in waiting] == ["IN_QUEUE", "IN_QUEUE"]
        assert [w.json()["queue_position"] for w in waiting] == [0, 1]
        assert client.get(jobs[0]["response_url"]).json() == {"detail": "Request is still in progress"}
        for job in jobs:
            wait_completed(client, job["status_url"])
        stats = svc.stats()
        assert stats["max_running"] == 1 and stats["completed"] == 3 and stats["running"] == 0


def test_low_priority_jobs_wait_behind_normal_ones() -> None:
    with LocalFalService(key=TEST_KEY, job_time=0.5, concurrency=1) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30) as client:
        audio = data_uri(wav_bytes())
        submit(client, {"audio_url": audio, "prompt": "a"})
        low = submit(client, {"audio_url": audio, "prompt": "b"}, **{"X-Fal-Queue-Priority": "low"})
        normal = submit(client, {"audio_url": audio, "prompt": "c"})
        assert client.get(normal["status_url"]).json()["queue_position"] < \
            client.get(low["status_url"]).json()["queue_position"]
        client.put(low["cancel_url"])


def test_start_timeout_ends_a_queued_job_with_504() -> None:
    with LocalFalService(key=TEST_KEY, job_time=30, concurrency=1) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30) as client:
        audio = data_uri(wav_bytes())
        submit(client, {"audio_url": audio, "prompt": "a"})
        late = submit(client, {"audio_url": audio, "prompt": "b"}, **{"X-Fal-Request-Timeout": "0.2"})
        final = wait_completed(client, late["status_url"])
        assert final["error_type"] == "request_timeout"
        result = client.get(late["response_url"])
        assert result.status_code == 504
        assert result.headers["x-fal-request-timeout-type"] == "user"
        assert result.headers["x-fal-error-type"] == "request_timeout"


def test_status_stream_sends_one_event_per_change_and_pings() -> None:
    with LocalFalService(key=TEST_KEY, job_time=0.8, sse_ping_interval=0.1) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30) as client:
        job = submit(client, {"audio_url": data_uri(wav_bytes()), "prompt": "vocals"})
        events: list[dict[str, Any]] = []
        pings = 0
        with client.stream("GET", f"{job['status_url']}/stream", params={"logs": 1}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "text/event-stream"
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                elif line == ": ping":
                    pings += 1
        assert events[-1]["status"] == "COMPLETED" and events[-1]["logs"][-1]["message"] == "Done"
        assert all(event["request_id"] == job["request_id"] for event in events)
        assert "IN_PROGRESS" in [event["status"] for event in events]
        log_counts = [len(event["logs"]) for event in events]
        assert log_counts == sorted(log_counts)  # each event is a newer state, never a step back
        assert pings >= 1  # the job's 0.8 s wait outlasts the 0.1 s ping interval
        # A stream opened after completion answers once and closes.
        with client.stream("GET", f"{job['status_url']}/stream") as again:
            lines = [line for line in again.iter_lines() if line]
        assert len(lines) == 1 and json.loads(lines[0][6:])["status"] == "COMPLETED"


def test_cancel_queued_running_done_and_unknown() -> None:
    with LocalFalService(key=TEST_KEY, job_time=30, concurrency=1) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30) as client:
        audio = data_uri(wav_bytes())
        running = submit(client, {"audio_url": audio, "prompt": "a"})
        wait_for(lambda: client.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
                 what="the worker to take the first job")  # on a busy machine it may take a moment
        queued = submit(client, {"audio_url": audio, "prompt": "b"})
        third = submit(client, {"audio_url": audio, "prompt": "c"})
        assert client.get(third["status_url"]).json()["queue_position"] == 1
        answer = client.put(queued["cancel_url"])
        assert (answer.status_code, answer.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        assert client.get(third["status_url"]).json()["queue_position"] == 0  # the queue moved up
        cancelled = client.get(queued["status_url"]).json()
        assert cancelled["status"] == "COMPLETED" and cancelled["error_type"] == "client_cancelled"
        while client.get(running["status_url"]).json()["status"] != "IN_PROGRESS":
            time.sleep(0.01)
        assert client.put(running["cancel_url"]).status_code == 202
        final = wait_completed(client, running["status_url"], timeout=10)  # signalled, not 30 s later
        assert final["error_type"] == "client_cancelled"
        result = client.get(running["response_url"])
        assert result.status_code == 499 and result.json() == {"detail": "Request was cancelled"}
        again = client.put(running["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
        unknown = client.put(f"{svc.url}/fal-ai/sam-audio/requests/abcdef/cancel")
        assert (unknown.status_code, unknown.json()) == (404, {"status": "NOT_FOUND"})
        client.put(third["cancel_url"])
        stats = svc.stats()
        assert stats["cancels"] == 3 and stats["completed"] == 0


# -- counters, lifecycle -----------------------------------------------------------------------------


def test_submits_are_counted_by_audio_content(service: LocalFalService, http: httpx.Client) -> None:
    first, second = wav_bytes(freq=440), wav_bytes(freq=550)
    token = upload_token(http)
    uploaded = httpx.post(f"{service.url}/files/upload", content=first, headers={
        "Authorization": f"Bearer {token['token']}", "Content-Type": "audio/wav"}).json()["access_url"]
    jobs = [submit(http, {"audio_url": url, "prompt": "bass"})
            for url in (data_uri(first), uploaded, data_uri(second))]
    for job in jobs:
        wait_completed(http, job["status_url"])
    stats = service.stats()
    assert stats["submits"] == 3
    assert stats["submits_by_audio"] == {hashlib.sha256(first).hexdigest(): 2,
                                         hashlib.sha256(second).hexdigest(): 1}
    assert stats["calls"]["submit"] == 3 and stats["calls"]["token"] == 1 and stats["calls"]["upload"] == 1
    assert stats["completed"] == 3 and stats["max_running"] <= 2
    over_http = httpx.get(f"{service.url}/_local/stats").json()
    assert over_http["submits_by_audio"] == stats["submits_by_audio"]


def test_stop_ends_everything_and_leaves_no_thread(tmp_path: Any) -> None:
    before = set(threading.enumerate())
    svc = LocalFalService(key=TEST_KEY, job_time=60, concurrency=1, sse_ping_interval=0.05)
    svc.start()
    client = httpx.Client(base_url=svc.url, headers=KEY_AUTH, timeout=30)
    job = submit(client, {"audio_url": data_uri(wav_bytes()), "prompt": "bass"})
    submit(client, {"audio_url": data_uri(wav_bytes()), "prompt": "queued"})
    svc.faults.stall("status", seconds=60)
    outcome: list[BaseException] = []

    def follow(path: str) -> None:
        try:
            with httpx.Client(headers=KEY_AUTH, timeout=30) as own:
                if path.endswith("/stream"):
                    with own.stream("GET", path) as stream:
                        for _line in stream.iter_lines():
                            pass
                else:
                    own.get(path)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    followers = [threading.Thread(target=follow, args=(f"{job['status_url']}{suffix}",))
                 for suffix in ("/stream", "")]
    for thread in followers:
        thread.start()
    time.sleep(0.3)  # the stream is open, the stalled status call is waiting
    data_dir = svc.store.work_path().parent.parent
    svc.stop()
    for thread in followers:  # not kept for the 60 s of the job or the stall
        thread.join(timeout=10)
        assert not thread.is_alive()
    client.close()
    assert not data_dir.exists()  # the temp data dir is removed
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
    svc.stop()  # a second stop is harmless


def test_data_dir_is_kept_when_given(tmp_path: Any) -> None:
    with LocalFalService(key=TEST_KEY, data_dir=tmp_path) as svc, \
            httpx.Client(base_url=svc.url, headers=KEY_AUTH) as client:
        job = submit(client, {"audio_url": data_uri(wav_bytes()), "prompt": "bass"})
        wait_completed(client, job["status_url"])
    assert len(list((tmp_path / "files").iterdir())) == 2  # target and residual, still there
    assert list((tmp_path / "work").iterdir()) == []  # the decoded input and scratch files are gone


def test_refuses_a_non_loopback_host_unless_allowed() -> None:
    with pytest.raises(InputError, match="only listens on this computer"):
        LocalFalService(host="192.0.2.1")
    with pytest.raises(InputError, match="only listens on this computer"):
        LocalFalService(host="0.0.0.0")

"""Every fault the local fal service can inject, met by plain httpx calls on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from bridge.local_service import FAULT_KINDS, LocalFalService
from tests.conftest import TEST_KEY

KEY_AUTH = {"Authorization": f"Key {TEST_KEY}"}
SEPARATE = "/fal-ai/sam-audio/separate"


def wav_bytes(signal: np.ndarray, rate: int = 48000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(data).decode()


def noise(seconds: float, seed: int = 1) -> np.ndarray:
    return 0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 48000))


def run_job(client: httpx.Client, audio_url: str, prompt: str = "piano") -> dict[str, Any]:
    accepted = client.post(SEPARATE, json={"audio_url": audio_url, "prompt": prompt}).json()
    deadline = time.monotonic() + 30
    while (status := client.get(accepted["status_url"], params={"logs": 1}).json())["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    result = client.get(accepted["response_url"])
    return {"accepted": accepted, "status": status, "result": result}


def stems(result: httpx.Response) -> tuple[np.ndarray, np.ndarray]:
    output = result.json()
    target, _ = sf.read(io.BytesIO(httpx.get(output["target"]["url"]).content))
    residual, _ = sf.read(io.BytesIO(httpx.get(output["residual"]["url"]).content))
    return target, residual


@dataclass
class Scene:
    """A service with a finished job, an upload token and a file, so a call of any kind can be made."""

    svc: LocalFalService
    client: httpx.Client
    job: dict[str, Any]
    token: str
    file_url: str

    def call(self, kind: str, timeout: float = 30) -> httpx.Response:
        bearer = {"Authorization": f"Bearer {self.token}", "X-Fal-File-Name": "a.wav"}
        calls: dict[str, Callable[[], httpx.Response]] = {
            "token": lambda: self.client.post("/storage/auth/token", json={}, timeout=timeout),
            "upload": lambda: httpx.post(f"{self.svc.url}/files/upload", content=b"x" * 1000, headers=bearer,
                                         timeout=timeout),
            "multipart": lambda: httpx.post(f"{self.svc.url}/files/upload/multipart", headers=bearer,
                                            timeout=timeout),
            "storage": lambda: self.client.post("/storage/upload/initiate", params={"storage_type": "gcs"},
                                                json={"file_name": "a.wav", "content_type": "audio/wav"},
                                                timeout=timeout),
            "submit": lambda: self.client.post(SEPARATE, json={"audio_url": "data:,", "prompt": "x"},
                                               timeout=timeout),
            "status": lambda: self.client.get(self.job["status_url"], timeout=timeout),
            "stream": lambda: self.client.get(f"{self.job['status_url']}/stream", timeout=timeout),
            "result": lambda: self.client.get(self.job["response_url"], timeout=timeout),
            "cancel": lambda: self.client.put(self.job["cancel_url"], timeout=timeout),
            "download": lambda: httpx.get(self.file_url, timeout=timeout),
        }
        return calls[kind]()


NORMAL_STATUS = {"token": 200, "upload": 200, "multipart": 200, "storage": 200, "submit": 200, "status": 200,
                 "stream": 200, "result": 200, "cancel": 400, "download": 200}


@pytest.fixture
def scene(service: LocalFalService) -> Iterator[Scene]:
    with httpx.Client(base_url=service.url, headers=KEY_AUTH, timeout=30) as client:
        job = run_job(client, data_uri(wav_bytes(noise(0.5))))["accepted"]
        token = client.post("/storage/auth/token", json={}).json()["token"]
        file_url = httpx.post(f"{service.url}/files/upload", content=b"abc",
                              headers={"Authorization": f"Bearer {token}"}).json()["access_url"]
        yield Scene(service, client, job, token, file_url)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_fail_answers_fals_infra_error_then_recovers(scene: Scene, kind: str) -> None:
    calls_before = scene.svc.stats()["calls"].get(kind, 0)
    scene.svc.faults.fail(kind, status=503, times=2, answered_by="service")
    for _ in range(2):
        answer = scene.call(kind)
        assert answer.status_code == 503
        assert answer.headers["x-fal-error-type"] == "runner_scheduling_failure"
        assert answer.json()["error_type"] == "runner_scheduling_failure" and answer.json()["detail"]
        assert "x-fal-request-id" not in answer.headers  # an ingress error: the queue never saw it
    assert scene.call(kind).status_code == NORMAL_STATUS[kind]
    assert scene.svc.stats()["calls"][kind] == calls_before + 3


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_drop_closes_the_connection_without_an_answer(scene: Scene, kind: str) -> None:
    scene.svc.faults.drop(kind)
    with pytest.raises(httpx.RemoteProtocolError):
        scene.call(kind)
    assert scene.call(kind).status_code == NORMAL_STATUS[kind]


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_stall_outlasts_a_short_read_timeout(scene: Scene, kind: str) -> None:
    scene.svc.faults.stall(kind, seconds=0.4)
    with pytest.raises(httpx.ReadTimeout):
        scene.call(kind, timeout=0.1)
    assert scene.call(kind).status_code == NORMAL_STATUS[kind]


def test_stall_then_answers_normally(scene: Scene) -> None:
    scene.svc.faults.stall("status", seconds=0.2)
    answer = scene.call("status")
    assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED"


@pytest.mark.parametrize(("status", "error_type"), [(502, "runner_incomplete_response"),
                                                    (504, "request_timeout")])
def test_other_infra_errors(scene: Scene, status: int, error_type: str) -> None:
    scene.svc.faults.fail("result", status=status)
    answer = scene.call("result")
    assert answer.status_code == status
    assert answer.headers["x-fal-error-type"] == error_type == answer.json()["error_type"]


def test_rate_limit_carries_retry_after(scene: Scene) -> None:
    scene.svc.faults.fail("submit", status=429, retry_after=1.5)
    answer = scene.call("submit")
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1.5"
    assert isinstance(answer.json()["detail"], str)
    assert scene.svc.stats()["submits"] == 1  # only the scene's own job


def test_422_and_500_shapes(scene: Scene) -> None:
    scene.svc.faults.fail("submit", status=422, detail="Audio too long", field="audio_url")
    scene.svc.faults.fail("submit", status=500, detail="boom")
    first, second = scene.call("submit"), scene.call("submit")
    assert first.status_code == 422
    assert first.json() == {"detail": [{"loc": ["body", "audio_url"], "msg": "Audio too long",
                                        "type": "value_error"}]}
    assert (second.status_code, second.json()) == (500, {"detail": "boom"})
    assert "x-fal-error-type" not in second.headers


def test_lose_submit_answer_accepts_the_job_then_drops(scene: Scene) -> None:
    scene.svc.faults.lose_submit_answer()
    refused = scene.client.post(SEPARATE, json={"prompt": "no audio"})
    assert refused.status_code == 422  # nothing accepted: answered, and the fault waits for a real submit
    with pytest.raises(httpx.RemoteProtocolError):
        scene.client.post(SEPARATE, json={"audio_url": data_uri(wav_bytes(noise(0.2))), "prompt": "x"})
    deadline = time.monotonic() + 10
    while scene.svc.stats()["completed"] < 2:  # the lost-answer job runs to the end anyway
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert scene.svc.stats()["submits"] == 2


def test_fail_job_completes_with_the_error(scene: Scene) -> None:
    scene.svc.faults.fail_job(message="CUDA error: out of memory")
    failed = run_job(scene.client, data_uri(wav_bytes(noise(0.3))))
    assert failed["status"]["error"] == "CUDA error: out of memory"
    assert failed["status"]["error_type"] == "runner_error"
    assert failed["status"]["logs"][-1]["level"] == "ERROR"
    assert failed["result"].status_code == 500
    assert failed["result"].json() == {"detail": "CUDA error: out of memory"}
    assert failed["result"].headers["x-fal-request-id"] == failed["accepted"]["request_id"]
    assert run_job(scene.client, data_uri(wav_bytes(noise(0.3))))["result"].status_code == 200
    assert scene.svc.stats()["failed"] == 1


def test_fail_job_after_some_jobs_lets_those_run_first(scene: Scene) -> None:
    scene.svc.faults.fail_job(message="step two broke", after=1)
    first = run_job(scene.client, data_uri(wav_bytes(noise(0.3))))
    second = run_job(scene.client, data_uri(wav_bytes(noise(0.3))))
    assert first["result"].status_code == 200 and "error" not in first["status"]
    assert second["status"]["error"] == "step two broke"
    assert run_job(scene.client, data_uri(wav_bytes(noise(0.3))))["result"].status_code == 200


def test_expire_files_makes_issued_urls_404(scene: Scene) -> None:
    done = run_job(scene.client, data_uri(wav_bytes(noise(0.3))))
    target_url = done["result"].json()["target"]["url"]
    assert httpx.get(target_url).status_code == 200
    scene.svc.faults.expire_files()
    assert httpx.get(target_url).status_code == 404
    assert httpx.get(scene.file_url).status_code == 404
    failed = run_job(scene.client, scene.file_url)  # a job reading an expired upload
    assert failed["status"]["error_type"] == "bad_request" and "404" in failed["status"]["error"]
    assert failed["result"].status_code == 422
    assert failed["result"].json()["detail"][0]["loc"] == ["body", "audio_url"]
    fresh = httpx.post(f"{scene.svc.url}/files/upload", content=b"new",
                       headers={"Authorization": f"Bearer {scene.token}"}).json()["access_url"]
    assert httpx.get(fresh).content == b"new"  # files issued later still work


@pytest.mark.parametrize("shift", [37, -23])
def test_shift_result_moves_stems_by_whole_samples(scene: Scene, shift: int) -> None:
    audio = data_uri(wav_bytes(noise(1.0, seed=5)))
    base_target, base_residual = stems(run_job(scene.client, audio)["result"])
    scene.svc.faults.shift_result(shift)
    shifted_target, shifted_residual = stems(run_job(scene.client, audio)["result"])
    assert len(shifted_target) == len(base_target) == 48000
    for base, shifted in ((base_target, shifted_target), (base_residual, shifted_residual)):
        if shift > 0:
            np.testing.assert_allclose(shifted[shift:], base[:-shift], atol=1e-6)
            assert not shifted[:shift].any()
        else:
            np.testing.assert_allclose(shifted[:shift], base[-shift:], atol=1e-6)
            assert not shifted[shift:].any()
    scene.svc.faults.clear()
    again, _ = stems(run_job(scene.client, audio)["result"])
    np.testing.assert_array_equal(again, base_target)


def test_unrelated_result_is_noise_once(scene: Scene) -> None:
    audio = data_uri(wav_bytes(noise(1.0, seed=7)))
    base, _ = stems(run_job(scene.client, audio)["result"])
    scene.svc.faults.unrelated_result(times=1)
    odd, odd_residual = stems(run_job(scene.client, audio)["result"])
    assert len(odd) == len(base) and np.std(odd) > 0.01
    correlation = np.corrcoef(odd, base)[0, 1]
    assert abs(correlation) < 0.1
    assert abs(np.corrcoef(odd + odd_residual, noise(1.0, seed=7))[0, 1]) < 0.1
    normal, _ = stems(run_job(scene.client, audio)["result"])
    np.testing.assert_array_equal(normal, base)


def test_drift_result_stretches_time(scene: Scene) -> None:
    click = np.zeros(2 * 48000)
    click[72000] = 0.9
    scene.svc.faults.drift_result(1000.0)  # 0.1 % fast
    target, residual = stems(run_job(scene.client, data_uri(wav_bytes(click)))["result"])
    assert abs(len(target) - 96096) <= 1
    assert abs(int(np.argmax(np.abs(target + residual))) - 72072) <= 1


def test_faults_over_http(scene: Scene) -> None:
    url = f"{scene.svc.url}/_local/faults"
    status_calls = scene.svc.stats()["calls"]["status"]
    assert httpx.post(url, json={"action": "fail", "kind": "status", "status": 503, "times": 1}).json() == {
        "ok": True}
    assert scene.call("status").status_code == 503
    assert httpx.post(url, json={"action": "drop", "kind": "status"}).status_code == 200
    assert httpx.post(url, json={"action": "clear"}).status_code == 200
    assert scene.call("status").status_code == 200  # cleared before it was used
    bad = httpx.post(url, json={"action": "explode"})
    assert bad.status_code == 400 and "unknown action" in bad.json()["detail"]
    assert httpx.post(url, json={"action": "fail", "kind": "nope"}).status_code == 400
    assert httpx.post(url, json={"action": "stall", "kind": "status", "sec": 1}).status_code == 400
    stats = httpx.get(f"{scene.svc.url}/_local/stats").json()
    assert stats["submits"] == 1 and stats["calls"]["status"] == status_calls + 2


def test_fault_arguments_are_checked(service: LocalFalService) -> None:
    with pytest.raises(ValueError, match="unknown call kind"):
        service.faults.fail("uplaod")
    with pytest.raises(ValueError, match="times"):
        service.faults.drop("status", times=0)
    with pytest.raises(ValueError, match="status"):
        service.faults.fail("status", status=200)

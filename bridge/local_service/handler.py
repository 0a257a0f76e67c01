"""HTTP routing of the local fal service: fal's queue, CDN storage, fal's GCS storage and the `/_local`
control endpoints.

Each call is counted by kind, then meets its injected fault (if any), then auth, then its handler.
Request bodies are always read to the end so keep-alive connections stay in step.

Strict mode (the default) enforces what fal's servers do, as the official Python client (`fal-client`
1.0.3, `client.py`: `MultipartUpload`, `_upload_via_storage`, `SyncClient`) shows it: a multipart part's
answer carries its ETag only when the PUT asked for `Accept-Encoding: identity` ("Keep this to ensure we
get ETag headers"); the complete POST must be JSON, and its answer has no body (the client never reads it);
every queue and REST call needs `Authorization: Key ...`, every CDN call the upload token.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from bridge.local_service.faults import FAULT_KINDS, CallFault, Faults, error_reply
from bridge.local_service.inputs import ENDPOINTS, InputRejected, parse_input, resolve_audio
from bridge.local_service.queue import APP_PATH, Job, JobQueue
from bridge.local_service.storage import FileStore, StorageError
from bridge.local_service.wire import COPY_CHUNK, BadRequestBody, BodyReader, Reply

log = logging.getLogger(__name__)

MAX_JSON_BODY = 1 << 30  # data URIs of long files are big; fal documents no limit
_FILE = r"/files/f/(?P<file_id>[0-9a-f]+)/(?P<name>[^/]+)"
_REQUEST = rf"/{APP_PATH}/requests/(?P<request_id>[0-9a-f]+)"


class ServiceState(Protocol):
    """What a request handler uses of the running service (the server gives itself)."""

    key: str | None
    strict: bool
    sse_ping_interval: float
    faults: Faults
    stopping: threading.Event

    @property
    def store(self) -> FileStore: ...
    @property
    def queue(self) -> JobQueue: ...
    def count_call(self, kind: str) -> None: ...
    def upload_body_started(self, at: float) -> None: ...
    def in_flight(self, kind: str) -> AbstractContextManager[None]: ...
    def stats(self) -> dict[str, Any]: ...


Route = tuple[str, str, str, str]  # (method, pattern, kind, auth: key | bearer | none)
ROUTES: list[Route] = [
    ("POST", r"/storage/auth/token", "token", "key"),
    ("POST", r"/files/upload", "upload", "bearer"),
    ("POST", r"/files/upload/multipart", "multipart", "bearer"),
    ("PUT", _FILE + r"/multipart/(?P<upload_id>[0-9a-f]+)/(?P<part>\d+)", "multipart", "bearer"),
    ("POST", _FILE + r"/multipart/(?P<upload_id>[0-9a-f]+)/complete", "multipart", "bearer"),
    ("POST", r"/storage/upload/initiate", "storage", "key"),
    ("PUT", r"/storage/signed/(?P<file_id>[0-9a-f]+)", "storage", "signed"),
    ("GET", _FILE, "download", "none"),
    ("HEAD", _FILE, "download", "none"),
    ("POST", rf"/{APP_PATH}/(?P<endpoint>{'|'.join(ENDPOINTS)})", "submit", "key"),
    ("GET", _REQUEST + r"/status", "status", "key"),
    ("GET", _REQUEST + r"/status/stream", "stream", "key"),
    ("GET", _REQUEST, "result", "key"),
    ("PUT", _REQUEST + r"/cancel", "cancel", "key"),
    ("GET", r"/_local/stats", "local", "none"),
    ("POST", r"/_local/faults", "local", "none"),
]
_COMPILED = [(method, re.compile(pattern + "/?"), kind, auth) for method, pattern, kind, auth in ROUTES]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections do not hold a thread forever
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    service: ServiceState  # set on the subclass the server makes

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_HEAD = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local fal: " + format, *args)  # request lines only: never headers (the key)

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            body = BodyReader(self.rfile, self.headers.get("Transfer-Encoding", ""),
                              self.headers.get("Content-Length"))
        except BadRequestBody as exc:
            self.close_connection = True
            self._send(Reply(400, {"detail": str(exc)}))
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            self._route(body, url.path, query)
        except BadRequestBody as exc:
            self.close_connection = True
            self._send(Reply(413 if "larger" in str(exc) else 400, {"detail": str(exc)}))
        except (ConnectionError, TimeoutError) as exc:
            log.debug("local fal: connection ended: %s", exc)
            self.close_connection = True

    def _route(self, body: BodyReader, path: str, query: dict[str, list[str]]) -> None:
        match = None
        for method, pattern, kind, auth in _COMPILED:
            found = pattern.fullmatch(path)
            if found and method == self.command:
                match = (found.groupdict(), kind, auth)
                break
        if match is None:
            body.drain()
            self._send(Reply(404, {"detail": "Not Found"}))
            return
        params, kind, auth = match
        fault: CallFault | None = None
        if kind in FAULT_KINDS:
            self.service.count_call(kind)
            fault = self.service.faults.take(kind)
        gateway = fault is not None and fault.action == "fail" and fault.answered_by == "gateway"
        if fault is not None and fault.action in ("fail", "drop") and not gateway:
            body.drain()
            if fault.action == "drop":
                self.close_connection = True
                return
            error = error_reply(fault)
            self._send(Reply(error.status, error.body, error.headers))
            return
        with self.service.in_flight(kind):
            reply = self._check_auth(auth) or self._handle(kind, params, query, body)
            body.drain()
            if kind in ("upload", "multipart", "storage") and body.first_byte_at is not None:
                self.service.upload_body_started(body.first_byte_at)  # when uploaded bytes began to arrive
            if fault is not None and fault.action == "stall" and self.service.stopping.wait(fault.seconds):
                self.close_connection = True
                return
        if gateway and fault is not None:  # carried out, but the answer lost behind a gateway's error
            error = error_reply(fault)
            reply = Reply(error.status, error.body, error.headers)
        if fault is not None and fault.action == "lose_answer":
            if reply.status == 200:
                self.close_connection = True
                return
            self.service.faults.give_back(fault)  # nothing was accepted: keep it for a real submit
        self._send(reply)

    def _check_auth(self, auth: str) -> Reply | None:
        header = self.headers.get("Authorization", "")
        if auth == "key":
            scheme, _, key = header.partition(" ")
            if scheme != "Key" or not key.strip():
                return Reply(401, {"detail": "Missing authorization header. Send 'Authorization: Key "
                                             "<your fal key>'."})
            expected = self.service.key
            if expected is not None and not hmac.compare_digest(key.strip().encode(), expected.encode()):
                return Reply(403, {"detail": "Invalid key"})
        elif auth == "bearer":
            scheme, _, token = header.partition(" ")
            if scheme != "Bearer" or not self.service.store.token_valid(token.strip()):
                return Reply(401, {"detail": "Invalid or expired upload token"})
        return None

    def _handle(self, kind: str, params: dict[str, str], query: dict[str, list[str]],
                body: BodyReader) -> Reply:
        store = self.service.store
        try:
            if kind == "token":
                return Reply(200, store.issue_token())
            if kind == "upload":
                record = store.save_upload(body.chunks(), self._file_name(), self._content_type())
                return Reply(200, {"access_url": store.url_for(record)})
            if kind == "multipart":
                return self._multipart(params, body)
            if kind == "storage":
                return self._signed_storage(params, query, body)
            if kind == "download":
                return self._download(params["file_id"])
            if kind == "submit":
                return self._submit(params["endpoint"], body)
            if kind == "local":
                return self._local(body)
            return self._request_call(kind, params["request_id"], query)
        except StorageError as exc:
            return Reply(exc.status, {"detail": exc.message})

    # -- storage ----------------------------------------------------------------------------------

    def _multipart(self, params: dict[str, str], body: BodyReader) -> Reply:
        store = self.service.store
        if "upload_id" not in params:
            record, upload_id = store.start_multipart(self._file_name(), self._content_type())
            return Reply(200, {"access_url": store.url_for(record), "uploadId": upload_id})
        if "part" in params:
            etag = store.save_part(params["file_id"], params["upload_id"], int(params["part"]), body.chunks())
            if self.service.strict and not self._asks_identity():
                return Reply(200, b"")  # behind a compressing edge the ETag is lost (fal-client's own comment)
            return Reply(200, b"", {"ETag": etag})
        if self.service.strict and self._content_type().split(";")[0].strip().lower() != "application/json":
            body.drain()
            return Reply(415, {"detail": "The complete request must be JSON (Content-Type: application/json)"})
        try:
            parts = json.loads(body.read_all(1 << 24) or b"{}").get("parts")
        except (ValueError, AttributeError):
            raise StorageError(400, 'the body must be JSON: {"parts": [{"partNumber", "etag"}]}') from None
        record = store.complete_multipart(params["file_id"], params["upload_id"], parts)
        if self.service.strict:
            return Reply(204)  # its answer is no part of the protocol: the official client never reads it
        return Reply(200, {"access_url": store.url_for(record)})

    def _asks_identity(self) -> bool:
        codings = [c.split(";")[0].strip().lower() for c in self.headers.get("Accept-Encoding", "").split(",")]
        return codings == ["identity"]

    def _signed_storage(self, params: dict[str, str], query: dict[str, list[str]], body: BodyReader) -> Reply:
        """fal's GCS flow: initiate (with the key) gives a signed upload URL and the file's URL; one PUT."""
        store = self.service.store
        if "file_id" in params:
            if self.headers.get("Authorization"):
                self.service.count_call("authorization_at_signed_url")  # a key sent where it does not belong
            signature = query.get("X-Goog-Signature", [""])[-1]
            store.save_signed_upload(params["file_id"], signature, body.chunks())
            return Reply(200, b"")
        if query.get("storage_type", [""])[-1] != "gcs":
            return Reply(400, {"detail": "storage_type must be gcs"})
        try:
            asked = json.loads(body.read_all(1 << 16) or b"null")
            name, content_type = str(asked["file_name"]), str(asked["content_type"])
        except (ValueError, TypeError, KeyError):
            return Reply(422, {"detail": [{"loc": ["body"], "msg": "file_name and content_type are required",
                                           "type": "missing"}]})
        record, signature = store.start_signed_upload(name, content_type)
        upload_url = f"{store.base_url}/storage/signed/{record.file_id}?X-Goog-Signature={signature}"
        return Reply(200, {"upload_url": upload_url, "file_url": store.url_for(record)})

    def _download(self, file_id: str) -> Reply:
        record = self.service.store.lookup(file_id)
        if record is None:
            return Reply(404, {"detail": "File not found"})
        headers = {"Content-Type": record.content_type, "Content-Length": str(record.size)}

        def send_file(handler: Handler) -> None:
            if handler.command == "HEAD":
                return
            with open(record.path, "rb") as source:
                while chunk := source.read(COPY_CHUNK):
                    handler.wfile.write(chunk)
            handler.wfile.flush()
            self.service.store.fetched(file_id)  # all of it went out: the request's files may go

        return Reply(200, None, headers, stream=send_file)

    def _file_name(self) -> str:
        return self.headers.get("X-Fal-File-Name", "") or "upload.bin"

    def _content_type(self) -> str:
        return self.headers.get("Content-Type", "") or "application/octet-stream"

    # -- queue ------------------------------------------------------------------------------------

    def _submit(self, endpoint: str, body: BodyReader) -> Reply:
        try:
            model_input = parse_input(endpoint, body.read_all(MAX_JSON_BODY))
        except InputRejected as exc:
            return Reply(422, {"detail": exc.detail})
        source = resolve_audio(model_input.audio_url, self.service.store)
        if model_input.audio_url.startswith("data:"):  # decoded to a file: do not keep megabytes of text
            model_input = model_input.model_copy(update={"audio_url": "data:(decoded)"})
        low = self.headers.get("X-Fal-Queue-Priority", "").strip().lower() == "low"
        job, position = self.service.queue.submit(endpoint, model_input, source, low_priority=low,
                                                  start_timeout=_seconds(self.headers.get("X-Fal-Request-Timeout")))
        urls = self.service.queue.urls(job.request_id)
        if (foreign := self.service.faults.foreign_base) is not None:
            urls = {name: value.replace(self.service.store.base_url, foreign) for name, value in urls.items()}
        answer = {**urls, "status": "IN_QUEUE", "queue_position": position}
        return Reply(200, answer, {"X-Fal-Request-Id": job.request_id})

    def _request_call(self, kind: str, request_id: str, query: dict[str, list[str]]) -> Reply:
        queue = self.service.queue
        headers = {"X-Fal-Request-Id": request_id}
        if kind == "cancel":
            status, answer = queue.cancel(request_id)
            return Reply(status, answer, headers)
        job = queue.find(request_id)
        if job is None:
            return Reply(404, {"detail": f"Request {request_id} not found"})
        with_logs = query.get("logs", ["0"])[-1].lower() in ("1", "true")
        if kind == "status":
            status, answer, _version = queue.status(job, with_logs)
            return Reply(status, answer, headers)
        if kind == "stream":
            headers |= {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                        "Transfer-Encoding": "chunked"}
            return Reply(200, None, headers, stream=lambda handler: handler._stream_status(job, with_logs))
        status, answer, extra = queue.result(job)
        return Reply(status, answer, headers | extra)

    def _stream_status(self, job: Job, with_logs: bool) -> None:
        """One `data:` event per change and a `: ping` comment every ping interval; ends after
        COMPLETED, or when the service stops."""
        queue, interval = self.service.queue, self.service.sse_ping_interval
        next_ping = time.monotonic() + interval
        while True:
            _code, answer, seen = queue.status(job, with_logs)
            self._write_chunk(f"data: {json.dumps(answer)}\n\n".encode())
            if answer["status"] == "COMPLETED":
                break
            while True:
                changed = queue.wait_for_change(job, seen, max(0.0, next_ping - time.monotonic()))
                if time.monotonic() >= next_ping:
                    self._write_chunk(b": ping\n\n")
                    next_ping = time.monotonic() + interval
                if changed:
                    break
                if self.service.stopping.is_set():
                    self.close_connection = True
                    return
        self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- control ----------------------------------------------------------------------------------

    def _local(self, body: BodyReader) -> Reply:
        if self.command == "GET":
            return Reply(200, self.service.stats())
        try:
            command = json.loads(body.read_all(1 << 20) or b"{}")
            if not isinstance(command, dict):
                raise ValueError("the body must be a JSON object with an 'action'")
            self.service.faults.apply(command)
        except ValueError as exc:
            return Reply(400, {"detail": str(exc)})
        return Reply(200, {"ok": True})

    # -- output -----------------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            payload = reply.body
        elif reply.body is None:
            payload = b""
        else:
            payload = json.dumps(reply.body).encode()
            reply.headers.setdefault("Content-Type", "application/json")
        self.send_response(reply.status)
        if reply.stream is None:
            reply.headers["Content-Length"] = str(len(payload))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.stream is not None:
            reply.stream(self)
        elif self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None

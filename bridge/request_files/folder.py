"""Request files: the way in for hosts without sockets (REAPER's Lua). A DAW script writes
`<name>.json` atomically into the requests folder; we answer with `<name>.status.json` beside it,
rewritten atomically at each stage. `<name>.cancel` cancels that request's job. A day after a request
was answered, it moves to `done/<date>/` with its status (`request_archive`).

A version of a request file (its mtime, size and content: `RequestVersion`) is one job for good: its
status file follows that job, a `sam-bridge retry` of it included; saving the file again cancels that job
and makes a new one. Daemons sharing the folder claim each version (`bridge.common.claims`, by size and
mtime), so one of them takes it.

This module knows folders and JSON, not HTTP or audio.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from bridge.common.claims import ClaimBackend, ClaimStore
from bridge.common.errors import BridgeError
from bridge.common.file_gate import FileSnapshot
from bridge.common.flags import FLAG_TEXT, WARNING, flag_kind, flags_in_words
from bridge.common.jobs import PAUSED_MESSAGE, JobEvent, JobSink, JobState, RequestRejected
from bridge.common.path_policy import PathPolicy, open_requests_folder
from bridge.common.redact import redact_any
from bridge.common.request import SeparationRequest
from bridge.common.stems import write_json_atomic
from bridge.request_files.archive import ARCHIVE_AFTER, archive_answered, archive_orphan_status
from bridge.request_files.parse import RequestVersion, parse_request_file, raw_tag, read_json, read_version

__all__ = ["STATUS_FIELDS", "RequestFolder", "parse_request_file", "status_path"]

log = logging.getLogger(__name__)

STATUS_SUFFIX = ".status.json"
STATUS_SCHEMA = 1
STATUS_FIELDS: dict[str, str] = {
    "schema": "status schema version (1)",
    "request": "the request file's name",
    "job_id": "the daemon's job id (null if the request was refused)",
    "tag": "the request's tag, echoed",
    "state": "queued, waiting, preparing, uploading, submitted, running, downloading, conforming, "
    "done, failed, cancelled",
    "progress": "0..1 over the whole job",
    "message": "what is happening, in words (`paused (daemon stopped)` while the daemon is not running)",
    "updated_at": "ISO-8601 UTC",
    "stems": "label → absolute path, in order (`target`, `residual`; stem sets: each stem, then `other`)",
    "manifest": "path of the `.sam.json` manifest when done",
    "error": "what went wrong and how to retry, when failed (`Cancelled` when cancelled)",
    "flags": flags_in_words(meanings=False) + " (each explained under the manifest's `flags`)",
    "warnings": "the `flags` that need a look, in order (the others are notes: the stems are right)",
    "flag_words": "each of the `flags` → what it means, in words (as `sam-bridge status` says it)",
    "eta_seconds": "seconds the job is expected to take still (null when unknown)",
    "estimate": "with `\"estimate_only\": true`: `seconds`, `requests`, `estimated_cost`, `currency`, "
    "`confirm_above`, `needs_confirmation` (and `whole_seconds`/`whole_cost` for an audition); state `done`, "
    "nothing sent (null otherwise)",
    "request_mtime_ns": "for the daemon: the version (modification time) of the request file this answers",
    "request_sha256": "for the daemon: with `request_mtime_ns`, that version's content hash (coarse file times "
    "can give two saves the same mtime)",
    "cancel_marker_mtime_ns": "for the daemon: the `.cancel` marker already acted on, if any",
}


ACTED_ON_MARKER = "cancel_marker_mtime_ns"  # internal: the cancel marker (its mtime) already acted on


def flag_fields(flags: tuple[str, ...]) -> dict[str, Any]:
    """A status file's `warnings` and `flag_words` for a job's flags: what is a warning and what each
    flag means, said here once, so a DAW script shows the daemon's words instead of keeping its own."""
    return {"warnings": [flag for flag in flags if flag_kind(flag) == WARNING],
            "flag_words": {flag: FLAG_TEXT[flag] for flag in flags if flag in FLAG_TEXT}}


def is_request_name(name: str) -> bool:
    return name.endswith(".json") and not name.endswith(STATUS_SUFFIX) and not name.startswith(".")


def status_path(request_file: Path) -> Path:
    return request_file.with_name(request_file.name[: -len(".json")] + STATUS_SUFFIX)


def cancel_marker(request_file: Path) -> Path:
    return request_file.with_name(request_file.name[: -len(".json")] + ".cancel")


class _Followed(NamedTuple):
    """The request file version a job answers: its events go to that file's status."""

    path: Path
    version: RequestVersion


PRUNE_INTERVAL = 3600.0  # seconds between clearing the claim markers of requests that are gone
UNREACHABLE_WARN_EVERY = 600.0  # seconds between warnings that the requests folder is still unreachable


class RequestFolder:
    """`instance_id` names this daemon in the folder's claim markers, so of several daemons sharing the
    folder one takes each request; keep it the same across restarts (the state folder), so a restarted
    daemon knows the requests it took as its own."""

    def __init__(self, sink: JobSink, folder: Path, rescan_interval: float = 5.0,
                 archive_after: float = ARCHIVE_AFTER, instance_id: str | None = None,
                 policy: PathPolicy | None = None, claims: ClaimBackend | None = None) -> None:
        """`policy`: the daemon's one door policy, applied when others can write into the folder."""
        self.sink, self.folder, self.rescan_interval = sink, folder, rescan_interval
        self._policy = policy or PathPolicy.from_roots()
        self._confined_to: PathPolicy | None = None  # decided at start, by who can write the folder
        self.archive_after = archive_after
        # marker files beside the requests, or the team database's claims when the daemon has one
        self._claims: ClaimBackend = claims or ClaimStore(instance_id or f"{socket.gethostname()}:{os.getpid()}")
        self._pruned_at = 0.0
        # job id -> the request version it answers; kept after the job ends, for `sam-bridge retry`
        self._jobs: dict[str, _Followed] = {}
        self._job_of: dict[Path, str] = {}  # request file -> the job its status file follows
        # cancel marker -> its mtime_ns when it was acted on (None: none was), read once per request
        self._markers_used: dict[Path, int | None] = {}
        # answered request -> (its version, when its final status was written): rescans parse no JSON
        self._answered: dict[Path, tuple[RequestVersion, float]] = {}
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        # monotonic time the folder could not be listed since (None: it can), and of the last warning
        self._unreachable_since: float | None = None
        self._warned_at = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._unsubscribe: Callable[[], None] = lambda: None
        self._lock = threading.RLock()  # held while a status file is written: one job's events in order

    def start(self) -> None:
        problem = open_requests_folder(self.folder)
        if problem is not None:  # a shared (NAS) folder: its requests may come from anyone
            self._confined_to = self._policy
            log.warning("requests folder %s: %s, so its requests may read and write only inside the allowed "
                        "folders, as OSC requests (make it private, chmod 700, to use paths anywhere)",
                        self.folder, problem)
        self._unsubscribe = self.sink.subscribe(self._on_event)
        self._observer = Observer()
        self._watch = self._observer.schedule(_Handler(self._queue), str(self.folder), recursive=False)
        self._observer.start()
        self._thread = threading.Thread(target=self._loop, name="request-files", daemon=True)
        self._thread.start()
        self._scan()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._unsubscribe()
        self._mark_paused()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def reachable(self) -> bool:
        """False while the requests folder cannot be listed (a network share dropped, renamed away)."""
        return self._unreachable_since is None

    def _scan(self) -> None:
        try:
            names = {path.name for path in self.folder.iterdir()}
        except OSError as exc:
            self._unreachable(exc)
            return
        if self._unreachable_since is not None:
            self._back()
        now = time.time()
        for name in sorted(names):
            if is_request_name(name) or name.endswith(".cancel"):
                self._queue.put(self.folder / name)
            elif name.endswith(STATUS_SUFFIX) and name[: -len(STATUS_SUFFIX)] + ".json" not in names:
                archive_orphan_status(self.folder / name, now, self.archive_after)
        if now - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = now
            self._claims.prune(self.folder)

    def _loop(self) -> None:
        next_scan = time.monotonic() + self.rescan_interval
        while not self._stop.is_set():
            try:
                path = self._queue.get(timeout=max(0.05, next_scan - time.monotonic()))
            except queue.Empty:
                try:
                    self._scan()  # events can be lost (overflow, network folders): look again
                except Exception:  # whatever it was, the next look tries again: this thread must not end
                    log.exception("requests folder %s could not be looked at", self.folder)
                next_scan = time.monotonic() + self.rescan_interval
                continue
            if path is None:
                return
            try:
                if path.name.endswith(".cancel"):
                    self._cancel(path)
                elif is_request_name(path.name):
                    self._take(path)
            except BridgeError as exc:  # the journal broke under us: the daemon says so once and stops
                log.debug("request file %s could not be handled: %s", path, exc.message)
            except Exception:
                log.exception("request file %s could not be handled", path)

    def _unreachable(self, exc: OSError) -> None:
        """The folder cannot be listed: said once (then every UNREACHABLE_WARN_EVERY), looked at again on
        the next rescan. Its requests wait; nothing else stops."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = self._warned_at = now
            log.warning("requests folder %s cannot be read (%s): its requests wait until it is back; "
                        "looking again every %g s", self.folder, exc, self.rescan_interval)
        elif now - self._warned_at >= UNREACHABLE_WARN_EVERY:
            self._warned_at = now
            log.warning("requests folder %s still cannot be read, for %.0f min now (%s)", self.folder,
                        (now - self._unreachable_since) / 60, exc)

    def _back(self) -> None:
        """The folder can be listed again: its change events are watched afresh (a watch dies with a
        folder deleted or a share unmounted; one that survived a rename is replaced, harmlessly)."""
        since, self._unreachable_since = self._unreachable_since, None
        observer = self._observer
        if observer is not None:
            if self._watch is not None:
                try:
                    observer.unschedule(self._watch)
                except Exception as exc:  # already gone with its folder
                    log.debug("requests folder watch: %s", exc)
                self._watch = None
            try:
                self._watch = observer.schedule(_Handler(self._queue), str(self.folder), recursive=False)
            except OSError as exc:
                log.warning("requests folder %s: its changes cannot be watched (%s); it is looked at every %g s",
                            self.folder, exc, self.rescan_interval)
        log.warning("requests folder %s can be read again (after %.0f s)", self.folder,
                    time.monotonic() - (since or time.monotonic()))

    # -- one request file -------------------------------------------------------------------------

    def _take(self, path: Path) -> None:
        found = read_version(path)
        if found is None:  # gone, or still changing: its next event or the rescan looks again
            return
        version, data = found
        answered = self._answered.get(path)
        if answered is None or answered[0] != version:
            answered = self._answered_at(path, version)
        if answered is not None:
            if time.time() - answered[1] >= self.archive_after:
                self._answered.pop(path, None)
                self._unfollow(path)
                self._markers_used.pop(cancel_marker(path), None)
                archive_answered(path, status_path(path), answered[1])
            return
        with self._lock:
            job_id = self._job_of.get(path)
            if job_id is not None and self._jobs[job_id].version == version:
                return  # taken already: its events keep the status file current
        self._supersede(path, version, job_id)
        if self._ours_from_before(path, version):  # whatever our id was then (a renamed host)
            self._answer(path, version, data)
            return
        outcome = self._claims.try_claim(path, FileSnapshot(version.size, version.mtime_ns))
        if outcome.claim is None and outcome.done_by != self._claims.instance_id:
            log.debug("request file %s is taken by %s", path.name, outcome.done_by or outcome.holder)
            return
        try:
            self._answer(path, version, data)
        except BaseException:
            if outcome.claim is not None:
                self._claims.release(outcome.claim)  # not answered: the next look (ours or another's) tries again
            raise
        if outcome.claim is not None:
            self._claims.mark_done(outcome.claim)  # answered: its job lives in our journal from now on

    def _ours_from_before(self, path: Path, version: RequestVersion) -> bool:
        """Whether this version of the request has a job in our own journal (taken before a restart):
        ours to follow and to cancel, whatever the claim markers say."""
        status = read_json(status_path(path)) or {}
        job_id = status.get("job_id")
        return isinstance(job_id, str) and version.answers(status) and self.sink.get(job_id) is not None

    def _answer(self, path: Path, version: RequestVersion, data: bytes | None) -> None:
        """Submit this version of the request (`data`: the bytes it was read from; the engine hands back
        the job it already has for it)."""
        earlier = read_json(status_path(path)) or {}
        has_job = isinstance(earlier.get("job_id"), str) and version.answers(earlier)
        cancel_asked = self._cancel_asked(path, version)
        if cancel_asked and not has_job:  # cancelled before it was taken: nothing is sent
            self._write_status(path, version, None, raw_tag(path), JobState.cancelled, 0.0,
                               "Cancelled before it was sent", error="Cancelled")
            return
        if has_job and self.sink.get(str(earlier["job_id"])) is not None:
            # taken before a restart (perhaps by a sam-bridge whose idempotency key named the version by its
            # mtime alone): follow that job, never send the version again
            self._follow(path, version, str(earlier["job_id"]), write=True)
            if cancel_asked and self.sink.cancel(str(earlier["job_id"])):
                log.info("cancelled job %s (%s)", earlier["job_id"], cancel_marker(path).name)
            return
        try:
            request = parse_request_file(path, version, self._confined_to, data)
        except BridgeError as exc:
            self._write_status(path, version, None, "", JobState.failed, 0.0, exc.message, error=str(exc))
            return
        if request.estimate_only:
            self._answer_estimate(path, version, request)
            return
        try:
            job_id = self.sink.submit(request)
        except (BridgeError, RequestRejected) as exc:
            self._write_status(path, version, None, request.tag, JobState.failed, 0.0, str(exc).split("\n")[0],
                               error=str(exc))
            return
        self._follow(path, version, job_id, write=True)
        log.info("request file %s → job %s", path.name, job_id)
        if cancel_asked and self.sink.cancel(job_id):
            log.info("cancelled job %s (%s)", job_id, cancel_marker(path).name)

    def _answer_estimate(self, path: Path, version: RequestVersion, request: SeparationRequest) -> None:
        """`"estimate_only": true`: the status file says what the request would send and cost."""
        try:
            found = self.sink.estimate(request)
        except (BridgeError, RequestRejected) as exc:
            self._write_status(path, version, None, request.tag, JobState.failed, 0.0, str(exc).split("\n")[0],
                               error=str(exc))
            return
        self._write_status(path, version, None, request.tag, JobState.done, 1.0,
                           f"Estimate (nothing was sent): {found.line()}",
                           estimate={**found.model_dump(), "needs_confirmation": found.needs_confirmation})

    def _mark_paused(self) -> None:
        """The daemon stops: every unfinished job it follows says so in its status file (it resumes on the
        next start), instead of its last running message that would never change."""
        with self._lock:
            for job_id, followed in list(self._jobs.items()):
                if self._job_of.get(followed.path) != job_id:
                    continue
                view = self.sink.get(job_id)
                if view is None or view.state.finished:
                    continue
                try:
                    self._write_status(followed.path, followed.version, job_id, view.tag, view.state, view.progress,
                                       PAUSED_MESSAGE)
                except OSError as exc:  # the folder is gone: nothing to tell there
                    log.warning("could not mark %s paused: %s", followed.path.name, exc)

    def _supersede(self, path: Path, version: RequestVersion, job_id: str | None) -> None:
        """The request file was saved again: the job of its earlier version is cancelled (at the service
        too), and its events no longer reach the status file."""
        if job_id is None:  # not followed since a restart: the status file names it
            status = read_json(status_path(path)) or {}
            if version.answers(status) or not isinstance(status.get("job_id"), str):
                return
            job_id = str(status["job_id"])
        self._unfollow(path)
        if self.sink.cancel(job_id):
            log.info("request file %s was saved again: cancelled job %s of its earlier version", path.name, job_id)

    def _follow(self, path: Path, version: RequestVersion, job_id: str, *, write: bool) -> None:
        """From now on the job's events (a retry's too) go to this request's status file."""
        with self._lock:
            self._unfollow(path)
            self._jobs[job_id] = _Followed(path, version)
            self._job_of[path] = job_id
            view = self.sink.get(job_id) if write else None
            if view is not None:
                self._write_status(path, version, job_id, view.tag, view.state, view.progress, view.message,
                                   stems=view.stems, manifest=view.manifest, error=view.error)

    def _unfollow(self, path: Path) -> None:
        with self._lock:
            job_id = self._job_of.pop(path, None)
            if job_id is not None:
                self._jobs.pop(job_id, None)

    def _cancel_asked(self, path: Path, version: RequestVersion) -> bool:
        """A cancel marker not older than this version of the request, not acted on yet (rescans see
        every marker again; a job retried after its cancel must not be cancelled again, also after a
        restart: the status file keeps the marker it acted on)."""
        marker = cancel_marker(path)
        try:
            marker_mtime = marker.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if marker_mtime < version.mtime_ns or self._marker_acted_on(path) == marker_mtime:
            return False
        self._markers_used[marker] = marker_mtime
        return True

    def _marker_acted_on(self, path: Path) -> int | None:
        """The mtime of the request's cancel marker that was acted on, remembered or read back from the
        status file once (after a restart): every status write asks, so that read is not repeated."""
        marker = cancel_marker(path)
        if marker not in self._markers_used:
            acted_on = (read_json(status_path(path)) or {}).get(ACTED_ON_MARKER)
            self._markers_used[marker] = acted_on if isinstance(acted_on, int) else None
        return self._markers_used[marker]

    def _answered_at(self, path: Path, version: RequestVersion) -> tuple[RequestVersion, float] | None:
        """(version, when it ended) when this version of the request has its final status already."""
        status_file = status_path(path)
        status = read_json(status_file)
        if not isinstance(status, dict) or not version.answers(status) or status.get("state") not in (
                "done", "failed", "cancelled"):
            return None
        try:
            ended_at = status_file.stat().st_mtime
        except FileNotFoundError:
            return None
        self._answered[path] = (version, ended_at)
        if isinstance(status.get("job_id"), str):  # so a `sam-bridge retry` of it reaches this file
            self._follow(path, version, status["job_id"], write=False)
        return self._answered[path]

    def _cancel(self, marker: Path) -> None:
        request_file = marker.with_name(marker.name[: -len(".cancel")] + ".json")
        found = read_version(request_file)
        if found is None:
            return
        version = found[0]
        with self._lock:
            job_id = self._job_of.get(request_file)
            if job_id is None or self._jobs[job_id].version != version:
                return  # not taken yet: taking it sees the marker
        if self._cancel_asked(request_file, version) and self.sink.cancel(job_id):
            log.info("cancelled job %s (%s)", job_id, marker.name)

    def _on_event(self, event: JobEvent) -> None:
        with self._lock:
            followed = self._jobs.get(event.job_id)
            if followed is None:
                return
            if not event.state.finished:
                self._answered.pop(followed.path, None)  # running again (a retry): not answered now
            self._write_status(followed.path, followed.version, event.job_id, event.tag, event.state,
                               event.progress, event.message, stems=event.stems, manifest=event.manifest,
                               error=event.error, flags=event.flags, eta=event.eta)

    def _write_status(self, path: Path, version: RequestVersion, job_id: str | None, tag: str, state: JobState,
                      progress: float, message: str, *, stems: dict[str, str] | None = None,
                      manifest: str | None = None, error: str | None = None, flags: tuple[str, ...] = (),
                      eta: float | None = None, estimate: dict[str, Any] | None = None) -> None:
        """`version`: the version of the request this answers (the file may have been saved again since)."""
        write_json_atomic(status_path(path), redact_any({  # last guard: the key is in no status file
            "schema": STATUS_SCHEMA, "request": path.name, "job_id": job_id, "tag": tag, "state": state.value,
            "progress": round(progress, 4), "message": message,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stems": stems or {}, "manifest": manifest, "error": error, "flags": list(flags), **flag_fields(flags),
            "eta_seconds": None if eta is None else round(eta, 1),
            "estimate": estimate,
            "request_mtime_ns": version.mtime_ns, "request_sha256": version.sha256,
            ACTED_ON_MARKER: self._marker_acted_on(path),
        }))


class _Handler(FileSystemEventHandler):
    def __init__(self, target: queue.Queue[Path | None]) -> None:
        self.target = target

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "modified", "closed"):
            return
        where = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(where if isinstance(where, str) else where.decode())
        if is_request_name(path.name) or path.name.endswith(".cancel"):
            self.target.put(path)

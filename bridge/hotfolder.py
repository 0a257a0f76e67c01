"""Hot folders: export audio into a folder, stems appear — never early, never twice.

Watchdog events (one observer per folder; the polling observer for network drives) only say "look
at this path". A single worker thread decides: a file is taken once it has been quiet for the settle
window and passes the completeness gate (`bridge.file_gate`), then claimed across daemons
(`bridge.claims`), checked as audio, and submitted as a `SeparationRequest`. Events get lost (watcher
overflow, network drives, files that arrived while the daemon was down), so a periodic rescan notes
every file again; the in-memory records, the claim markers and the engine's idempotency keys make the
repetition harmless. Job outcomes come back as `JobEvent`s: a failure writes `<file>.error.txt`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from watchdog.events import EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from bridge.claims import Claim, ClaimStore
from bridge.errors import BridgeError, InputError
from bridge.file_gate import FileSnapshot, SettleState, can_open_exclusively, check_container
from bridge.hotfolder_names import (
    STATE_DIR_NAME,
    ManifestIndex,
    error_blocks_retry,
    error_file_for,
    hot_request,
    is_audio_candidate,
    is_excluded_dir,
    move_to_done,
    sidecar_age,
    source_for_error_file,
    write_error_file,
)
from bridge.jobs import JobEvent, JobSink, JobState, RequestRejected
from bridge.network_drives import network_filesystem_type

log = logging.getLogger(__name__)

_RETRY_AFTER_ENGINE_ERROR = 30.0  # seconds before a file the engine could not take is offered again
_CLAIM_PRUNE_INTERVAL = 600.0  # seconds between clean-ups of claim markers of vanished files


@dataclass(frozen=True)
class HotFolder:
    path: Path
    preset: str | None = None  # None: a parent whose subfolders are named after presets (hot/vocals/, …)
    output_dir: Path | None = None  # None: Stems/ beside the source
    recursive: bool = False
    polling: bool = False  # PollingObserver (network drives / SMB / NFS / cloud sync)
    settle_seconds: float = 2.0  # size+mtime unchanged this long before a file is taken
    after_success: Literal["keep", "move-to-done"] = "keep"


def default_hot_folder() -> Path:
    """`~/sam-bridge/hot`; the environment variable SAM_BRIDGE_HOT_DIR overrides it."""
    override = os.environ.get("SAM_BRIDGE_HOT_DIR")
    return Path(override).expanduser() if override else Path.home() / "sam-bridge" / "hot"


class _Status(StrEnum):
    submitted = "submitted"  # claimed and handed to the engine
    done = "done"  # finished here or elsewhere: never again for this file version
    failed = "failed"  # error file written: again only when it is deleted or the file saved again
    ignored = "ignored"  # not ours to take (claimed by a sibling's stems, …)


@dataclass
class _Record:
    snapshot: FileSnapshot
    status: _Status


@dataclass
class _Candidate:
    """A file seen but not yet taken: waiting to be quiet and complete."""

    path: Path
    settle: SettleState
    due: float
    incomplete_since: float | None = None


@dataclass
class _Taken:
    path: Path
    snapshot: FileSnapshot
    folder: HotFolder
    claim: Claim
    job_id: str = ""


@dataclass(frozen=True)
class _Route:
    folder: HotFolder
    root: Path
    subfolder: str | None  # parent folders: the preset subfolder's name; None for files in the root


@dataclass
class _Inbox:
    paths: list[tuple[Path, bool]] = field(default_factory=list)  # (path, is_directory)
    events: list[JobEvent] = field(default_factory=list)


class _EventForwarder(FileSystemEventHandler):
    """Turns watchdog events into "look at this path" notes; all decisions happen on the worker."""

    def __init__(self, watcher: HotFolderWatcher) -> None:
        self._watcher = watcher

    def _note(self, path: Path, is_directory: bool) -> None:
        self._watcher._note(path, is_directory)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # our own reads cause these
        if event.event_type == EVENT_TYPE_MOVED:
            self._note(Path(os.fsdecode(event.dest_path)), event.is_directory)
            return
        path = Path(os.fsdecode(event.src_path))
        if event.event_type == EVENT_TYPE_DELETED:
            source = source_for_error_file(path)
            if source is not None:  # error file deleted: the user asks for a retry
                self._note(source, False)
            return
        if event.is_directory and event.event_type != "created":
            return
        self._note(path, event.is_directory)


class HotFolderWatcher:
    def __init__(
        self,
        sink: JobSink,
        folders: Sequence[HotFolder],
        *,
        instance_id: str,
        rescan_interval: float = 30.0,
        claim_ttl: float = 120.0,
        preset_names: Callable[[], list[str]] | None = None,
        incomplete_report_after: float = 300.0,
    ) -> None:
        self._sink = sink
        self._folders = [(folder, folder.path.expanduser().resolve()) for folder in folders]
        self._claims = ClaimStore(instance_id, claim_ttl)
        self._rescan_interval = rescan_interval
        self._heartbeat_interval = max(0.05, min(claim_ttl / 4, 30.0))
        self._preset_source = preset_names or sink.preset_names
        self._known_presets: list[str] = []
        self._incomplete_report_after = incomplete_report_after
        self._lock = threading.Condition()
        self._inbox = _Inbox()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._observers: dict[Path, BaseObserver] = {}
        self._missing_reported: set[Path] = set()
        self._unsubscribe: Callable[[], None] | None = None
        # Worker-thread state only.
        self._candidates: dict[Path, _Candidate] = {}
        self._records: dict[Path, _Record] = {}
        self._taken: dict[Path, _Taken] = {}
        self._jobs: dict[str, Path] = {}
        self._own_outputs: set[Path] = set()
        self._manifests = ManifestIndex()
        self._next_claim_prune = 0.0
        self._output_dirs: set[Path] = {
            out.expanduser().resolve() for folder, _ in self._folders if (out := folder.output_dir)
        } - {root for _, root in self._folders}

    # ---- public API -------------------------------------------------------------------------------

    def start(self) -> None:
        """Watch every folder, then process the files already there (the worker's first rescan)."""
        if self._worker is not None:
            raise RuntimeError("HotFolderWatcher already started")
        self._unsubscribe = self._sink.subscribe(self._on_job_event)
        self._refresh_presets()
        self._start_observers()
        self._worker = threading.Thread(target=self._run, name="hotfolder-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop watching; joins the observers and the worker. Claims of running jobs stay (and expire)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join()
        for observer in self._observers.values():
            observer.stop()
        for observer in self._observers.values():
            observer.join()
        self._observers.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def ensure_preset_folders(self, names: Iterable[str]) -> None:
        """Create `<folder>/<preset>/` in every parent folder (never removes one: it may hold files)."""
        for folder, root in self._folders:
            if folder.preset is not None or not root.is_dir():
                continue
            for name in names:
                if name and not is_excluded_dir(name) and not any(sep in name for sep in "/\\:"):
                    with contextlib.suppress(OSError):
                        (root / name).mkdir(exist_ok=True)

    @property
    def folders(self) -> list[Path]:
        """The resolved folder paths being watched (for the daemon's start-up message)."""
        return [root for _, root in self._folders]

    # ---- threads feeding the worker ----------------------------------------------------------------

    def _note(self, path: Path, is_directory: bool) -> None:
        with self._lock:
            self._inbox.paths.append((path, is_directory))
            if len(self._inbox.paths) == 1:
                self._lock.notify()

    def _on_job_event(self, event: JobEvent) -> None:
        if not event.state.finished and not event.stems:
            return
        with self._lock:
            self._inbox.events.append(event)
            self._lock.notify()

    def _start_observers(self) -> None:
        for folder, root in self._folders:
            if root in self._observers:
                continue
            if not root.is_dir():
                if root == default_hot_folder().expanduser().resolve():
                    root.mkdir(parents=True, exist_ok=True)
                else:
                    if root not in self._missing_reported:
                        self._missing_reported.add(root)
                        log.warning("Hot folder %s is missing (drive not connected?); will look again", root)
                    continue
            fs_type = network_filesystem_type(root)
            if fs_type and not folder.polling:
                log.warning(
                    "Hot folder %s is on a network drive (%s): files saved from other computers may go "
                    "unnoticed until the next rescan. Set 'polling: true' for this folder.", root, fs_type
                )
            observer: BaseObserver
            if folder.polling:
                observer = PollingObserver(timeout=max(0.1, min(folder.settle_seconds / 2, 1.0)))
            else:
                observer = Observer()
            deep = folder.recursive or folder.preset is None
            observer.schedule(_EventForwarder(self), str(root), recursive=deep)
            observer.daemon = True
            observer.start()
            self._observers[root] = observer
            log.info("Watching hot folder %s%s", root, " (polling)" if folder.polling else "")

    # ---- the worker -------------------------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = 0.0
        next_heartbeat = time.monotonic() + self._heartbeat_interval
        while True:
            with self._lock:
                wake_at = min([next_rescan, next_heartbeat] + [c.due for c in self._candidates.values()])
                timeout = wake_at - time.monotonic()
                if timeout > 0 and not self._inbox.paths and not self._inbox.events and not self._stopping:
                    self._lock.wait(timeout)
                if self._stopping:
                    return
                inbox, self._inbox = self._inbox, _Inbox()
            now = time.monotonic()
            for event in inbox.events:
                self._guarded(self._on_event, event)
            for path, is_directory in inbox.paths:
                self._guarded(self._absorb, path, is_directory, now)
            if now >= next_rescan:
                self._guarded(self._rescan)
                next_rescan = time.monotonic() + self._rescan_interval
            if now >= next_heartbeat:
                self._guarded(self._heartbeat)
                next_heartbeat = time.monotonic() + self._heartbeat_interval
            for candidate in [c for c in self._candidates.values() if c.due <= time.monotonic()]:
                if not self._guarded(self._evaluate, candidate):
                    candidate.due = time.monotonic() + _RETRY_AFTER_ENGINE_ERROR  # never spin on it

    def _guarded(self, step: Callable[..., None], *args: object) -> bool:
        try:
            step(*args)
        except Exception:  # one bad file or folder must never stop the watcher
            log.exception("Hot folder: unexpected problem (continuing)")
            return False
        return True

    def _absorb(self, path: Path, is_directory: bool, now: float) -> None:
        if is_directory:
            route_root = self._route_dir(path)
            if route_root is not None:
                for file_path in self._walk(*route_root, start=path):
                    self._absorb(file_path, False, now)
            return
        candidate = self._candidates.get(path)
        if candidate is not None:
            # Snapshot now, so the settle window counts from the last write, not from the last check.
            snapshot = FileSnapshot.of(path)
            if snapshot is not None and candidate.settle.observe(snapshot, now):
                candidate.incomplete_since = None  # still being written: not "stuck unfinished"
            candidate.settle.activity(now)
            candidate.due = max(candidate.due, candidate.settle.settled_at(self._settle_of(path)))
            return
        route = self._route(path)
        snapshot = FileSnapshot.of(path) if route else None
        if route is None or snapshot is None or self._finished_here(path, snapshot):
            return
        settle = SettleState(snapshot, now)
        self._candidates[path] = _Candidate(path, settle, settle.settled_at(route.folder.settle_seconds))

    def _finished_here(self, path: Path, snapshot: FileSnapshot) -> bool:
        """True when this file version needs nothing more from us."""
        record = self._records.get(path)
        if record is None or record.snapshot != snapshot:
            return False
        if record.status is _Status.failed:
            return error_blocks_retry(path)
        return True

    def _evaluate(self, candidate: _Candidate) -> None:
        path, now = candidate.path, time.monotonic()
        route = self._route(path)
        snapshot = FileSnapshot.of(path)
        if route is None or snapshot is None or self._finished_here(path, snapshot):
            del self._candidates[path]
            return
        settle_seconds = route.folder.settle_seconds
        if candidate.settle.observe(snapshot, now):
            candidate.incomplete_since = None
        if now < candidate.settle.settled_at(settle_seconds):
            candidate.due = candidate.settle.settled_at(settle_seconds)
            return
        reason = self._incompleteness(path)
        if reason is None and FileSnapshot.of(path) != snapshot:
            reason = "it changed while being checked"
        if reason is not None:
            self._wait_for_completion(candidate, reason, settle_seconds, now)
            return
        del self._candidates[path]
        outcome_retry = self._take(path, snapshot, route)
        if outcome_retry is not None:
            self._candidates[path] = _Candidate(path, candidate.settle, time.monotonic() + outcome_retry)

    def _incompleteness(self, path: Path) -> str | None:
        """None when the file may be taken, else why not (yet)."""
        if not can_open_exclusively(path):
            return "another program still has it open"
        try:
            check = check_container(path)
        except OSError as exc:
            return f"it cannot be read yet ({exc.strerror or exc})"
        return None if check.ok else check.reason

    def _wait_for_completion(self, candidate: _Candidate, reason: str, settle: float, now: float) -> None:
        if candidate.incomplete_since is None:
            candidate.incomplete_since = now
            log.debug("Hot folder: %s is not complete yet: %s", candidate.path.name, reason)
        elif now - candidate.incomplete_since >= self._incomplete_report_after:
            del self._candidates[candidate.path]
            log.warning("Hot folder: %s still looks unfinished: %s", candidate.path, reason)
            self._fail(
                candidate.path,
                candidate.settle.snapshot,
                f"The file still looks unfinished after {self._incomplete_report_after:.0f} seconds: "
                f"{reason}.\nIf the export finished, the file may be damaged: export it again.",
            )
            return
        candidate.due = now + max(settle, 0.2)

    def _take(self, path: Path, snapshot: FileSnapshot, route: _Route) -> float | None:
        """Claim, check and submit one quiet, complete file. Returns seconds until a retry, or None."""
        if error_blocks_retry(path):
            self._records[path] = _Record(snapshot, _Status.failed)
            return None
        if path in self._own_outputs or self._manifests.owns(path):
            self._records[path] = _Record(snapshot, _Status.ignored)
            return None
        if sidecar_age(path) < route.folder.settle_seconds:
            return route.folder.settle_seconds  # the sidecar itself is still being written
        outcome = self._claims.try_claim(path, snapshot)
        if outcome.done_elsewhere:
            self._records[path] = _Record(snapshot, _Status.done)
            return None
        if outcome.claim is None:
            log.debug("Hot folder: %s is being handled by %s", path.name, outcome.holder)
            return outcome.recheck_after
        claim = outcome.claim
        # Between our checks and the claim, a sibling may have failed it or moved it to done/.
        if FileSnapshot.of(path) != snapshot or error_blocks_retry(path):
            self._claims.release(claim)
            return 0.0
        try:
            request = hot_request(
                path,
                snapshot,
                folder_preset=lambda: route.folder.preset or self._preset_for(route),
                output_dir=route.folder.output_dir,
                known_presets=self._known_presets,
            )
            if request.output_dir not in (None, path.parent, route.root):
                self._output_dirs.add(request.output_dir)  # never take our own output
            job_id = self._sink.submit(request)
        except (InputError, RequestRejected) as exc:  # the file's or its settings' fault
            self._fail(path, snapshot, str(exc), claim=claim)
            return None
        except Exception as exc:  # the engine is busy or shutting down: not the file's fault
            log.warning("Hot folder: could not queue %s, trying again later: %s", path.name, exc,
                        exc_info=not isinstance(exc, BridgeError))
            self._claims.release(claim)
            return _RETRY_AFTER_ENGINE_ERROR
        log.info("Hot folder: %s → job %s", path.name, job_id)
        self._records[path] = _Record(snapshot, _Status.submitted)
        self._taken[path] = _Taken(path, snapshot, route.folder, claim, job_id)
        self._jobs[job_id] = path
        view = self._sink.get(job_id)
        if view is not None and view.state.finished:  # e.g. done before a restart, per the journal
            self._finish(job_id, view.state, view.error or view.message, view.stems)
        return None

    def _preset_for(self, route: _Route) -> str | None:
        if route.subfolder is None:
            return None
        if not self._known_presets:
            return route.subfolder  # the engine judges the name
        for name in self._known_presets:
            if name.casefold() == route.subfolder.casefold():
                return name
        raise InputError(
            f'The folder "{route.subfolder}" is not named after a preset.',
            f"Move the file into one of the preset folders: {', '.join(self._known_presets)}.",
        )

    # ---- outcomes ---------------------------------------------------------------------------------

    def _on_event(self, event: JobEvent) -> None:
        for stem in event.stems.values():
            self._own_outputs.add(Path(stem).expanduser().resolve())
        if event.state.finished:
            self._finish(event.job_id, event.state, event.error or event.message, event.stems)

    def _finish(self, job_id: str, state: JobState, message: str | None, stems: dict[str, str]) -> None:
        path = self._jobs.pop(job_id, None)
        taken = self._taken.pop(path, None) if path is not None else None
        if path is None or taken is None:
            return  # not one of ours, or already handled
        for stem in stems.values():
            self._own_outputs.add(Path(stem).expanduser().resolve())
        if state is JobState.done:
            self._records[path] = _Record(taken.snapshot, _Status.done)
            self._claims.mark_done(taken.claim)
            error_file = error_file_for(path)
            if error_file.exists() and not error_blocks_retry(path):
                error_file.unlink(missing_ok=True)  # our own report of an earlier, now fixed failure
            if taken.folder.after_success == "move-to-done" and FileSnapshot.of(path) == taken.snapshot:
                moved = move_to_done(path)
                if moved is not None:
                    self._claims.forget_done(path, taken.snapshot)
                    log.info("Hot folder: moved %s to %s", path.name, moved.parent)
            return
        what = "The job was cancelled." if state is JobState.cancelled else (message or "The job failed.")
        self._fail(path, taken.snapshot, what, claim=taken.claim, job_id=job_id)

    def _fail(
        self, path: Path, snapshot: FileSnapshot, what: str, *, claim: Claim | None = None, job_id: str = ""
    ) -> None:
        """Error file first, then release the claim: a sibling daemon then sees the error file."""
        try:
            written = write_error_file(path, what, job_id or None)
            log.warning("Hot folder: %s failed; wrote %s", path.name, written.name)
        except OSError as exc:
            log.error("Hot folder: %s failed (%s); the error file could not be written: %s", path, what, exc)
        self._records[path] = _Record(snapshot, _Status.failed)
        if claim is not None:
            self._claims.release(claim)

    def _heartbeat(self) -> None:
        """Keep our claims alive and catch job outcomes whose events we missed."""
        for taken in list(self._taken.values()):
            if not self._claims.refresh(taken.claim):
                log.warning("Hot folder: lost the claim on %s to another sam-bridge", taken.path.name)
            view = self._sink.get(taken.job_id)
            if view is not None and view.state.finished:
                self._finish(taken.job_id, view.state, view.error or view.message, view.stems)

    # ---- folders ----------------------------------------------------------------------------------

    def _rescan(self) -> None:
        self._refresh_presets()
        self._start_observers()
        now, seen = time.monotonic(), set()
        prune_claims = now >= self._next_claim_prune  # reads every marker: not on every rescan
        if prune_claims:
            self._next_claim_prune = now + _CLAIM_PRUNE_INTERVAL
        for folder, root in self._folders:
            if not root.is_dir():
                continue
            for path in self._walk(folder, root, start=root, prune_claims=prune_claims):
                seen.add(path)
                if path not in self._candidates:
                    self._absorb(path, False, now)
        for path in [p for p in self._records if p not in seen]:
            del self._records[path]  # gone: forget it (a file saved there again is new)

    def _refresh_presets(self) -> None:
        try:
            self._known_presets = list(self._preset_source())
        except Exception as exc:
            log.debug("Hot folder: preset list unavailable: %s", exc)
            return
        self.ensure_preset_folders(self._known_presets)

    def _walk(self, folder: HotFolder, root: Path, start: Path, prune_claims: bool = False) -> Iterator[Path]:
        """Audio candidates under `start` that `folder` may take, skipping our own folders."""
        pending = [start]
        while pending:
            directory = pending.pop()
            if directory.name == STATE_DIR_NAME:
                continue
            try:
                with os.scandir(directory) as entries:
                    listing = list(entries)
            except OSError:
                continue
            if prune_claims and any(entry.name == STATE_DIR_NAME for entry in listing):
                self._claims.prune(directory)
            for entry in listing:
                path = Path(entry.path)
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        if self._route_dir(path) is not None:
                            pending.append(path)
                    elif entry.is_file() and self._route(path) is not None:
                        yield path

    def _route(self, path: Path) -> _Route | None:
        """Which folder may take `path`, and its preset subfolder; None when no folder may."""
        if not is_audio_candidate(path.name) or path in self._own_outputs:
            return None
        if any(path.is_relative_to(out) for out in self._output_dirs):
            return None
        best: _Route | None = None
        for folder, root in self._folders:
            if not path.is_relative_to(root) or (best and len(best.root.parts) > len(root.parts)):
                continue
            dirs = path.relative_to(root).parts[:-1]
            if any(is_excluded_dir(name) for name in dirs):
                continue
            if folder.preset is not None and (folder.recursive or not dirs):
                best = _Route(folder, root, None)
            elif folder.preset is None and (folder.recursive or len(dirs) <= 1):
                best = _Route(folder, root, dirs[0] if dirs else None)
        return best

    def _route_dir(self, directory: Path) -> tuple[HotFolder, Path] | None:
        """The folder whose walk should enter `directory`, if any."""
        if any(directory.is_relative_to(out) for out in self._output_dirs):
            return None
        for folder, root in sorted(self._folders, key=lambda item: -len(item[1].parts)):
            if not directory.is_relative_to(root):
                continue
            dirs = directory.relative_to(root).parts
            if any(is_excluded_dir(name) for name in dirs):
                return None
            max_depth = 0 if folder.preset is not None else 1
            if folder.recursive or len(dirs) <= max_depth:
                return folder, root
        return None

    def _settle_of(self, path: Path) -> float:
        route = self._route(path)
        return route.folder.settle_seconds if route else 0.0

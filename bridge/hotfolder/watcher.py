"""Hot folders: export audio into a folder, stems appear — never early, never twice.

Watchdog events (one observer per folder; the polling observer for network drives) only say "look
at this path". A single worker thread decides: a file is taken once it has been quiet for the settle
window and passes the completeness gate (`bridge.common.file_gate`), then claimed across daemons
(`bridge.common.claims`), checked as audio, and submitted as a `SeparationRequest`. Events get lost (watcher
overflow, network drives, files that arrived while the daemon was down), so a periodic rescan notes
every file again; the in-memory records, the claim markers and the engine's idempotency keys make the
repetition harmless. Job outcomes come back as `JobEvent`s: a failure writes `<file>.error.txt`.

Events also say when a file arrives (created, moved in) or leaves (deleted, moved away): a file the watcher
saw leave and come back is taken again (`bridge.hotfolder.jobs`), and a sidecar's events make its audio file
looked at again (a sidecar saved with other content makes a new version of the file).

This module holds the worker and its settle loop; `bridge.hotfolder.folder_watches` the observers (of the
folders, and of their parents, so that a folder made again is watched at once), `bridge.hotfolder.routes`
says which folder may take a path, `bridge.hotfolder.jobs` claims, submits and settles the outcomes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.common.claims import ClaimBackend, ClaimStore
from bridge.common.file_gate import (
    Completeness,
    ContainerCheck,
    FileSnapshot,
    SettleState,
    can_open_exclusively,
    check_container,
    ends_early,
    flac_length_unknown,
)
from bridge.common.jobs import JobEvent, JobSink
from bridge.common.path_policy import PathPolicy
from bridge.hotfolder.folder_watches import ARRIVED, LEFT, LOOK, FolderWatches
from bridge.hotfolder.jobs import RETRY_AFTER_ENGINE_ERROR, HotFolderJobs
from bridge.hotfolder.names import SIDECAR_SUFFIX, sources_of_sidecar
from bridge.hotfolder.routes import FolderRoutes, HotFolder

__all__ = ["HotFolder", "HotFolderWatcher", "default_hot_folder"]

log = logging.getLogger(__name__)

_CLAIM_PRUNE_INTERVAL = 600.0  # seconds between clean-ups of claim markers of vanished files
UNCHECKED_SETTLE_FACTOR = 3.0  # settle multiplier for formats with nothing in the file that shows it complete
# a WAV with its sizes unfilled is either written to a pipe (done) or still being written by a program that
# patches them at the end (ffmpeg to a file): no header check can tell, so it waits longer still
STREAMED_SETTLE_FACTOR = 10.0
FOLDER_LOOK_INTERVAL = 1.0  # seconds between the worker's own looks at the folders (a stat each)
_DEPARTED_KEPT = 10_000  # files seen leaving, remembered until they come back (the oldest forgotten first)


def default_hot_folder() -> Path:
    """`~/sam-bridge/hot`; the environment variable SAM_BRIDGE_HOT_DIR overrides it."""
    override = os.environ.get("SAM_BRIDGE_HOT_DIR")
    return Path(override).expanduser() if override else Path.home() / "sam-bridge" / "hot"


@dataclass
class _Candidate:
    """A file seen but not yet taken: waiting to be quiet and complete."""

    path: Path
    settle: SettleState
    due: float
    incomplete_since: float | None = None
    arrived_at: float | None = None  # wall clock: when the watcher saw it arrive (created, moved in), if it did


@dataclass
class _Inbox:
    paths: list[tuple[Path, bool, str]] = field(default_factory=list)  # (path, is_directory, LOOK/ARRIVED/LEFT)
    events: list[JobEvent] = field(default_factory=list)


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
        policy: PathPolicy | None = None,
        claims: ClaimBackend | None = None,
    ) -> None:
        """`policy`: the daemon's one door policy; by default the home folder, the hot folders and
        their configured output folders."""
        self._sink = sink
        self._routes = FolderRoutes(folders)
        self._claims: ClaimBackend = claims or ClaimStore(instance_id, claim_ttl)  # or the team database's
        if policy is None:
            own = [f.path for f in folders]
            outputs = [f.output_dir for f in folders if f.output_dir is not None]
            policy = PathPolicy.from_roots((Path.home(), *own), (Path.home(), *own, *outputs))
        self._jobs = HotFolderJobs(sink, self._claims, self._routes, policy)
        self._rescan_interval = rescan_interval
        self._heartbeat_interval = max(0.05, min(claim_ttl / 4, 30.0))
        self._preset_source = preset_names or sink.preset_names
        self._incomplete_report_after = incomplete_report_after
        self._lock = threading.Condition()
        self._inbox = _Inbox()
        self._stopping = False
        self._worker: threading.Thread | None = None
        # watchdog's threads call the note through the watcher, so that it stays the one way in
        self._watches = FolderWatches(self._routes, lambda path, is_dir, kind: self._note(path, is_dir, kind))
        self._unsubscribe: Callable[[], None] | None = None
        # Worker-thread state only.
        self._candidates: dict[Path, _Candidate] = {}
        self._next_claim_prune = 0.0
        self._departed: dict[Path, None] = {}  # files seen leaving (oldest first): back again, they arrived
        self._prune_soon: set[Path] = set()  # folders a file left: its claim markers go (it may come back)

    # ---- public API -------------------------------------------------------------------------------

    def start(self) -> None:
        """Watch every folder, then process the files already there (the worker's first rescan)."""
        if self._worker is not None:
            raise RuntimeError("HotFolderWatcher already started")
        self._unsubscribe = self._sink.subscribe(self._on_job_event)
        self._refresh_presets()
        self._watches.watch(create=default_hot_folder().expanduser().resolve())
        self._worker = threading.Thread(target=self._run, name="hotfolder-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop watching; joins the observers and the worker. Claims of running jobs stay (and expire)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join()
        self._watches.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def ensure_preset_folders(self, names: Iterable[str]) -> None:
        """Create `<folder>/<preset>/` in every parent folder (never removes one: it may hold files)."""
        self._routes.ensure_preset_folders(names)

    @property
    def folders(self) -> list[Path]:
        """The resolved folder paths being watched (for the daemon's start-up message)."""
        return [root for _, root in self._routes.folders]

    # ---- threads feeding the worker ----------------------------------------------------------------

    def _note(self, path: Path, is_directory: bool, kind: str = LOOK) -> None:
        with self._lock:
            self._inbox.paths.append((path, is_directory, kind))
            if len(self._inbox.paths) == 1:
                self._lock.notify()

    def _on_job_event(self, event: JobEvent) -> None:
        if not event.state.finished and not event.stems:
            return
        with self._lock:
            self._inbox.events.append(event)
            self._lock.notify()

    def _look_at_folders(self) -> None:
        if self._watches.look():
            self._look_at_new_folders()

    def _look_at_new_folders(self) -> None:
        if self._routes.known_presets:
            self.ensure_preset_folders(self._routes.known_presets)
        for root in self._watches.watch():
            self._absorb(root, True, time.monotonic())  # what was dropped in before the watch began

    # ---- the worker -------------------------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = 0.0
        next_heartbeat = time.monotonic() + self._heartbeat_interval
        next_folder_look = time.monotonic() + FOLDER_LOOK_INTERVAL
        while True:
            with self._lock:
                wake_at = min([next_rescan, next_heartbeat, next_folder_look]
                              + [c.due for c in self._candidates.values()])
                timeout = wake_at - time.monotonic()
                if timeout > 0 and not self._inbox.paths and not self._inbox.events and not self._stopping:
                    self._lock.wait(timeout)
                if self._stopping:
                    return
                inbox, self._inbox = self._inbox, _Inbox()
            now = time.monotonic()
            for event in inbox.events:
                self._guarded(self._jobs.on_event, event)
            for path, is_directory, kind in inbox.paths:
                if kind == LEFT:
                    self._guarded(self._depart, path, is_directory)
                else:
                    self._guarded(self._absorb, path, is_directory, now, kind == ARRIVED)
            if self._prune_soon:
                folders, self._prune_soon = self._prune_soon, set()
                for folder in folders:
                    self._guarded(self._claims.prune, folder)
            if now >= next_rescan:
                self._guarded(self._rescan)
                next_rescan = time.monotonic() + self._rescan_interval
            if now >= next_folder_look:
                self._guarded(self._look_at_folders)
                next_folder_look = time.monotonic() + FOLDER_LOOK_INTERVAL
            if now >= next_heartbeat:
                self._guarded(self._jobs.heartbeat)
                next_heartbeat = time.monotonic() + self._heartbeat_interval
            for candidate in [c for c in self._candidates.values() if c.due <= time.monotonic()]:
                if not self._guarded(self._evaluate, candidate):
                    candidate.due = time.monotonic() + RETRY_AFTER_ENGINE_ERROR  # never spin on it

    def _guarded(self, step: Callable[..., object], *args: object) -> bool:
        try:
            step(*args)
        except Exception:  # one bad file or folder must never stop the watcher
            log.exception("Hot folder: unexpected problem (continuing)")
            return False
        return True

    def _absorb(self, path: Path, is_directory: bool, now: float, arrived: bool = False) -> None:
        if is_directory:
            if path in self._watched_or_wanted():  # a hot folder (or a folder on the way to one) was made
                self._look_at_new_folders()
            route_root = self._routes.route_dir(path)
            if route_root is not None:
                for file_path in self._routes.walk(*route_root, start=path):
                    self._absorb(file_path, False, now)
            return
        if path.name.endswith(SIDECAR_SUFFIX):
            self._sidecar_changed(path, now)
            return
        if arrived or path in self._departed:  # it came (back): whatever was done under its name was before
            self._departed.pop(path, None)
            self._jobs.forget(path)
            arrived_at: float | None = time.time()
        else:
            arrived_at = None
        candidate = self._candidates.get(path)
        if candidate is not None:
            candidate.arrived_at = arrived_at or candidate.arrived_at
            # Snapshot now, so the settle window counts from the last write, not from the last check.
            snapshot = FileSnapshot.of(path)
            if snapshot is not None and candidate.settle.observe(snapshot, now):
                candidate.incomplete_since = None  # still being written: not "stuck unfinished"
            candidate.settle.activity(now)
            candidate.due = max(candidate.due, candidate.settle.settled_at(self._routes.settle_of(path)))
            return
        route = self._routes.route(path)
        snapshot = FileSnapshot.of(path) if route else None
        if route is None or snapshot is None or self._jobs.finished_here(path, snapshot):
            return
        settle = SettleState(snapshot, now)
        self._candidates[path] = _Candidate(path, settle, settle.settled_at(route.folder.settle_seconds),
                                            arrived_at=arrived_at)

    def _sidecar_changed(self, sidecar: Path, now: float) -> None:
        """A sidecar was saved, made, deleted or moved: its audio file is looked at again. One waiting to be
        taken waits for the sidecar to settle; a finished one is a new version only if the sidecar's content
        changed (`HotFolderJobs.finished_here`)."""
        for source in sources_of_sidecar(sidecar):
            candidate = self._candidates.get(source)
            if candidate is not None:
                candidate.settle.activity(now)
                candidate.due = max(candidate.due, candidate.settle.settled_at(self._routes.settle_of(source)))
            else:
                self._absorb(source, False, now)

    def _depart(self, path: Path, is_directory: bool) -> None:
        """A file or folder was deleted or moved away. A file that is really gone is forgotten (its record,
        and its claim markers, which say it is done: back again, it is a new arrival)."""
        if is_directory:
            if path in self._watched_or_wanted() or self._watches.watches_under(path):
                self._watches.gone(path)
                self._look_at_new_folders()
            for gone in [p for p in self._candidates if p.is_relative_to(path) and FileSnapshot.of(p) is None]:
                del self._candidates[gone]
            self._note_departed(self._jobs.forget_gone_under(path))
            return
        if path.name.endswith(SIDECAR_SUFFIX):
            self._sidecar_changed(path, time.monotonic())
            return
        if self._routes.route(path) is None or os.path.lexists(path):
            return  # not ours, or there again already (then its claim markers stay: it never looked gone)
        self._jobs.forget(path)
        self._candidates.pop(path, None)
        self._note_departed([path])

    def _note_departed(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._departed[path] = None
            self._prune_soon.add(path.parent)
        while len(self._departed) > _DEPARTED_KEPT:
            del self._departed[next(iter(self._departed))]

    def _watched_or_wanted(self) -> set[Path]:
        """The hot folders, and every folder on the way to one (where one may be made)."""
        wanted: set[Path] = set()
        for _, root in self._routes.folders:
            wanted.add(root)
            wanted.update(root.parents)
        return wanted

    def _evaluate(self, candidate: _Candidate) -> None:
        path, now = candidate.path, time.monotonic()
        if self._claims.busy():  # team mode: every slot of ours is taken; a daemon with a free one takes it
            candidate.due = now + 0.05
            return
        route = self._routes.route(path)
        snapshot = FileSnapshot.of(path)
        if route is None or snapshot is None or self._jobs.finished_here(path, snapshot):
            del self._candidates[path]
            return
        try:  # the header, read once per look: it sets the settle time and then judges completeness
            check: ContainerCheck | OSError = check_container(path)
        except OSError as exc:
            check = exc
        settle_seconds = self._settle_for(check, route.folder.settle_seconds)
        if candidate.settle.observe(snapshot, now):
            candidate.incomplete_since = None
        if now < candidate.settle.settled_at(settle_seconds):
            candidate.due = candidate.settle.settled_at(settle_seconds)
            return
        reason = self._incompleteness(path, check)
        if reason is None and FileSnapshot.of(path) != snapshot:
            reason = "it changed while being checked"
        if reason is not None:
            self._wait_for_completion(candidate, reason, settle_seconds, now)
            return
        del self._candidates[path]
        outcome_retry = self._jobs.take(path, snapshot, route, candidate.arrived_at)
        if outcome_retry is not None:
            self._candidates[path] = _Candidate(path, candidate.settle, time.monotonic() + outcome_retry,
                                                arrived_at=candidate.arrived_at)

    @staticmethod
    def _settle_for(check: ContainerCheck | OSError, settle_seconds: float) -> float:
        """A format whose file shows nothing of being complete (MP3, OGG, CAF…) waits three times as long:
        a quiet spell is all there is to go by, and a copy taken early costs a paid request."""
        if isinstance(check, OSError):
            return settle_seconds  # the completeness check says why, in its turn
        if check.streamed:
            return STREAMED_SETTLE_FACTOR * settle_seconds
        known = check.completeness is not Completeness.unchecked or check.container == "FLAC"
        return settle_seconds if known else UNCHECKED_SETTLE_FACTOR * settle_seconds

    @staticmethod
    def _incompleteness(path: Path, check: ContainerCheck | OSError) -> str | None:
        """None when the file may be taken, else why not (yet)."""
        if not can_open_exclusively(path):
            return "another program still has it open"
        if isinstance(check, OSError):
            return f"it cannot be read yet ({check.strerror or check})"
        if not check.ok:
            return check.reason
        if check.container == "FLAC" and ends_early(path):
            return "it ends before the length its header gives"
        if check.container == "FLAC" and flac_length_unknown(path):  # written only when the export closes it
            return "its header does not give its length yet (still being exported?)"
        return None

    def _wait_for_completion(self, candidate: _Candidate, reason: str, settle: float, now: float) -> None:
        if candidate.incomplete_since is None:
            candidate.incomplete_since = now
            log.debug("Hot folder: %s is not complete yet: %s", candidate.path.name, reason)
        elif now - candidate.incomplete_since >= self._incomplete_report_after:
            del self._candidates[candidate.path]
            log.warning("Hot folder: %s still looks unfinished: %s", candidate.path, reason)
            self._jobs.fail(
                candidate.path,
                candidate.settle.snapshot,
                f"The file still looks unfinished after {self._incomplete_report_after:.0f} seconds: "
                f"{reason}.\nIf the export finished, the file may be damaged: export it again.",
            )
            return
        candidate.due = now + max(settle, 0.2)

    # ---- folders ----------------------------------------------------------------------------------

    def _rescan(self) -> None:
        self._refresh_presets()
        self._watches.watch()
        now, seen = time.monotonic(), set()
        prune_claims: Callable[[Path], object] | None = None
        if now >= self._next_claim_prune:  # reads every marker: not on every rescan
            self._next_claim_prune = now + _CLAIM_PRUNE_INTERVAL
            prune_claims = self._claims.prune
        for folder, root in self._routes.folders:
            if not root.is_dir():
                continue
            for path in self._routes.walk(folder, root, start=root, prune_claims=prune_claims):
                seen.add(path)
                if path not in self._candidates:
                    self._absorb(path, False, now)
        self._note_departed(self._jobs.forget_missing(seen))

    def _refresh_presets(self) -> None:
        try:
            self._routes.known_presets = list(self._preset_source())
        except Exception as exc:
            log.debug("Hot folder: preset list unavailable: %s", exc)
            return
        self.ensure_preset_folders(self._routes.known_presets)

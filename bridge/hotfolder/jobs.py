"""Hot folder jobs: claim a quiet, complete file, submit it, and settle what came of it.

The watcher hands over files that have settled and passed the completeness gate. Here each is claimed
across daemons, turned into a `SeparationRequest` and submitted; job outcomes then mark the file version
done (optionally moving it to done/) or write `<file>.error.txt`. A record per file version remembers
what needs nothing more from us, so rescans and repeated events stay harmless.

A file version is the audio file (name, size, mtime) and what its sidecar holds: a sidecar saved with other
content makes a new version (a new claim, a new request), one saved unchanged, touched or deleted does not,
whatever became of the version's job (queued, running, done or failed). A job with a sidecar marks the same
audio without a sidecar done when it is submitted (for restarts and sibling daemons), and frees it again if
it fails or is cancelled. A version is done once per stay in the folder: a file the watcher saw leave and
come back (`mv` keeps its time) is a new arrival, and its request is a new job even when the engine finished
one with the same key before (the engine's dedupe reuses that result only from its own journal, with its
stems still there or within a day: the README's "When a file is taken again" says when it is charged). A
file that stays is never taken again, rescans and restarts included.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bridge.common.claims import Claim, ClaimBackend
from bridge.common.errors import BridgeError, InputError
from bridge.common.file_gate import FileSnapshot
from bridge.common.jobs import JobEvent, JobSink, JobState, RequestRejected
from bridge.common.path_policy import PathPolicy
from bridge.common.request import Origin, SeparationRequest
from bridge.hotfolder.names import (
    ManifestIndex,
    error_blocks_retry,
    error_file_for,
    error_file_reports,
    hot_request,
    move_to_done,
    sidecar_age,
    sidecar_stat,
    sidecar_version,
    write_error_file,
)
from bridge.hotfolder.routes import FolderRoutes, HotFolder, Route

# The watcher's logger: one name for everything the hot folder reports, however the code is split.
log = logging.getLogger("bridge.hotfolder.watcher")

RETRY_AFTER_ENGINE_ERROR = 30.0  # seconds before a file the engine could not take is offered again
RETRY_AFTER_UNWRITABLE = 30.0  # seconds before a file in a folder we could not write in is offered again
# A sidecar edited for a file already submitted or done is often saved while it is being typed (editors that
# autosave: VS Code's afterDelay, TextEdit), and every save with other content is a new paid job. The folder's
# settle time (2 s by default) is shorter than a pause to think in the middle of a prompt, so such an edit waits
# until the sidecar has been quiet for SIDECAR_EDIT_SETTLE seconds at least, or SIDECAR_EDIT_SETTLE_FACTOR times
# the folder's settle time when that is longer (a slow share): a few seconds' delay for a deliberate edit, no
# charge for half a prompt. A new file's first drop keeps the folder's settle time.
SIDECAR_EDIT_SETTLE = 10.0
SIDECAR_EDIT_SETTLE_FACTOR = 5.0
MAX_ARRIVALS = 100  # a file that came back more often than this is the earlier job's again (keys stay short)


class _Status(StrEnum):
    submitted = "submitted"  # claimed and handed to the engine
    done = "done"  # finished here or elsewhere: never again for this file version
    failed = "failed"  # error file written: again only when it is deleted or the file saved again
    ignored = "ignored"  # not ours to take (claimed by a sibling's stems, …)


@dataclass
class _Record:
    snapshot: FileSnapshot
    status: _Status
    variant: str = ""  # what the sidecar held (`sidecar_version`), "" without one
    sidecar: tuple[str, int, int, int] | None = None  # its `sidecar_stat` then: unchanged, no need to read it


@dataclass
class _Taken:
    path: Path
    snapshot: FileSnapshot
    folder: HotFolder
    claim: Claim | None
    job_id: str = ""
    variant: str = ""
    cover: Claim | None = None  # the bare key's marker, marked done at submit (a job with a sidecar)


class HotFolderJobs:
    """The files taken from the hot folders and their jobs. Used from the watcher's worker thread only."""

    def __init__(self, sink: JobSink, claims: ClaimBackend, routes: FolderRoutes, policy: PathPolicy) -> None:
        self._sink = sink
        self._policy = policy  # a hot folder is a way in others may write to: every request is confined
        self._claims = claims
        self._routes = routes
        self._records: dict[Path, _Record] = {}
        self._taken: dict[str, _Taken] = {}  # by job id: a file saved again may have a second job meanwhile
        self._manifests = ManifestIndex()
        self._unwritable: set[Path] = set()  # folders said to be unwritable (once each, until they are again)

    def finished_here(self, path: Path, snapshot: FileSnapshot) -> bool:
        """True when this file version (audio and sidecar) needs nothing more from us."""
        record = self._records.get(path)
        if record is None or record.snapshot != snapshot or not self._same_sidecar(path, record):
            return False
        if record.status is _Status.failed:
            return error_blocks_retry(path)
        return True

    def _same_sidecar(self, path: Path, record: _Record) -> bool:
        seen = sidecar_stat(path)
        if seen == record.sidecar and (seen is not None or not record.variant):
            return True
        if seen is None and record.variant:
            # A sidecar that disappears never makes a new version, whatever became of the one it had (queued,
            # running, done, failed): deleting it is tidying up, not a request to run the file again with the
            # folder's preset (a charge nobody asked for). A failed one waits for its error file, as ever.
            return True
        version = sidecar_version(path, self._policy)
        if version == "unreadable" and record.variant and record.status is not _Status.failed:
            # a share that fails a read for a moment is no new version of a file taken already: looked at again
            # next time (its stat is not kept), rather than an error file beside a finished file
            return True
        if version != record.variant:
            return False
        record.sidecar = seen  # saved unchanged, or touched: the same version
        return True

    def forget(self, path: Path) -> None:
        """The file left the folder (deleted, moved away): whatever arrives under its name later is new."""
        self._records.pop(path, None)

    def forget_gone_under(self, folder: Path) -> list[Path]:
        """A folder was deleted or moved away: forget the files under it that went with it. Returns them."""
        gone = [p for p in self._records if p.is_relative_to(folder) and not os.path.lexists(p)]
        for path in gone:
            del self._records[path]
        return gone

    def forget_missing(self, present: set[Path]) -> list[Path]:
        """Drop the records of files that are gone (a file saved there again is new). Returns their paths."""
        gone = [p for p in self._records if p not in present]
        for path in gone:
            del self._records[path]
        return gone

    def take(self, path: Path, snapshot: FileSnapshot, route: Route, arrived_at: float | None = None) -> float | None:
        """Claim, check and submit one quiet, complete file. Returns seconds until a retry, or None.

        `arrived_at`: when the watcher saw the file arrive (created or moved in; wall clock), if it did: a done
        job with the same key that ended before then was the job of an earlier stay of the file."""
        if error_blocks_retry(path):
            self._records[path] = _Record(snapshot, _Status.failed, *self._sidecar_now(path))
            return None
        if path in self._routes.own_outputs or self._manifests.owns(path):
            self._records[path] = _Record(snapshot, _Status.ignored, *self._sidecar_now(path))
            return None
        quiet_for = self._sidecar_settle(path, snapshot, route.folder.settle_seconds)
        age = sidecar_age(path)
        if age < quiet_for:
            return quiet_for - age + 0.01  # the sidecar itself is still being written (or typed)
        variant, seen = self._sidecar_now(path)
        try:
            outcome = self._claims.try_claim(path, snapshot, variant)
        except OSError as exc:  # a read-only share: no claim marker can be made beside the file
            if path.parent not in self._unwritable:
                self._unwritable.add(path.parent)
                log.warning("Hot folder %s: sam-bridge cannot write there (%s): it needs to make a .sam-bridge "
                            "folder (its claim markers, so no file is paid for twice) beside the files, and Stems/ "
                            "unless the folder has an output_dir. Make the folder writable; its files wait until "
                            "then.", path.parent, exc.strerror or exc)
            return RETRY_AFTER_UNWRITABLE
        self._unwritable.discard(path.parent)
        if outcome.done_elsewhere:
            self._records[path] = _Record(snapshot, _Status.done, variant, seen)
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
                folder_preset=lambda: route.folder.preset or self._routes.preset_for(route),
                output_dir=route.folder.output_dir,
                known_presets=self._routes.known_presets,
                policy=self._policy,
            )
            if request.output_dir not in (None, path.parent, route.root):
                self._routes.output_dirs.add(request.output_dir)  # never take our own output
            job_id = self._submit(request, arrived_at)
        except (InputError, RequestRejected) as exc:  # the file's or its settings' fault
            self.fail(path, snapshot, str(exc), claim=claim, variant=variant)
            return None
        except Exception as exc:  # the engine is busy or shutting down: not the file's fault
            log.warning("Hot folder: could not queue %s, trying again later: %s", path.name, exc,
                        exc_info=not isinstance(exc, BridgeError))
            self._claims.release(claim)
            return RETRY_AFTER_ENGINE_ERROR
        log.info("Hot folder: %s → job %s", path.name, job_id)
        cover = self._cover(path, snapshot) if variant else None
        self._records[path] = _Record(snapshot, _Status.submitted, variant, seen)
        self._taken[job_id] = _Taken(path, snapshot, route.folder, claim, job_id, variant, cover)
        view = self._sink.get(job_id)
        if view is not None and view.state.finished:  # e.g. done before a restart, per the journal
            self._finish(job_id, view.state, view.error or view.message, view.stems)
        return None

    def _sidecar_settle(self, path: Path, snapshot: FileSnapshot, settle_seconds: float) -> float:
        """How long the sidecar must be quiet before the file is taken: the folder's settle time, or for a
        sidecar edited after this version of the audio was submitted or done, longer (SIDECAR_EDIT_SETTLE)."""
        record = self._records.get(path)
        if record is not None and record.snapshot == snapshot and record.status in (_Status.submitted, _Status.done):
            return max(SIDECAR_EDIT_SETTLE, SIDECAR_EDIT_SETTLE_FACTOR * settle_seconds)
        return settle_seconds

    def _cover(self, path: Path, snapshot: FileSnapshot) -> Claim | None:
        """A job with a sidecar was submitted: mark the same audio without a sidecar (the bare key) done now,
        so that a sibling daemon, or this one after a restart, never takes the file with the folder's preset
        when the sidecar is deleted while the job is queued or running. Released if the job fails."""
        if any(t.path == path and t.snapshot == snapshot and not t.variant for t in self._taken.values()):
            return None  # our own job of the file without a sidecar runs: its claim is its own, not a cover
        try:
            outcome = self._claims.try_claim(path, snapshot, slot=False)
        except OSError as exc:
            log.warning("Hot folder: could not mark %s done without its sidecar: %s", path.name, exc)
            return None
        if outcome.claim is None:
            return None  # done already (a cover, or a job without a sidecar), or held by someone else
        self._claims.mark_done(outcome.claim)
        return outcome.claim

    def _release_cover(self, taken: _Taken) -> None:
        """The job with a sidecar failed or was cancelled: the file without its sidecar is free again (its
        error file deleted with the sidecar, it runs with the folder's preset), unless another job of the same
        audio with a sidecar is still under way: that one keeps the cover."""
        if taken.cover is None:
            return
        heir = next((t for t in self._taken.values() if t.path == taken.path and t.snapshot == taken.snapshot
                     and t.variant and t.cover is None), None)
        if heir is not None:
            heir.cover = taken.cover
        else:
            self._claims.release(taken.cover)

    def _sidecar_now(self, path: Path) -> tuple[str, tuple[str, int, int, int] | None]:
        seen = sidecar_stat(path)  # before the read: a sidecar saved meanwhile is read again next time
        return sidecar_version(path, self._policy), seen

    def _submit(self, request: SeparationRequest, arrived_at: float | None) -> str:
        """Submit; for a file that arrived again, a done job of its key that ended before it arrived is the
        earlier stay's: the request then asks for a job after that one (a new key), and so on."""
        job_id = self._sink.submit(request)
        if arrived_at is None:
            return job_id
        for _ in range(MAX_ARRIVALS):
            view = self._sink.get(job_id)
            if view is None or view.state is not JobState.done or view.updated_at >= arrived_at:
                break
            log.info("Hot folder: %s came back after job %s: a new job", request.source.name, job_id)
            request = request.model_copy(update={"idempotency_key": f"{request.idempotency_key}:after:{job_id}"})
            job_id = self._sink.submit(request)
        return job_id

    def on_event(self, event: JobEvent) -> None:
        self._routes.note_own_outputs(event.stems.values())
        if event.state.finished and event.job_id in self._taken:
            self._finish(event.job_id, event.state, event.error or event.message, event.stems)
        elif event.state is JobState.done and event.origin == Origin.hot_folder:
            self._finish_retried(event.job_id)

    def heartbeat(self) -> None:
        """Keep our claims alive and catch job outcomes whose events we missed."""
        for taken in list(self._taken.values()):
            if taken.claim is not None and not self._claims.refresh(taken.claim):
                gone = not taken.path.parent.is_dir()  # the folder itself was deleted or moved
                log.warning("Hot folder: lost the claim on %s: %s", taken.path.name,
                            "its folder is gone (deleted or moved?)" if gone else
                            "its claim marker was taken over by another sam-bridge or removed")
            view = self._sink.get(taken.job_id)
            if view is not None and view.state.finished:
                self._finish(taken.job_id, view.state, view.error or view.message, view.stems)

    def fail(
        self, path: Path, snapshot: FileSnapshot, what: str, *, claim: Claim | None = None, job_id: str = "",
        variant: str | None = None,
    ) -> None:
        """Error file first, then release the claim: a sibling daemon then sees the error file."""
        try:
            written = write_error_file(path, what, job_id or None)
            log.warning("Hot folder: %s failed; wrote %s", path.name, written.name)
        except OSError as exc:
            log.error("Hot folder: %s failed (%s); the error file could not be written: %s", path, what, exc)
        # the sidecar as it is now is paired with its version only when read now (it may have changed since)
        seen = sidecar_stat(path) if variant is None else None
        if variant is None:
            variant = sidecar_version(path, self._policy)
        self._records[path] = _Record(snapshot, _Status.failed, variant, seen)
        if claim is not None:
            self._claims.release(claim)

    def _finish(self, job_id: str, state: JobState, message: str | None, stems: dict[str, str]) -> None:
        taken = self._taken.pop(job_id, None)
        if taken is None:
            return  # not one of ours, or already handled
        self._routes.note_own_outputs(stems.values())
        if state is JobState.done:
            self._done(taken)
            return
        if FileSnapshot.of(taken.path) != taken.snapshot:
            # Saved again while the job ran (a copy that paused longer than the settle time): the job
            # read a version that is gone, and the file as it is now gets a turn of its own.
            log.info("Hot folder: %s changed while job %s ran; its failure does not count", taken.path.name, job_id)
            self._set_record(taken, None)
            if taken.claim is not None:
                self._claims.release(taken.claim)
            self._release_cover(taken)
            return
        what = "The job was cancelled." if state is JobState.cancelled else (message or "The job failed.")
        self.fail(taken.path, taken.snapshot, what, claim=taken.claim, job_id=job_id, variant=taken.variant)
        self._release_cover(taken)

    def _finish_retried(self, job_id: str) -> None:
        """A job of ours that failed, then `sam-bridge retry` made good: its error file goes, and the file
        is done as if the first run had worked."""
        view = self._sink.get(job_id)
        if view is None:
            return
        path = Path(view.source)
        route, snapshot = self._routes.route(path), FileSnapshot.of(path)
        if route is None or snapshot is None or not error_file_reports(path, job_id):
            return
        # Saved again since that failure (error file older than the file), or a job for it under way: the
        # file as it is now is not the version the retry ran, and has a turn of its own.
        if not error_blocks_retry(path) or any(taken.path == path for taken in self._taken.values()):
            return
        variant = sidecar_version(path, self._policy)
        claim = self._claims.try_claim(path, snapshot, variant).claim  # so no sibling, nor we after a restart, take it
        self._done(_Taken(path, snapshot, route.folder, claim, job_id, variant))
        log.info("Hot folder: %s done by a retry of job %s", path.name, job_id)

    def _done(self, taken: _Taken) -> None:
        path = taken.path
        self._set_record(taken, _Status.done)
        if taken.claim is not None:
            self._claims.mark_done(taken.claim)
        if taken.variant and taken.cover is None:  # the cover could not be made at submit: now, then
            self._cover(path, taken.snapshot)
        error_file = error_file_for(path)
        if error_file.exists() and (not error_blocks_retry(path) or error_file_reports(path, taken.job_id)):
            error_file.unlink(missing_ok=True)  # our own report of an earlier, now fixed failure
        if taken.folder.after_success == "move-to-done" and FileSnapshot.of(path) == taken.snapshot:
            moved = move_to_done(path)
            if moved is not None:
                self._claims.forget_done(path, taken.snapshot, taken.variant)
                if taken.variant:
                    self._claims.forget_done(path, taken.snapshot)
                log.info("Hot folder: moved %s to %s", path.name, moved.parent)

    def _set_record(self, taken: _Taken, status: _Status | None) -> None:
        """Record how this file version ended, unless a newer version of the file is under way already."""
        record = self._records.get(taken.path)
        if record is not None and (record.snapshot, record.variant) != (taken.snapshot, taken.variant):
            return
        if status is None:
            self._records.pop(taken.path, None)
        else:
            self._records[taken.path] = _Record(taken.snapshot, status, taken.variant,
                                                record.sidecar if record is not None else None)

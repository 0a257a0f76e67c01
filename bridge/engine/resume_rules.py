"""What an earlier attempt of a job left, and what may be done with it: requests to follow (never sent
again), a source that must still be the audio they were made from, a submit whose answer was lost (never
resent blindly), an identical earlier job's results asked for again, and a job another daemon took over."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bridge.audio.source import probe_source, same_audio, source_sha256
from bridge.common.errors import RequestGone, SourceChanged, SourceError, SubmitUncertain
from bridge.engine.journal import JobJournal, JobRow, JobTakenOver
from bridge.engine.outcomes import JobOutcomes
from bridge.engine.pipeline import Pipeline, file_fingerprint
from bridge.fal.client import RequestHandle

log = logging.getLogger(__name__)

REFETCH_FAILED = "refetch-failed"  # a job's flag: the earlier results it asked for again were gone
RESULTS_KEPT = 24 * 3600.0  # seconds an earlier job's results are asked for again (then: a new request)


@dataclass
class ResumeRules:
    journal: JobJournal
    pipeline: Pipeline
    outcomes: JobOutcomes
    dedupe: bool

    def followable_handles(self, row: JobRow, step_count: int) -> dict[int, RequestHandle]:
        """The job's accepted requests, less those of a stand-in that is gone (sent again, at no cost; but
        never to fal on its own, which would pay for what was a free trial)."""
        accepted, _ = self.journal.handles(row.view.job_id)
        gone = [step for step, handle in accepted.items() if self.pipeline.made_by_other_stand_in(handle)]
        if not gone:
            return accepted
        if self.pipeline.bills():
            raise RequestGone("Its request was made by a stand-in service that is gone, and sam-bridge now uses "
                              "SAM Audio on fal.",
                              hint=f"`sam-bridge retry {row.view.job_id}` sends it to fal (charged).")
        log.info("job %s: the stand-in that had its request is gone; sending it again (free)", row.view.job_id)
        self.journal.clear_steps(row.view.job_id, min(gone), step_count)
        return {step: handle for step, handle in accepted.items() if step < min(gone)}

    def source_hash(self, row: JobRow, accepted: dict[int, RequestHandle]) -> tuple[str, tuple[int, int]]:
        """The source's sha256 (read once: the dedupe key and the manifest share it), remembered with the
        job, and the file's fingerprint from before that read (the pipeline checks the file still has it);
        SourceChanged when requests were already made from other audio."""
        if row.request.confined_to is not None:  # an untrusted way in: checked again now, at use
            row.request.confined_to.source_file(row.request.source)
        probe_source(row.request.source)  # missing, unreadable or not audio: said in words, before reading it
        try:
            fingerprint = file_fingerprint(row.request.source)
            audio_hash = source_sha256(row.request.source)
        except OSError as exc:
            raise SourceError(f"“{row.request.source.name}” could not be read ({exc.strerror or exc}).",
                              "Check that the file is there and readable, then retry the job.") from None
        if accepted and row.source_hash and row.source_hash != audio_hash and not same_audio(
                row.request.source, row.source_hash):  # a job journalled by 0.2.0 recorded the file's hash
            raise SourceChanged(
                f"“{row.request.source.name}” changed after it was sent to the service, so the results "
                "already made belong to the old audio.",
                hint=f"`sam-bridge retry {row.view.job_id}` sends the new audio (charged again).")
        if row.source_hash != audio_hash:
            self.journal.set_fields(row.view.job_id, source_hash=audio_hash)
        return audio_hash, fingerprint

    def submit_was_lost(self, row: JobRow) -> bool:
        """A step marked 'submitting' with no request id: it may have landed. Never resend it blindly."""
        accepted, uncertain = self.journal.handles(row.view.job_id)
        if not [step for step in uncertain if step not in accepted]:
            return False
        self.outcomes.failed(row, SubmitUncertain(
            "sam-bridge lost the answer while submitting this job, so it cannot tell whether the service "
            "accepted it.", hint=f"Check your fal dashboard; `sam-bridge retry {row.view.job_id}` submits it "
            "again (it may be charged twice if it did land)."))
        return True

    def refetch(self, row: JobRow, key: str, step_count: int) -> dict[int, RequestHandle]:
        """An earlier identical job whose stems are gone (on any machine of a team): its requests' results
        are asked for again while the service may still have them, instead of paying for new ones."""
        if REFETCH_FAILED in row.flags or not self.dedupe:
            return {}
        for earlier in self.journal.done_with_dedupe_key(key):
            if earlier.view.job_id == row.view.job_id or time.time() - earlier.view.updated_at > RESULTS_KEPT:
                continue
            handles, _ = self.journal.handles(earlier.view.job_id)
            if len(handles) != step_count or any(self.pipeline.made_by_other_stand_in(h) for h in handles.values()):
                continue
            for step, handle in handles.items():
                self.journal.mark_submitted(row.view.job_id, step, handle)
            log.info("job %s fetches the results of job %s again (its stems are gone; no new request)",
                     row.view.job_id, earlier.view.job_id)
            return handles
        return {}

    def check_still_ours(self, row: JobRow) -> None:
        """JobTakenOver when another daemon took the job while this one waited (its lease ran out during
        a team database outage): it may have finished the job already, so nothing is written here."""
        latest = self.journal.get(row.view.job_id)
        if latest is not None and latest.owner != row.owner:
            raise JobTakenOver(f"job {row.view.job_id} was taken over by {latest.owner}")
        if latest is not None and latest.view.state.finished:
            raise JobTakenOver(f"job {row.view.job_id} ended elsewhere ({latest.view.state.value})")

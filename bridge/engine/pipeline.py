"""The one pipeline every way in ends up in:

prepare → upload → submit → wait (status + logs) → fetch result → download → conform → write → manifest.

A recipe of N steps (a stem set) peels one sound after another: step k separates what step k-1 left, so
the stems plus the final residual sum back to the source. Each step is its own paid request; the hooks
let the job engine journal a request id BEFORE the job is reported as submitted, and resume a step by
polling its request instead of paying again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridge.audio.intermediates import carry_position, clear_intermediates, write_complement
from bridge.audio.prefetch import Background
from bridge.audio.source import (
    SourceInfo,
    check_finite,
    probe_source,
    source_sha256,
)
from bridge.common.cost import PriceTable
from bridge.common.errors import (
    BridgeError,
    Cancelled,
    JobFailed,
    ServiceError,
    SourceChanged,
    SourceError,
    SubmitUncertain,
)
from bridge.common.jobs import JobState
from bridge.common.loopback import is_loopback_url
from bridge.common.processes import remove_left_behind
from bridge.common.request import SeparationRequest
from bridge.common.stems import (
    EXTENSIONS,
    TEMP_PREFIX,
    check_room,
    confined_folder,
    job_names,
    output_folder,
    place_unit,
    remove_quietly,
    remove_stale_temps,
    stems_bytes,
    temp_path_for,
)
from bridge.engine.dedupe import written_before
from bridge.engine.estimate import check_spans, part_of, spans_sent
from bridge.engine.manifest import StepRecord, build_manifest
from bridge.engine.pipeline_hooks import STAGE_END, Hooks, JobResult
from bridge.engine.progress import ServiceClock, ServiceTicker, StatusFollower, Transfer
from bridge.engine.results import fetch_both, result_file
from bridge.engine.upload_stage import send_upload
from bridge.fal.client import DEFAULT_QUEUE_URL, FalClient, QueueStatus, RequestHandle
from bridge.presets.recipe import Recipe, Step

if TYPE_CHECKING:
    from bridge.audio.conform import ConformReport

log = logging.getLogger(__name__)

_CONFORM = "bridge.audio.conform"


def import_conform_meanwhile() -> None:
    """Import conform (scipy's FFT and the rest: ~0.2 s) in a thread while the source is read, uploaded and
    separated, which wait on the network: a one-shot command does not wait for it before sending."""
    if _CONFORM not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(_CONFORM,), name="import-conform").start()


@dataclass
class Pipeline:
    client: FalClient
    prices: PriceTable = field(default_factory=PriceTable)
    poll_interval: float = 0.5  # when the status stream is unavailable
    use_stream: bool = True  # follow fal's server-sent status stream: completion is seen at once
    shrink_uploads: bool | None = None  # even a whole file sent as mono 48 kHz FLAC; None: when the service
    # is not on this machine
    upload_bits: int = 24  # 16: smaller uploads for slow links (the service hears a -96 dB noise floor)
    billed: bool | None = None  # requests cost money; None: when the service is fal itself
    service: str | None = None  # what makes the stems (manifest, dedupe key); None: the app at the client's host

    def service_name(self) -> str:
        """`fal-ai/sam-audio@queue.fal.run`, a stand-in's `…@127.0.0.1:8765`, or the name it was given (the
        built-in stand-in's `stand-in`, whatever port it has): stems of one service are never another's."""
        return self.service or f"{self.client.app}@{urlsplit(self.client.queue_url).netloc}"

    def shrinks_uploads(self) -> bool:
        if self.shrink_uploads is not None:
            return self.shrink_uploads
        return not is_loopback_url(self.client.storage.rest_url)  # over loopback bytes cost nothing

    def bills(self) -> bool:
        """fal bills each request; a stand-in (built in, or one at --service-url) does not."""
        if self.billed is not None:
            return self.billed
        return urlsplit(self.client.queue_url).hostname == urlsplit(DEFAULT_QUEUE_URL).hostname

    def made_by_other_stand_in(self, handle: RequestHandle) -> bool:
        """Whether `handle` is a request of a stand-in other than ours (the built-in one starts afresh on a
        new port with each daemon): nobody can follow it any more, and it cost nothing to send."""
        host = urlsplit(handle.status_url).netloc
        fal_host = urlsplit(DEFAULT_QUEUE_URL).netloc
        return host not in (urlsplit(self.client.queue_url).netloc, fal_host)

    def run(self, request: SeparationRequest, recipe: Recipe, hooks: Hooks, workdir: Path,
            resume: dict[int, RequestHandle] | None = None, temp_tag: str = "",
            source_hash: str | None = None, source_fingerprint: tuple[int, int] | None = None) -> JobResult:
        """`source_hash`: the source's sha256 if the caller has already read it (else it is read here), and
        `source_fingerprint` the (size, mtime_ns) it had before that read: the run checks the file against
        it before sending anything, so what is uploaded is what was hashed."""
        return _Run(self, request, recipe, hooks, workdir, resume or {}, temp_tag, source_hash,
                    source_fingerprint).execute()


class _Run:
    """One execution of a recipe; holds what a run accumulates so the stages stay short."""

    def __init__(self, pipeline: Pipeline, request: SeparationRequest, recipe: Recipe, hooks: Hooks,
                 workdir: Path, resume: dict[int, RequestHandle], temp_tag: str, source_hash: str | None,
                 source_fingerprint: tuple[int, int] | None) -> None:
        self.p, self.request, self.recipe, self.hooks = pipeline, request, recipe, hooks
        self.workdir, self.resume = workdir, resume
        self.timings: dict[str, float] = {}
        self.temps: list[Path] = []
        self.job_flags: set[str] = set()  # flags of the job as a whole, beside each step's
        self.steps: list[StepRecord] = []
        self.step_index = 0
        self.temp_tag = temp_tag
        self.source_hash = source_hash
        self.hashed_fingerprint = source_fingerprint
        self.source_fingerprint = (0, 0)
        self.source_path: Path | None = None  # the user's file (a stem set's later steps send intermediates)
        self.reporting = threading.RLock()  # the service ticker and the job's own thread report in turn
        self.service_eta = 0.0  # what the service should take, for the ETA while uploading

    # -- progress ----------------------------------------------------------------------------------

    def report(self, state: JobState, within: float, message: str, eta: float | None = None) -> None:
        """Progress over the whole job: steps share the bar equally; `within` is 0..1 of this stage; `eta`
        the seconds the job should still take (None: unknown). The service ticker calls it too."""
        stages = list(STAGE_END)
        start = 0.0 if state == stages[0] else STAGE_END[stages[stages.index(state) - 1]]
        step_fraction = start + (STAGE_END[state] - start) * min(max(within, 0.0), 1.0)
        total = (self.step_index + step_fraction) / len(self.recipe.steps)
        with self.reporting:
            self.hooks.progress(state, round(min(total, 0.999), 4), message, eta=eta)

    def check_cancel(self) -> None:
        if self.hooks.cancelled():
            raise Cancelled("Cancelled.")

    def timed(self, stage: str, began: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.monotonic() - began, 3)

    # -- the job ----------------------------------------------------------------------------------

    def execute(self) -> JobResult:
        began = time.monotonic()
        import_conform_meanwhile()
        self.workdir.mkdir(parents=True, exist_ok=True)
        clear_intermediates(self.workdir, keep=self.request.source)
        self.report(JobState.preparing, 0.0, "Reading the source")
        policy = self.request.confined_to  # an untrusted way in: checked now, at use, not only on arrival
        source = probe_source(policy.source_file(self.request.source) if policy else self.request.source)
        if self.hashed_fingerprint is not None:
            check_source_unchanged(source.path, self.hashed_fingerprint)  # still the audio that was hashed
        self.source_fingerprint = file_fingerprint(source.path)
        self.source_path = source.path
        start_frame, frames = part_of(self.request, source)  # the part, or its audition window
        if check_spans(self.recipe, source, start_frame, frames):  # every way in passes here, before any upload
            self.job_flags.add("span-cut-at-end")
            log.warning("a span runs past the end of the %.3f s of %s sent: it is sent cut there",
                        frames / source.samplerate, source.path.name)
        if self.request.audition is not None:
            self.job_flags.add("audition")
            log.info("auditioning %.1f s of %s from %.3f s", frames / source.samplerate, source.path.name,
                     start_frame / source.samplerate)
        check_finite(source, start_frame, frames)  # a damaged float file: refused before it is paid for
        if (self.request.length is not None and self.request.audition is None
                and frames < round(self.request.length * source.samplerate)):
            self.job_flags.add("cut-at-end")  # the part asked for runs past the end of the file
            log.warning("the part asked for runs past the end of %s: the stems are %.3f s, not %.3f s",
                        source.path.name, frames / source.samplerate, self.request.length)
        folder = confined_folder(output_folder(source.path, self.request.project_dir, self.request.output_dir,
                                               self.recipe.output.folder), policy, create=True)
        check_room(folder, stems_bytes(frames, source.channels, self.recipe.output.subtype or source.subtype,
                                       len(self.recipe.steps) + 1))
        if self.temp_tag:
            remove_stale_temps(folder, self.temp_tag)
        remove_left_behind(folder, TEMP_PREFIX)  # hidden stems of a killed `sam-bridge separate`
        self.timed("prepare", began)
        # the manifest's hash of a source nobody hashed yet (a one-shot command): read meanwhile, not after
        hashing = Background(lambda: source_sha256(source.path, hashing.stopping), name="hash-source")
        try:
            with hashing if self.source_hash is None else contextlib.nullcontext():
                stems = self.run_steps(source, start_frame, frames, folder)
                if self.source_hash is None:
                    self.source_hash = hashing.result()
            return self.finish(source, start_frame, frames, folder, stems, began)
        finally:
            remove_quietly(*self.temps)

    def run_steps(self, source: SourceInfo, start_frame: int, frames: int, folder: Path) -> dict[str, Path]:
        """Run every step; returns label -> temp file of each stem (in `folder`, not yet placed)."""
        stems: dict[str, Path] = {}
        step_source, step_start, step_frames = source, start_frame, frames
        last = len(self.recipe.steps) - 1
        for index, step in enumerate(self.recipe.steps):
            self.step_index = index
            target_label = step.label if self.recipe.is_stem_set else "target"
            target_tmp = self.new_temp(folder)
            # an intermediate residual (full precision, fed to the next step) stays in the workdir
            residual_tmp = self.workdir / f"step{index}.residual.wav" if index < last else self.new_temp(folder)
            try:
                self.run_step(index, step, source, step_source, step_start, step_frames,
                              target_tmp, residual_tmp, intermediate=index < last)
            except BridgeError as exc:
                exc.step = index if exc.step is None else exc.step  # a retry keeps the steps before it
                raise
            stems[target_label] = target_tmp
            if index < last:
                step_source = carry_position(probe_source(residual_tmp), source, start_frame)
                step_start, step_frames = 0, frames
            else:
                stems[self.recipe.residual_label] = residual_tmp
        return stems

    def new_temp(self, folder: Path) -> Path:
        temp = temp_path_for(folder / "stem", self.temp_tag)
        self.temps.append(temp)
        return temp

    def run_step(self, index: int, step: Step, original: SourceInfo, step_source: SourceInfo, start: int,
                 frames: int, target_out: Path, residual_out: Path, *, intermediate: bool) -> ConformReport:
        record = StepRecord(label=step.label, prompt=step.prompt)
        self.steps.append(record)
        handle = self.resume.get(index)
        # While this job conforms, the next one is already at the service.
        with self.hooks.service_slot():
            if handle is None:
                handle = self.submit_step(index, step, step_source, start, frames)
            else:
                log.info("resuming step %d: polling request %s (not submitting again)", index, handle.request_id)
            record.request_id = handle.request_id
            clock = ServiceClock(frames / step_source.samplerate, step.options.max_chunk_duration,
                                 step.options.chunk_overlap)
            self.report(JobState.submitted, 1.0, f"Submitted (request {handle.request_id})", eta=clock.eta())
            self.wait_for(handle, record, clock)
            target_file, residual_file = self.download(index, handle)
        self.check_cancel()
        self.report(JobState.conforming, 0.0, "Aligning and writing stems")
        from bridge.audio.conform import ConformSpec, conform  # imported meanwhile: see import_conform_meanwhile
        with self.hooks.local_slot():
            t = time.monotonic()
            first = self.steps[0].report  # later steps of a stem set read an intermediate: keep step 1's format
            spec = ConformSpec(
                source=step_source, start_frame=start, frames=frames,
                out_format=self.recipe.output.format or (first.out_format if first else None),
                out_subtype=self.recipe.output.subtype or (first.out_subtype if first else None),
                residual_method=self.recipe.output.residual.value,
            )
            report = conform(spec, target_file, residual_file, target_out, residual_out,
                             progress=self._conform_progress)
            if intermediate:  # what the next step peels from: exactly source - target as written, in DOUBLE
                write_complement(step_source, start, frames, target_out, residual_out)
            self.timed("conform", t)
        record.report = report
        record.seconds = frames / original.samplerate
        record.estimated_cost = (self.p.prices.estimate(record.seconds, step.options.reranking_candidates)
                                 if self.p.bills() else 0.0)
        remove_quietly(target_file, residual_file)
        return report

    def submit_step(self, index: int, step: Step, source: SourceInfo, start: int, frames: int) -> RequestHandle:
        self.check_cancel()
        t = time.monotonic()
        self.report(JobState.uploading, 0.0, "Preparing the upload")
        service_eta = ServiceClock(frames / source.samplerate, step.options.max_chunk_duration,
                                   step.options.chunk_overlap).eta()
        transfer = Transfer()

        def uploaded(done: int, total: int) -> None:
            transfer.update(done, total)
            left = transfer.eta()
            self.report(JobState.uploading, done / max(total, 1), transfer.describe("Uploading"),
                        eta=None if left is None else left + service_eta)

        url, self.steps[-1].upload = send_upload(self.p.client.storage, source, start, frames, self.workdir,
                                                 shrink=self.p.shrinks_uploads(), bits=self.p.upload_bits,
                                                 progress=uploaded)  # encoded while it is sent
        self.timed("upload", t)
        self.check_cancel()
        if source.path == self.source_path:  # the user's file, still as it was: before anything is paid
            check_source_unchanged(source.path, self.source_fingerprint, uploading=True)
        payload: dict[str, object] = {"audio_url": url, **step.options.to_payload()}
        endpoint = "separate"
        if step.spans:
            endpoint = "span-separate"
            payload["spans"] = [span.model_dump() for span in spans_sent(step.spans, frames / source.samplerate)]
        if step.prompt:
            payload["prompt"] = step.prompt
        self.hooks.submitting(index)
        try:
            handle = self.p.client.submit(endpoint, payload, origin=self.request.origin.value)
        except SubmitUncertain:
            raise  # the marker stays: it may have landed
        except ServiceError:
            self.hooks.not_submitted(index)
            raise
        self.hooks.submitted(index, handle)
        return handle

    def wait_for(self, handle: RequestHandle, record: StepRecord, clock: ServiceClock) -> None:
        t = time.monotonic()
        follower = StatusFollower(clock, record.service_logs, self.report, self.reporting, self._service_line)
        with ServiceTicker(follower.running, follower.tick):  # the bar moves between the service's lines
            self._wait(handle, follower.on_status)
        self.timed("service", t)

    def _service_line(self, line: str) -> None:
        log.info("service: %s", line)
        self.hooks.service_log(line)

    def _wait(self, handle: RequestHandle, on_status: Callable[[QueueStatus], None]) -> None:
        changed = _SourceWatch(self.request.source, self.source_fingerprint)
        with _cancel_when(changed, lambda: self.p.client.cancel(handle)):
            try:
                self.p.client.wait(handle, on_status=on_status, cancelled=self.hooks.cancelled,
                                   poll_interval=self.p.poll_interval, use_stream=self.p.use_stream)
            except Cancelled:
                self.p.client.cancel(handle)
                raise
            except JobFailed:
                if self.hooks.cancelled() or self.hooks.cancel_requested():  # the request was cancelled at the
                    # service for the user (here or by another machine, before this one saw the cancel)
                    raise Cancelled("Cancelled.") from None
                if changed.seen:  # cancelled by the watch below
                    raise SourceChanged(
                        f"The source {self.request.source} changed while the service worked on it (was it still "
                        "being copied or rendered?): the request was cancelled at the service.",
                        hint="The file as it is now is separated as a job of its own (hot folders), or retry the "
                        "job once the file is final.") from None
                raise
        if self.hooks.cancelled():
            self.p.client.cancel(handle)
            raise Cancelled("Cancelled.")

    def download(self, index: int, handle: RequestHandle) -> tuple[Path, Path]:
        t = time.monotonic()
        self.report(JobState.downloading, 0.0, "Fetching the results")
        for attempt in (1, 2):
            result = self.p.client.result(handle)
            try:
                files = [result_file(result, key, self.workdir / f"step{index}.service-{key}")
                         for key in ("target", "residual")]
                fetch_both(self.p.client, files, self._download_progress, self.check_cancel)
                self.timed("download", t)
                return files[0][1], files[1][1]
            except JobFailed:
                if attempt == 2:
                    raise
                log.info("result links failed; asking the service for the result again")
        raise AssertionError("unreachable")

    def _download_progress(self, fraction: float, message: str, eta: float | None) -> None:
        self.report(JobState.downloading, fraction, message, eta=eta)

    def _conform_progress(self, fraction: float) -> None:
        self.check_cancel()  # a long conform stops for a cancel, and for shutdown (the hooks raise)
        self.report(JobState.conforming, fraction, "Aligning and writing stems")

    # -- writing ----------------------------------------------------------------------------------

    def finish(self, source: SourceInfo, start_frame: int, frames: int, folder: Path,
               stems: dict[str, Path], began: float) -> JobResult:
        t = time.monotonic()
        report = self.steps[-1].report
        assert report is not None
        extension = EXTENSIONS.get(report.out_format.upper(), ".wav")
        check_source_unchanged(source.path, self.source_fingerprint)
        flags = sorted({flag for step in self.steps if step.report for flag in step.report.flags} | self.job_flags)
        cost = round(sum(step.estimated_cost for step in self.steps), 4)
        source_hash = self.source_hash or source_sha256(source.path)

        def manifest_for(finals: dict[str, Path]) -> dict[str, Any]:
            self.timed("write", t)
            self.timings["total"] = round(time.monotonic() - began, 3)
            return build_manifest(
                request=self.request, recipe=self.recipe, source=source, source_hash=source_hash,
                start_frame=start_frame, frames=frames, stems=finals, steps=self.steps, flags=flags,
                timings=self.timings, estimated_cost=cost, service=self.p.service_name())

        # a job that changed hands (a lease lost while the team database was down) may have been placed by
        # the other daemon meanwhile: those stems of these very requests are the result, not written again
        placed = written_before(self.request, self.recipe, {s.request_id for s in self.steps if s.request_id})
        if placed is not None:
            log.info("the stems of these requests are in place already (%s): not writing them again",
                     placed.manifest.name)
            return JobResult(stems=placed.stems, manifest=placed.manifest, flags=placed.flags, steps=self.steps,
                             estimated_cost=cost, timings=self.timings)
        # stems and manifest as one unit: a full disk at any point leaves none of them behind
        finals, manifest_path = place_unit(stems, lambda: job_names(
            folder, source.path.name, self.recipe.label, list(stems), extension,
            stem_set=self.recipe.is_stem_set, kind="audition" if self.request.audition is not None else ""),
            manifest_for)
        return JobResult(stems=finals, manifest=manifest_path, flags=flags, steps=self.steps,
                         estimated_cost=cost, timings=self.timings)


@contextlib.contextmanager
def _cancel_when(changed: _SourceWatch, cancel: Callable[[], object]) -> Iterator[None]:
    """While a request waits, look at the user's file once a second; when it changed, cancel the request at
    the service: its results would belong to the old audio (a copy taken early, a render still under way),
    and fal bills only what completes. On its own thread: a status stream may stay silent for minutes."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            if changed():
                try:
                    cancel()
                except Exception as exc:  # the wait itself says what the service answered
                    log.info("cancelling a request whose source changed: %s", exc)
                return

    thread = threading.Thread(target=watch, name="source-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


class _SourceWatch:
    """Whether the user's file changed since it was read."""

    def __init__(self, path: Path, fingerprint: tuple[int, int]) -> None:
        self.path, self.fingerprint, self.seen = path, fingerprint, False

    def __call__(self) -> bool:
        if self.seen or self.fingerprint == (0, 0):
            return self.seen
        with contextlib.suppress(OSError):  # gone: said in words where the file is read next
            self.seen = file_fingerprint(self.path) != self.fingerprint
        return self.seen


def file_fingerprint(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): what changes when a DAW renders the file again."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def check_source_unchanged(path: Path, fingerprint: tuple[int, int], *, uploading: bool = False) -> None:
    """`uploading`: checked after the upload, before the submit. A request file or an OSC message may name a
    file a DAW is still rendering (no settle window there): refused then, nothing was sent for it."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SourceError(f"The source {path} was deleted while the job ran.") from None
    if (stat.st_size, stat.st_mtime_ns) == fingerprint:
        return
    if uploading:
        raise SourceError(f"The source {path} changed while it was uploaded (is it still being written?); "
                          "nothing was sent to the service.", hint="Retry the job once the file is final.")
    raise SourceError(f"The source {path} changed while the job ran; the stems would not match it.",
                      hint="Retry the job once the file is final.")


"""What `sam-bridge separate` does (its options are in `bridge.commands.separate`): two stems per file, no
daemon needed.

Several files are separated one after another with the same options; a file that cannot be used is
reported and skipped, anything that concerns them all (key, service, prompt, preset) stops the run."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.audio.source import probe_source
from bridge.commands.cost_report import print_estimates, whole_of
from bridge.commands.progress_display import ProgressDisplay
from bridge.commands.resume_records import check_resumable, record_sent, what_was_sent
from bridge.common.cost import FileEstimate, money
from bridge.common.errors import BridgeError, Cancelled, InputError, OutputError, ServiceUnavailable, SubmitUncertain
from bridge.common.flags import describe_flag, flag_kind
from bridge.common.jobs import JobState
from bridge.common.options import option_flags
from bridge.common.plain import field_problem
from bridge.common.processes import owner_tag, remove_left_behind
from bridge.common.redact import safe_json, safe_text
from bridge.common.request import Origin, SeparationRequest
from bridge.common.stems import DiskFull
from bridge.engine.pipeline import Pipeline
from bridge.engine.pipeline_hooks import JobResult, StandaloneHooks
from bridge.engine.service_choice import ServiceChoice, open_client
from bridge.fal.client import FalClient, RequestHandle
from bridge.presets.library import PresetLibrary
from bridge.presets.recipe import Recipe, recipe_for

OPTION_ARGS = tuple(name for name, _flag, _kwargs in option_flags())  # the flags `separate` registered
WORK_PREFIX = "sam-bridge-"  # the temp directory's work folders (the stand-in's too): ours to clean


def build_request(args: argparse.Namespace, source: Path) -> SeparationRequest:
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("The prompt is empty.",
                         hint='Describe the sound to isolate, e.g. --prompt "piano playing".')
    options = {name: getattr(args, name) for name in OPTION_ARGS if getattr(args, name) is not None}
    try:
        return SeparationRequest(
            source=source.expanduser().absolute(), prompt=args.prompt, preset=args.preset,
            project_dir=_absolute(args.project), output_dir=_absolute(args.output_dir), start=args.start,
            length=args.length, spans=args.spans, audition=args.audition,
            options=options, origin=Origin.cli,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InputError(_first_error(exc)) from None


def _first_error(exc: ValueError) -> str:
    """pydantic's first complaint, in words (a ValidationError is a ValueError)."""
    errors = getattr(exc, "errors", None)
    return field_problem(errors()[0]) if callable(errors) else str(exc)


def _absolute(folder: Path | None) -> Path | None:
    """Folders as absolute paths, so the paths printed (and in --json) are usable from anywhere."""
    return folder.expanduser().absolute() if folder is not None else None




class CliHooks(StandaloneHooks):
    """The pipeline's hooks for one terminal run: progress to the display, handles kept for Ctrl-C."""

    def __init__(self, display: ProgressDisplay, stops: _StopSignals, verbose: bool = False,
                 note_sent: Callable[[int, RequestHandle], None] | None = None) -> None:
        self.display = display
        self.note_sent = note_sent  # what each accepted request was for, so resuming it can be checked
        self.verbose = verbose  # the service's log lines only with -v
        self.stops = stops
        self.handles: dict[int, RequestHandle] = {}
        self.submit_in_flight = False  # a submit was sent and its answer not yet read

    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        self.display.update(state.value, fraction, message, eta)
        self.stops.check()

    def submitting(self, step: int) -> None:
        self.submit_in_flight = True

    def submitted(self, step: int, handle: RequestHandle) -> None:
        self.handles[step] = handle
        self.submit_in_flight = False
        if self.note_sent is not None:
            self.note_sent(step, handle)

    def not_submitted(self, step: int) -> None:
        self.submit_in_flight = False

    def service_log(self, line: str) -> None:
        if self.verbose:
            self.display.service_line(line)
        self.stops.check()


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BridgeError as err:
        if args.json and len(args.source) == 1:  # machine-readable too; main() still prints it and exits
            print(safe_json(_error_summary(err)))
        raise


def _run(args: argparse.Namespace) -> int:
    remove_left_behind(Path(tempfile.gettempdir()), WORK_PREFIX)  # work folders of killed runs
    first = build_request(args, args.source[0])  # the prompt and options are every file's
    library = PresetLibrary.default(project_dir=first.project_dir, quiet=True)
    recipe = recipe_for(first, library)  # a broken preset asked for is refused here, naming its problems
    if library.errors() and not args.quiet:  # others' problems: one line, not a log line per problem
        print("sam-bridge: note: some preset files have problems, so their presets cannot be used; "
              "`sam-bridge presets list` names them.", file=sys.stderr)
    if args.estimate:
        return print_estimates(args, recipe, build_request)
    if args.resume_request and args.local:
        raise InputError("--resume-request cannot be used with --local: the built-in stand-in's requests end "
                         "with the run that made them.", hint="Run the command again without --resume-request.")
    if args.resume_request and (len(args.source) > 1 or len(args.resume_request) > len(recipe.steps)):
        raise InputError("--resume-request names the requests of one file: one per step of its preset "
                         f"({len(recipe.steps)} here).",
                         hint="Give one FILE, and the request ids the broken-off run printed, in order.")
    if len(args.source) == 1:
        probe_source(first.source)  # a bad file is reported before any key check or service start
    choice = ServiceChoice(local=args.local, url=args.service_url)
    if args.local_delay is not None:
        choice = replace(choice, local_delay=args.local_delay)
    with open_client(choice) as client:
        if choice.is_stand_in and not args.json:
            print(f"sam-bridge: {choice.describe()}", file=sys.stderr)
        if len(args.source) > 1:
            return _separate_each(client, recipe, args, choice)
        result, seconds = _separate(client, first, recipe, args, choice)
    print_result(result, args.json, seconds, whole_of(first, recipe))
    return 0


def _separate(client: FalClient, request: SeparationRequest, recipe: Recipe, args: argparse.Namespace,
              choice: ServiceChoice) -> tuple[JobResult, float]:
    """One file through the pipeline with a progress display; Ctrl-C cancels at the service."""
    began = time.monotonic()
    pipeline = Pipeline(client, upload_bits=args.upload_bits, service=choice.service_name)
    service = pipeline.service_name()
    request_ids = [request_id.strip() for request_id in args.resume_request]
    for unchecked in check_resumable(request_ids, request, recipe, service, pipeline.bills()):  # before any write
        print(safe_text(f"sam-bridge: note: there is no record on this machine of what request {unchecked} was "
                        f"sent for, so it cannot be checked to be “{request.source.name}”'s."), file=sys.stderr)

    def note_sent(step: int, handle: RequestHandle) -> None:
        record_sent(handle.request_id, request.source, what_was_sent(request, recipe, step, service))

    display = ProgressDisplay(enabled=sys.stderr.isatty() and not args.quiet)
    stops = _StopSignals()
    # the built-in stand-in's requests end with this run: nothing to resume, nothing to note
    hooks = CliHooks(display, stops, verbose=getattr(args, "verbose", 0) > 0,
                     note_sent=None if choice.local else note_sent)
    resume = {step: client.handle_for(request_id) for step, request_id in enumerate(request_ids)}
    hooks.handles.update(resume)  # Ctrl-C cancels those too
    owner = owner_tag()  # in the names of what this run leaves, should it be killed (SIGKILL)
    with stops, tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{owner}-") as work, display:
        try:
            result = pipeline.run(request, recipe, hooks, Path(work), resume=resume, temp_tag=f"cli{owner}")
            display.update(JobState.done.value, 1.0, "Stems written")
        except KeyboardInterrupt as stop:
            raise _cancel_on_ctrl_c(client, hooks, stop, None if choice.local else request.source.name) from None
        except BridgeError as err:
            # the built-in stand-in's requests end with this run: nothing to collect later
            _say_what_to_do(err, request, {} if choice.local else hooks.handles, choice, pipeline.bills(),
                            resumed=bool(resume))
            raise
    return result, time.monotonic() - began


def _say_what_to_do(err: BridgeError, request: SeparationRequest, accepted: dict[int, RequestHandle],
                    choice: ServiceChoice, billed: bool, resumed: bool) -> None:
    """The hint of a run that broke off. Once the service has accepted a request, running the command again
    sends (and on fal pays for) it again: say how to collect it instead, unless that result is of no use,
    or the error is about a submit whose answer was lost (its own hint says what to check)."""
    if not accepted:
        if type(err) is ServiceUnavailable:  # a subclass (RateLimited) has its own hint
            err.hint = _unavailable_hint(choice)
        elif isinstance(err, DiskFull):  # its hint says what to fix; this run has no job to retry
            free = ("the built-in stand-in charges nothing" if choice.local
                    else "nothing had reached the service, so nothing was charged")
            err.hint = f"{err.hint} Then run the same command again: {free}."
        return
    if err.results_unusable and resumed:  # asking again gives the same: only a new request helps
        err.hint = ("Run the same command without --resume-request to send it anew"
                    f"{' (charged again)' if billed else ''}.")
        return
    if err.results_unusable or isinstance(err, (InputError, Cancelled, SubmitUncertain)):
        return
    ids = ", ".join(accepted[step].request_id for step in sorted(accepted))
    again = f"run the same command for “{request.source.name}” with " + " ".join(
        f"--resume-request {accepted[step].request_id}" for step in sorted(accepted))
    instead = "without paying again" if billed else "instead of running it again"
    if isinstance(err, OutputError):  # the result was fetched: the separation itself is done
        err.hint = (f"{err.hint} The separation is done (request {ids}): once that is fixed, {again} to "
                    f"collect it {instead}.")
    else:
        charged = ", so it may still finish and be charged" if billed else ""
        err.hint = (f"The service had accepted it (request {ids}){charged}. To collect the result {instead}, "
                    f"{again} once the service answers.")


class _Stopped(KeyboardInterrupt):
    """SIGTERM (`kill`, a logout) or SIGHUP (the terminal closed): a stop like Ctrl-C's, so a request at
    the service is cancelled rather than left running (and billed) with nobody to collect it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does, while it lasts. A stop is also remembered: raised
    inside a write to a terminal that is gone, it is replaced by that write's error, and `check()` (after
    each display call) raises it again rather than let the run go on."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            # An ignored signal stays ignored: under `nohup` a closed terminal must not stop the run.
            if signum is not None and signal.getsignal(signum) != signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        raise _Stopped(signum)

    def check(self) -> None:
        if self.received is not None:
            raise _Stopped(self.received)


# A file that cannot be used, or whose stems cannot be written, is skipped; any other error (the key, the
# service, a Ctrl-C) concerns every file and stops the run.
_PER_FILE_ERRORS = ("bad_source", "output", "disk_full")  # a full or read-only disk: that file's folder


def _separate_each(client: FalClient, recipe: Recipe, args: argparse.Namespace, choice: ServiceChoice) -> int:
    """Each file in turn; what became of each, and the exit code of the first failure (0 when none)."""
    summaries: list[dict[str, Any]] = []
    first_failure = 0
    for number, source in enumerate(args.source, start=1):
        if not args.quiet and not args.json:  # before that file's bar, so the bar is known to be its
            print(safe_text(f"[{number}/{len(args.source)}] {source.name}"), file=sys.stderr, flush=True)
        try:
            request = build_request(args, source)
            probe_source(request.source)
            result, seconds = _separate(client, request, recipe, args, choice)
        except BridgeError as err:
            summaries.append({"source": str(source), **_error_summary(err)})
            if err.kind not in _PER_FILE_ERRORS:
                if args.json:
                    print(safe_json(summaries))
                raise
            first_failure = first_failure or err.exit_code
            if not args.json:
                print(safe_text(f"sam-bridge: {source.name}: {err}", keep_newlines=True), file=sys.stderr)
            continue
        summaries.append({"source": str(source), "ok": True, **result_summary(result, seconds)})
        if not args.json:
            print(safe_text(f"{source.name}:"))
            print_result(result, False, seconds, whole_of(request, recipe))
    if args.json:
        print(safe_json(summaries))
    else:
        done = sum(1 for summary in summaries if summary["ok"])
        print(f"sam-bridge: {done} of {len(summaries)} files separated.", file=sys.stderr)
    return first_failure


def _error_summary(err: BridgeError) -> dict[str, Any]:
    return {"ok": False, "error": err.kind, "message": err.message, "hint": err.hint}


def _cancel_on_ctrl_c(client: FalClient, hooks: CliHooks, stop: KeyboardInterrupt,
                      collectable: str | None) -> Cancelled:
    """Cancel every request the service accepted; the pipeline already removed its temp files.
    `collectable`: the source's name when finished requests can be collected later (not the stand-in's)."""
    by = signal.Signals(stop.signum).name if isinstance(stop, _Stopped) else "Ctrl-C"
    answers = {step: client.cancel(handle) for step, handle in sorted(hooks.handles.items())}
    cancelled = _cancelled_message(by, list(answers.values()), hooks)
    finished: list[str] = []  # the steps from the first on that the service had finished: --resume-request takes them
    for step, answer in answers.items():
        if step != len(finished) or answer != "ALREADY_COMPLETED":
            break
        finished.append(hooks.handles[step].request_id)
    if finished and collectable:
        cancelled.hint = ("To collect what was finished without paying for it again, run the same command for "
                          f"“{collectable}” with " + " ".join(f"--resume-request {rid}" for rid in finished) + ".")
    if isinstance(stop, _Stopped):
        cancelled.exit_code = 128 + stop.signum  # what a shell reports for a process ended by that signal
    return cancelled


def _cancelled_message(by: str, answers: list[str], hooks: CliHooks) -> Cancelled:
    if hooks.submit_in_flight:
        return Cancelled(f"Cancelled by {by} while the job was being sent: it may have reached the service "
                         "and run there (and be charged). No stem was written.",
                         hint="Check the requests list in your fal dashboard; cancel it there if it runs.")
    if not answers:
        return Cancelled(f"Cancelled by {by} before the job reached the service: nothing was charged "
                         "and no stem was written.")
    if "ALREADY_COMPLETED" in answers:
        return Cancelled(f"Cancelled by {by}; the service had already finished the separation (so it "
                         "counts as used), but no stem was written.")
    return Cancelled(f"Cancelled by {by}; the request at the service was cancelled and no stem was written.")


def _unavailable_hint(choice: ServiceChoice) -> str:
    # The daemon retries waiting jobs; this one-shot command does not, so the hint says what to do.
    if choice.url:
        return (f"Is the service at {choice.url} running? Start it with `sam-bridge local-service`, "
                "or leave out --service-url to use SAM Audio on fal.")
    return "Check your internet connection, then run the command again in a few minutes."


def result_summary(result: JobResult, seconds: float) -> dict[str, Any]:
    return {
        "stems": {label: str(path) for label, path in result.stems.items()},
        "manifest": str(result.manifest),
        "flags": result.flags,
        "request_ids": [step.request_id for step in result.steps],
        "estimated_cost": result.estimated_cost,
        "seconds": round(seconds, 3),
    }


def print_result(result: JobResult, as_json: bool, seconds: float, whole: FileEstimate | None = None) -> None:
    if as_json:
        extra = {} if whole is None else {"audition": {"seconds": whole.seconds, "whole_seconds": whole.whole_seconds,
                                                       "whole_cost": whole.whole_cost, "currency": whole.currency}}
        print(safe_json({"ok": True, **result_summary(result, seconds), **extra}))
        return
    for label, path in result.stems.items():
        print(safe_text(f"{label}: {path}"))
    print(safe_text(f"manifest: {result.manifest}"))
    for flag in result.flags:
        print(f"{flag_kind(flag)}: {describe_flag(flag)} (see the manifest)", file=sys.stderr)
    if whole is not None and whole.whole_cost is not None and whole.whole_seconds is not None:
        print(f"audition of {whole.seconds:.1f} s; the whole {whole.whole_seconds:.1f} s would cost "
              f"{money(whole.whole_cost, whole.currency)} ({whole.requests} request"
              f"{'s' if whole.requests != 1 else ''}): run it without --audition.", file=sys.stderr)

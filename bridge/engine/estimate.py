"""What a request would send and cost, found without sending anything (`--estimate`, `/sam/estimate`,
`"estimate_only"`), and the audition's window of the part."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.audio.audition import loudest_window
from bridge.audio.source import SourceInfo, frame_range, probe_source
from bridge.common.cost import FileEstimate, PriceTable
from bridge.common.errors import SourceError
from bridge.common.request import SeparationRequest, Span
from bridge.presets.recipe import Recipe


def part_of(request: SeparationRequest, source: SourceInfo) -> tuple[int, int]:
    """(start_frame, frames) the request separates: its part, or the audition window of that part.

    A bounded part (a `length`, as every DAW sends for the selected item or clip) auditions its loudest
    window; only an open part (a `start` without a `length`, the CLI's `--start`) auditions from `start`."""
    start_frame, frames = frame_range(source, request.start, request.length)
    if request.audition is not None:
        start_frame, frames = loudest_window(source, start_frame, frames, request.audition,
                                             from_start=request.start is not None and request.length is None)
    return start_frame, frames


def check_spans(recipe: Recipe, source: SourceInfo, start_frame: int, frames: int) -> bool:
    """Refuse a span that starts at or after the end of the audio sent (`frames` from `start_frame`): the
    service would find nothing there and charge all the same. Spans count from the start of what is sent.
    True when a span runs past that end (it is sent cut there: see `spans_sent`)."""
    runs_past = False
    for step in recipe.steps:
        for span in step.spans or ():
            if round(span.start * source.samplerate) < frames:
                runs_past = runs_past or span.end > frames / source.samplerate
                continue
            whole = start_frame == 0 and frames == source.frames
            what = f"“{source.path.name}”" if whole else f"the part of “{source.path.name}” sent"
            raise SourceError(
                f"The span {span.start:g}–{span.end:g} s starts at {span.start:g} s, after the end of {what} "
                f"({frames / source.samplerate:.2f} s long): nothing would be separated there, and it would "
                "still be charged.",
                "Give spans inside the audio: spans count from the start of the part sent (the whole file "
                "unless a start is given).")
    return runs_past


def spans_sent(spans: Sequence[Span], seconds: float) -> list[Span]:
    """The spans as sent for `seconds` of audio: one running past its end is cut there (what the audio has;
    a service's behaviour for an end past the audio is not documented)."""
    return [span if span.end <= seconds else span.model_copy(update={"end": seconds}) for span in spans]


def estimate(request: SeparationRequest, recipe: Recipe, prices: PriceTable) -> FileEstimate:
    """Seconds, requests and cost at the configured prices (what SAM Audio on fal would charge)."""
    source = probe_source(request.source)
    start_frame, frames = part_of(request, source)
    check_spans(recipe, source, start_frame, frames)
    seconds = frames / source.samplerate
    cost = round(sum(prices.estimate(seconds, step.options.reranking_candidates) for step in recipe.steps), 4)
    whole_seconds = whole_cost = None
    if request.audition is not None:
        _, whole_frames = frame_range(source, request.start, request.length)
        whole_seconds = round(whole_frames / source.samplerate, 3)
        whole_cost = round(sum(prices.estimate(whole_seconds, step.options.reranking_candidates)
                               for step in recipe.steps), 4)
    return FileEstimate(source=str(request.source), seconds=round(seconds, 3), requests=len(recipe.steps),
                        estimated_cost=cost, currency=prices.currency, whole_seconds=whole_seconds,
                        whole_cost=whole_cost)

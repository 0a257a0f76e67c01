"""What a request would send and cost, found without sending anything (`--estimate`, `/sam/estimate`,
`"estimate_only"`), and the audition's window of the part."""

from __future__ import annotations

from bridge.audio.audition import loudest_window
from bridge.audio.source import SourceInfo, frame_range, probe_source
from bridge.common.cost import FileEstimate, PriceTable
from bridge.common.request import SeparationRequest
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


def estimate(request: SeparationRequest, recipe: Recipe, prices: PriceTable) -> FileEstimate:
    """Seconds, requests and cost at the configured prices (what SAM Audio on fal would charge)."""
    source = probe_source(request.source)
    _, frames = part_of(request, source)
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

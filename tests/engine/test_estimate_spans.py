"""The spans sent with a part: one running past the end of the audio sent is cut at that end."""

from __future__ import annotations

from bridge.common.request import Span
from bridge.engine.estimate import spans_sent


def test_a_span_running_past_the_end_is_sent_cut_there_the_others_as_given() -> None:
    spans = [Span(start=0.5, end=1.0), Span(start=2.0, end=9.0, include=False), Span(start=2.5, end=3.0)]
    assert spans_sent(spans, 3.0) == [Span(start=0.5, end=1.0), Span(start=2.0, end=3.0, include=False),
                                      Span(start=2.5, end=3.0)]

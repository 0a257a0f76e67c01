"""A span as text (the CLI's --span, OSC's spans, a request file's "spans"): one parser, plain decimals only."""

from __future__ import annotations

import pytest

from bridge.common.request import Span


@pytest.mark.parametrize(("text", "span"), [
    ("2-9.5", (2.0, 9.5, True)),
    ("4-5:exclude", (4.0, 5.0, False)),
    ("4-5:include", (4.0, 5.0, True)),
    (" 2-9.5 : exclude", (2.0, 9.5, False)),  # refused before, though spaces around the numbers were taken
    ("2 - 9.5", (2.0, 9.5, True)),
    (".5-1", (0.5, 1.0, True)),
])
def test_a_span_written_as_text(text: str, span: tuple[float, float, bool]) -> None:
    parsed = Span.parse(text)
    assert (parsed.start, parsed.end, parsed.include) == span


# float() alone took Python's digit grouping, other scripts' digits and a dangling kind separator
@pytest.mark.parametrize("text", ["1_000-2_000", "\u0663-\u0665", "2-9.5:", "nan-2", "2-9.5:maybe", "-2-3", "2"])
def test_a_span_that_is_not_plain_decimals_is_refused_in_words(text: str) -> None:
    with pytest.raises(ValueError) as err:
        Span.parse(text)
    assert "give START-END in seconds, e.g. 12.5-20" in str(err.value)

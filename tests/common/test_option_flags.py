"""One declaration of the options (issue #23, item 6): the CLI flags and OSC's `options` words come from the
same models that presets and request files validate against."""

from __future__ import annotations

import pytest

from bridge.common.options import OutputOptions, ServiceOptions, option_flags, parse_option_text


def test_every_declared_option_has_a_flag() -> None:
    declared = set(ServiceOptions.model_fields) | set(OutputOptions.model_fields)
    assert {name for name, _flag, _kwargs in option_flags()} == declared
    flags = {name: flag for name, flag, _kwargs in option_flags()}
    assert flags["predict_spans"] == "--predict-spans" and flags["reranking_candidates"] == "--candidates"


def test_osc_option_words_parse_to_typed_values() -> None:
    assert parse_option_text("reranking_candidates=3 predict_spans=true, acceleration=fast") == {
        "reranking_candidates": 3, "predict_spans": True, "acceleration": "fast"}
    assert parse_option_text("") == {}
    with pytest.raises(ValueError, match="unknown option 'candidates'"):
        parse_option_text("candidates=3")
    with pytest.raises(ValueError, match="is not key=value"):
        parse_option_text("predict_spans")

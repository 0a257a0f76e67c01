"""The manifest's null test: an exact null and a NaN/infinite one both have no JSON number, and must still
be told apart (both were written as `null_test_dbfs: null`)."""

from __future__ import annotations

import json
import math

from bridge.engine.manifest import null_test_verdict


def test_an_exact_null_and_a_non_finite_one_are_told_apart() -> None:
    assert null_test_verdict(-math.inf) == "exact"
    assert null_test_verdict(math.inf) == "not-finite"  # conform's tally turns a NaN into +inf
    assert null_test_verdict(math.nan) == "not-finite"
    assert null_test_verdict(-143.2) == "measured"
    assert json.loads(json.dumps({"null_test": null_test_verdict(math.nan)}))["null_test"] == "not-finite"

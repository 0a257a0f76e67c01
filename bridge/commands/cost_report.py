"""What a `sam-bridge separate` run would cost: `--estimate`'s output (nothing is sent), and for an
audition what the whole part would cost."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bridge.common.config import load_config
from bridge.common.cost import FileEstimate, money
from bridge.common.redact import safe_json, safe_text
from bridge.common.request import SeparationRequest
from bridge.engine.estimate import estimate
from bridge.presets.recipe import Recipe


def print_estimates(args: argparse.Namespace, recipe: Recipe,
                    build_request: Callable[[argparse.Namespace, Path], SeparationRequest]) -> int:
    """Per file and in total what the run would send and cost; nothing is uploaded or sent."""
    config = load_config()
    estimates = [estimate(build_request(args, source), recipe, config.prices) for source in args.source]
    total = round(sum(e.estimated_cost for e in estimates), 4)
    seconds = round(sum(e.seconds for e in estimates), 3)
    requests = sum(e.requests for e in estimates)
    currency = config.prices.currency
    if args.json:
        print(safe_json({"ok": True, "estimate": True, "files": [e.model_dump() for e in estimates],
                         "total": {"seconds": seconds, "requests": requests, "estimated_cost": total,
                                   "currency": currency},
                         "confirm_above": config.confirm_above, "rounding": config.prices.rounding}))
        return 0
    for e in estimates:
        print(safe_text(e.line()))  # the file's name is whoever made the file's
    if len(estimates) > 1:
        print(f"total: {seconds:.1f} s, {requests} requests, {money(total, currency)}")
    print("Nothing was sent (estimate at the configured prices, as SAM Audio on fal would charge).", file=sys.stderr)
    return 0


def whole_of(request: SeparationRequest, recipe: Recipe) -> FileEstimate | None:
    """For an audition: what separating the whole part would send and cost."""
    return estimate(request, recipe, load_config().prices) if request.audition is not None else None

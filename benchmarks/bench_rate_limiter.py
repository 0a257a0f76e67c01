"""OSC rate limiter: memory after 1,000 / 10,000 / 100,000 distinct senders (#19 item 6).

    python benchmarks/bench_rate_limiter.py [--runs 5]

Each sender is a distinct IPv4 address; the server's path is replayed (`allows`, then `record` for half
of them: the other half are refused before they are counted, as a bad path is). Memory is the limiter's
own allocations (tracemalloc), median of the runs with min-max. Goal: flat, i.e. the figure at 100,000
senders is no more than 1.1x the figure at 10,000 (the table is bounded by `max_keys`): the peer is the
same limiter's figure at 10,000 senders in the same run; both count every allocation tracemalloc sees
while the senders are replayed (the limiter's table and per-sender records, and the keys made for it).
Exit 1 if not flat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tracemalloc

from _common import ratio_spread, report, spread

from bridge.osc.guard import RateLimiter, host_key

SIZES = (1_000, 10_000, 100_000)


def limiter_bytes(senders: int) -> tuple[int, int]:
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    limiter = RateLimiter(20, 60.0)
    for n in range(senders):
        key = host_key(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        if limiter.allows(key) and n % 2 == 0:
            limiter.record(key)
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    return grown, len(limiter)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians = {}
    kib: dict[int, list[float]] = {}
    for size in SIZES:
        figures = [limiter_bytes(size) for _ in range(args.runs)]
        sizes = [f[0] for f in figures]
        medians[size] = statistics.median(sizes)
        kib[size] = [value / 1024 for value in sizes]
        print(f"{size:>7,} senders: {medians[size] / 1024:8.1f} KiB (min {min(sizes) / 1024:.1f}, "
              f"max {max(sizes) / 1024:.1f}), {figures[0][1]} keys kept")
    ratio = medians[SIZES[-1]] / max(medians[SIZES[1]], 1)
    print(f"100,000 vs 10,000 senders: {ratio:.2f}x (goal <= 1.10x: flat)")
    peer = f"the same limiter after {SIZES[1]:,} senders: {spread(kib[SIZES[1]], unit=' KiB')}"
    rows = [{"figure": f"OSC rate limiter: memory after {size:,} distinct senders ({args.runs} runs)",
             "measured": spread(kib[size], unit=" KiB"),
             "floor": peer if size == SIZES[-1] else "-",
             "ratio": ratio_spread(kib[size], kib[SIZES[1]]) if size == SIZES[-1] else "-",
             "goal": "<= 1.10 (flat)" if size == SIZES[-1] else "-"} for size in SIZES]
    report("bench_rate_limiter", rows)
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())

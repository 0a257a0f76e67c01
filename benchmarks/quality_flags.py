"""The quality flags on labelled cases (tests/audio/quality_cases.py): each case's measures, then hit and
false-alarm rates of `target-unlikely` at the thresholds in bridge/audio/quality.py. Run from the worktree:
`python -m benchmarks.quality_flags`."""

from __future__ import annotations

import sys

from bridge.audio.quality import CORRELATION_MIN, EXPLAINED_MIN, QualityMeter
from tests.audio.quality_cases import RATE, cases


def main() -> int:
    hits = misses = false_alarms = passes = 0
    print(f"thresholds: explained < {EXPLAINED_MIN}, correlation < {CORRELATION_MIN}")
    print(f"{'case':<48} {'label':<9} {'explained':>9} {'corr':>6}  flags")
    for name, label, source, target, residual in cases():
        meter = QualityMeter(RATE)
        meter.feed(source, target, residual)
        report = meter.report()
        flagged = "target-unlikely" in report.flags
        if label == "unlikely":
            hits += flagged
            misses += not flagged
        else:
            false_alarms += flagged
            passes += not flagged
        print(f"{name:<48} {label:<9} {report.explained:>9.3f} {report.correlation:>6.3f}  "
              f"{','.join(report.flags) or '-'}")
    print(f"hit rate {hits}/{hits + misses}, false alarms {false_alarms}/{false_alarms + passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The quality flags on labelled cases (tests/audio/quality_cases.py): each case's measures, then hit and
false-alarm rates of `target-unlikely` at the thresholds in bridge/audio/quality.py. No clock: the figures
are counts and measures, the same on every machine. The floor is each threshold; the genuine cases'
lowest explained share and correlation against it say how much margin the thresholds leave.

    python benchmarks/bench_quality_flags.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import report  # noqa: E402

from bridge.audio.quality import CORRELATION_MIN, EXPLAINED_MIN, QualityMeter  # noqa: E402
from tests.audio.quality_cases import RATE, cases  # noqa: E402


def spread_of(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> int:
    hits = misses = false_alarms = passes = 0
    genuine: dict[str, list[float]] = {"explained": [], "correlation": []}
    print(f"thresholds: explained < {EXPLAINED_MIN}, correlation < {CORRELATION_MIN}")
    print(f"{'case':<48} {'label':<9} {'explained':>9} {'corr':>6}  flags")
    for name, label, source, target, residual in cases():
        meter = QualityMeter(RATE)
        meter.feed(source, target, residual)
        measured = meter.report()
        flagged = "target-unlikely" in measured.flags
        if label == "unlikely":
            hits += flagged
            misses += not flagged
        else:
            false_alarms += flagged
            passes += not flagged
            genuine["explained"].append(measured.explained)
            genuine["correlation"].append(measured.correlation)
        print(f"{name:<48} {label:<9} {measured.explained:>9.3f} {measured.correlation:>6.3f}  "
              f"{','.join(measured.flags) or '-'}")
    print(f"hit rate {hits}/{hits + misses}, false alarms {false_alarms}/{false_alarms + passes}")
    thresholds = f"flag below explained {EXPLAINED_MIN} or correlation {CORRELATION_MIN}"
    rows = [
        {"figure": "`target-unlikely` on the must-flag cases (noise fault, absent prompt): hits",
         "measured": f"{hits}/{hits + misses}", "floor": thresholds, "goal": "all"},
        {"figure": "`target-unlikely` on the genuine cases (band targets, speech in music): false alarms",
         "measured": f"{false_alarms}/{false_alarms + passes}", "floor": thresholds, "goal": "0"},
    ]
    for measure, threshold in (("explained", EXPLAINED_MIN), ("correlation", CORRELATION_MIN)):
        values = genuine[measure]
        if values:
            rows.append({"figure": f"genuine cases: {measure}, median (min–max)", "measured": spread_of(values),
                         "floor": f"threshold {threshold}", "ratio": f"{min(values) / threshold:.2f} (lowest case)",
                         "goal": f">= {threshold} in every case"})
    report("bench_quality_flags", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

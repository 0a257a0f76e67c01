"""Team mode throughput: 1, 2 and 3 daemons (real processes, concurrency 4 each) on one shared hot folder,
one team journal on a throwaway PostgreSQL cluster and ONE stand-in with a fixed service time.

For each daemon count: total time from the last file dropped to the last stems written, against the ideal
(service time × jobs / total concurrency); the wait from a file's drop to its claim (p50/p99: mostly
queueing for a free slot); database statements per job (BEGIN and COMMIT included, from the server's own
pg_stat_statements: every one a round trip); and each daemon's share of the jobs. Then the claim statement
itself under contention (3 claimers race for each file version): p50/p99. Every run checks that each file
was done exactly once (the stand-in's submit counter). Goal: ≤ 1.10 × ideal at 3 daemons. The ideal is
the stand-in's fixed service time alone, perfectly packed into every slot: it leaves out the upload,
download, conform, the claims and the hot folder's settle window, which the measured time includes; the
1-daemon figure of the same runs is the peer that shows what those cost without any sharing.

    python benchmarks/bench_team.py                    # 300 jobs, 2 s service time, 5 runs each
    python benchmarks/bench_team.py --jobs 120 --repeats 3   # some 8 minutes
    [--service-time 2] [--daemons 1,2,3] [--claim-files 300]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from _common import ratio_spread, report, spread  # noqa: E402

from tests.conftest import DaemonProcess  # noqa: E402
from tests.team.pg_cluster import PgCluster, find_bin_dir  # noqa: E402
from tests.team.team_helpers import StandIn, drop_audio, stems_for, team_config, workstation_dirs  # noqa: E402

GOAL = 1.10
CONCURRENCY = 4
SECONDS = 0.2  # audio per job: short, so the fixed service time is what the daemons wait for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def one_run(cluster: PgCluster, stand_in: StandIn, root: Path, daemons: int, jobs: int,
            service_time: float) -> dict[str, float]:
    dsn = cluster.new_database()
    cpu_before = _children_cpu()
    shared = root / "shared"
    shared.mkdir(parents=True)
    running = []
    for n in range(daemons):
        dirs = workstation_dirs(root, f"studio-{n}")
        running.append(DaemonProcess(dirs, stand_in.url, config=team_config(dsn, f"studio-{n}", shared,
                                                                            concurrency=CONCURRENCY, lease=10)))
    for daemon in running:
        daemon.start(timeout=60)
    sources_dir = root / "prepared"
    sources_dir.mkdir()
    prepared = [drop_audio(sources_dir / f"take{n:03d}.wav", SECONDS, n) for n in range(jobs)]
    submits_before = stand_in.stats()["submits"]
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    dropped: dict[str, float] = {}
    for path in prepared:
        os.replace(path, shared / path.name)
        dropped[path.name] = time.time()
    start = time.monotonic()
    pending = [shared / name for name in dropped]
    while pending:
        pending = [p for p in pending if not stems_for(p)[2].exists()]
        time.sleep(0.02)
    total = time.monotonic() - start
    time.sleep(0.5)
    submits = stand_in.stats()["submits"] - submits_before
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = {row[0]: float(row[1]) for row in conn.execute(
            "SELECT source, EXTRACT(EPOCH FROM claimed_at) FROM claims").fetchall()}
        shares: dict[str, int] = dict(conn.execute("SELECT owner, count(*) FROM jobs GROUP BY owner").fetchall())
        done = conn.execute("SELECT count(*) FROM jobs WHERE state='done'").fetchone()
        database = conn.execute("SELECT current_database()").fetchone()
        stages = stage_times(conn)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        calls = conn.execute("SELECT COALESCE(SUM(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                             "ON d.oid = s.dbid WHERE d.datname = %s", (database[0] if database else "",)).fetchone()
    for daemon in running:
        daemon.stop()
    cpu = _children_cpu() - cpu_before  # the daemons' own CPU (reaped now), from start to stop
    if submits != jobs or (done and done[0] != jobs):
        raise SystemExit(f"NOT exactly once: {submits} submits, {done} done for {jobs} files")
    waits = [claimed[name] - at for name, at in dropped.items() if name in claimed]
    return {"total": total, "ideal": service_time * jobs / (CONCURRENCY * daemons),
            "wait_p50": percentile(waits, 0.5), "wait_p99": percentile(waits, 0.99),
            "statements_per_job": float(calls[0] if calls else 0) / jobs, "cpu_per_job": cpu / jobs,
            "cpu_share": cpu / total / (os.cpu_count() or 1), "stages": stages,
            "shares": "/".join(str(shares.get(f"studio-{n}", 0)) for n in range(daemons))}  # type: ignore[dict-item]


STAGES = ("queued", "preparing", "uploading", "submitted", "running", "downloading", "conforming", "done")


def stage_times(conn: psycopg.Connection) -> str:  # type: ignore[type-arg]
    """Median seconds a job spent in each state (from the journal's history): where the time goes."""
    rows = conn.execute("SELECT job_id, state, MIN(at) FROM history GROUP BY job_id, state").fetchall()
    at: dict[str, dict[str, float]] = {}
    for job, state, when in rows:
        at.setdefault(job, {})[state] = float(when)
    parts = []
    for before, after in pairwise(STAGES):
        spans = [t[after] - t[before] for t in at.values() if before in t and after in t]
        if spans:
            parts.append(f"{before} {statistics.median(spans):.2f}")
    return ", ".join(parts)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def claim_latency(cluster: PgCluster, root: Path, files: int = 300, claimers: int = 3) -> tuple[float, float]:
    """The claim statement itself: `claimers` daemons race for each of `files` file versions."""
    from bridge.common.file_gate import FileSnapshot
    from bridge.engine.journal.postgres import PostgresJournal

    dsn = cluster.new_database()
    journals = [PostgresJournal(dsn, f"racer-{n}", daemon=True, lease=10) for n in range(claimers)]
    stores = [j.claims(j.instance) for j in journals]
    folder = root / "race"
    folder.mkdir()
    paths = []
    for n in range(files):
        path = folder / f"f{n:04d}.wav"
        path.write_bytes(b"x" * (n + 1))
        paths.append(path)
    times: list[float] = []
    lock = threading.Lock()
    wins = [0]

    def racer(store: object) -> None:
        for path in paths:
            snapshot = FileSnapshot.of(path)
            assert snapshot is not None
            began = time.perf_counter()
            outcome = store.try_claim(path, snapshot)  # type: ignore[attr-defined]
            took = time.perf_counter() - began
            with lock:
                times.append(took)
                if outcome.claim is not None:
                    wins[0] += 1
                    store.mark_done(outcome.claim)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=racer, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for journal in journals:
        journal.close()
    if wins[0] != files:
        raise SystemExit(f"claims: {wins[0]} winners for {files} files")
    return percentile(times, 0.5), percentile(times, 0.99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--service-time", type=float, default=2.0, help="the stand-in's fixed seconds per job")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--daemons", default="1,2,3")
    parser.add_argument("--claim-files", type=int, default=300, help="file versions the claimers race for")
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("PostgreSQL is not installed (/usr/lib/postgresql/*/bin): nothing to measure", file=sys.stderr)
        report("bench_team", [{"figure": "team mode", "measured": "skipped: PostgreSQL is not installed "
                               "(/usr/lib/postgresql/*/bin)"}])
        return 2
    counts = [int(n) for n in args.daemons.split(",")]
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="bench-team-") as tmp:
        root = Path(tmp)
        cluster = PgCluster(bin_dir, stat_statements=True).start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        stand_in = StandIn(root / "stand-in.log", job_time=args.service_time, concurrency=4 * max(counts) + 4)
        try:
            for repeat in range(args.repeats):
                for n in counts:  # interleaved: a slow spell of the shared machine hits every count alike
                    run = one_run(cluster, stand_in, root / f"r{repeat}-d{n}", n, args.jobs, args.service_time)
                    results[n].append(run)
                    print(f"run {repeat + 1}, {n} daemon(s): {run['total']:.2f} s (ideal {run['ideal']:.2f} s), "
                          f"shares {run['shares']}, daemons' CPU {run['cpu_per_job'] * 1000:.0f} ms/job "
                          f"({run['cpu_share']:.0%} of the machine); median s per state: {run['stages']}",
                          flush=True)
            p50, p99 = claim_latency(cluster, root, files=args.claim_files)
        finally:
            stand_in.stop()
            cluster.stop()
    print(f"\n{args.jobs} jobs × {args.service_time} s service time, concurrency {CONCURRENCY} per daemon, "
          f"{args.repeats} runs each (medians, [min–max])")
    print(f"{'daemons':>7}  {'total s':>20}  {'ideal s':>7}  {'× ideal':>18}  {'claim wait p50/p99 s':>21}  "
          f"{'stmts/job':>9}")
    for n in counts:
        runs = results[n]
        totals = [r["total"] for r in runs]
        ratios = [r["total"] / r["ideal"] for r in runs]
        print(f"{n:>7}  {statistics.median(totals):>7.2f} [{min(totals):.2f}–{max(totals):.2f}]  "
              f"{runs[0]['ideal']:>7.2f}  {statistics.median(ratios):>5.3f} [{min(ratios):.3f}–{max(ratios):.3f}]  "
              f"{statistics.median(r['wait_p50'] for r in runs):>9.2f} / "
              f"{statistics.median(r['wait_p99'] for r in runs):>6.2f}  "
              f"{statistics.median(r['statements_per_job'] for r in runs):>9.1f}")
    print(f"claim statement, 3 claimers racing for each of {args.claim_files} files: p50 {p50 * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms")
    if 3 in results:
        ratio = statistics.median(r["total"] / r["ideal"] for r in results[3])
        print(f"goal ≤ {GOAL} × ideal at 3 daemons: {ratio:.3f} — {'met' if ratio <= GOAL else 'MISSED'}")
    report("bench_team", rows(args, counts, results, p50, p99))
    return 0


def rows(args: argparse.Namespace, counts: list[int], results: dict[int, list[dict[str, float]]],
         p50: float, p99: float) -> list[dict[str, str]]:
    """The figures for run_all's table: per daemon count, total against the ideal, then the claims."""
    out = []
    for n in counts:
        runs = results[n]
        totals, ideals = [r["total"] for r in runs], [r["ideal"] for r in runs]
        out.append({
            "figure": f"{n} daemon(s) x concurrency {CONCURRENCY}, {args.jobs} jobs x {args.service_time:g} s "
                      f"service time, one shared hot folder: last drop -> last stems ({args.repeats} runs)",
            "measured": spread(totals, unit=" s"),
            "floor": f"ideal {ideals[0]:.3g} s: service time x jobs / slots only (no upload, conform, claims, "
                     "settle window)",
            "ratio": ratio_spread(totals, ideals), "goal": f"<= {GOAL} at 3 daemons" if n == 3 else "-"})
        out.append({
            "figure": f"{n} daemon(s): drop -> claim wait p50 / p99; statements per job; jobs per daemon",
            "measured": f"p50 {spread([r['wait_p50'] for r in runs], unit=' s')}, "
                        f"p99 {spread([r['wait_p99'] for r in runs], unit=' s')}; "
                        f"{spread([r['statements_per_job'] for r in runs])} statements (pg_stat_statements, "
                        f"BEGIN/COMMIT and polling included); shares {runs[-1]['shares']}; daemons' CPU "
                        f"{spread([r['cpu_per_job'] * 1000 for r in runs], unit=' ms')}/job",
            "goal": "every file exactly once (checked)"})
    out.append({"figure": f"claim statement, 3 claimers racing for each of {args.claim_files} file versions",
                "measured": f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms",
                "goal": "one winner per file (checked)"})
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""How task throughput scales with worker processes, and what the queue costs per task.

A throwaway PostgreSQL (or --database-url), one API-only `kinema serve` and `kinema worker --processes N`
for N in --workers (1, 2, 4), all real processes on this machine, the queue being procrastinate's jobs with
LISTEN/NOTIFY. For each N:

- warm-up: one task per worker, so every worker has imported torch and loaded its model (not measured);
- burst: --tasks tasks submitted at once (?wait=false from 8 client threads); throughput is tasks over the
  time from the first submit to the last completion;
- queue overhead per task: the gap a busy worker spends between finishing one task and starting its next
  (the finish transaction, the claim query, the task and job updates), from the task rows' timestamps;
- submit-to-start latency: tasks submitted one at a time to idle workers (--probes of them), from the row's
  created_at to its started_at: how fast NOTIFY wakes a worker and its claim lands.

The job: --job instant (default) is the test-only test/instant app (tests/instant_app.py) sleeping
--steps x --step-s seconds, then encoding a 720x720 clip: its size is set, and it scales with workers as a
GPU job does (each worker's own device), so what the figures show is the queue. --job tiny is the tiny LTX
model at 1:1 720p for 0.1 s, which on a CPU-only box is CPU-bound: its ratios show how many cores the box
has free, not the queue.

    PYTHONPATH=src .venv/bin/python bench/scale.py [--job instant|tiny] [--tasks 40] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, select, text
from tests.e2e.cluster import Cluster, client, wait_until
from tests.postgres import throwaway_postgres

from kinema.store.db import migrate, open_engine
from kinema.store.schema import TaskRow


def job_body(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.job == "tiny":
        return "/v1/apps/kinema/tiny/run", {"prompt": "bench", "aspect_ratio": "1:1", "duration": 0.1}
    prompt = f"steps={args.steps} step_s={args.step_s}"
    return "/v1/apps/test/instant/run", {"prompt": prompt, "aspect_ratio": "1:1", "duration": 0.1}


def finished(engine: Any, ids: list[str]) -> list[TaskRow] | None:
    with engine.connect() as connection:
        found = connection.execute(select(TaskRow).where(TaskRow.id.in_(ids))).all()
    if len(found) < len(ids) or any(row.status not in ("completed", "failed", "cancelled") for row in found):
        return None
    bad = [row for row in found if row.status != "completed"]
    if bad:
        raise SystemExit(f"{len(bad)} task(s) did not complete: {bad[0].error_code} {bad[0].error_message}")
    return list(found)


def submit_all(url: str, path: str, body: dict[str, Any], count: int) -> list[str]:
    with client(url) as api, ThreadPoolExecutor(8) as pool:
        responses = pool.map(lambda _: api.post(path, params={"wait": "false"}, json=body), range(count))
        return [r.json()["id"] for r in responses]


def gaps_ms(rows: list[Any]) -> list[float]:
    """Per worker, the idle time between the end of one task and the start of its next."""
    by_worker: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_worker[row.worker_id].append(row)
    gaps = []
    for runs in by_worker.values():
        runs.sort(key=lambda r: r.started_at)
        for previous, current in itertools.pairwise(runs):
            gaps.append((current.started_at - previous.completed_at).total_seconds() * 1000)
    return gaps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(
    cluster: Cluster, url: str, engine: Any, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    path, body = job_body(args)
    apps = "kinema/tiny" if args.job == "tiny" else "test/instant"
    parent = cluster.worker(f"workers-{workers}", "--processes", str(workers), "--apps", apps, wait=False)
    cluster.wait_serving(parent, count=workers)
    try:
        warm = submit_all(url, path, body, workers * 2)
        wait_until(lambda: finished(engine, warm), 600, "the warm-up", every=0.1)
        ids = submit_all(url, path, body, args.tasks)
        rows = wait_until(lambda: finished(engine, ids), 1800, "the burst", every=0.05)
        first = min(row.created_at for row in rows)
        last = max(row.completed_at for row in rows)
        wall = (last - first).total_seconds()
        gaps = gaps_ms(rows)
        job_s = statistics.mean(row.output_meta["timings"]["total"] for row in rows)
        latencies = []
        with client(url) as api:
            for _ in range(args.probes):
                probe = [api.post(path, params={"wait": "false"}, json=body).json()["id"]]
                row = wait_until(lambda probe=probe: finished(engine, probe), 600, "a probe", every=0.01)[0]
                latencies.append((row.started_at - row.created_at).total_seconds() * 1000)
                time.sleep(0.05)
    finally:
        parent.stop(120)
        cluster.procs.remove(parent)
    return {
        "workers": workers,
        "tasks": args.tasks,
        "wall_s": wall,
        "per_s": args.tasks / wall,
        "job_s": job_s,
        "overhead_ms": statistics.mean(gaps) if gaps else float("nan"),
        "overhead_p99_ms": percentile(gaps, 0.99) if gaps else float("nan"),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base = results[0]["per_s"]
    job = (
        "tiny LTX, 1:1 720p, 0.1 s"
        if args.job == "tiny"
        else f"instant: {args.steps} x {args.step_s} s steps"
    )
    cpus = os.cpu_count()
    print(f"\njob: {job}; {args.tasks} tasks per burst; {args.probes} probes one at a time; {cpus} CPUs")
    header = (
        f"{'workers':>7} {'wall s':>8} {'tasks/s':>8} {'vs 1':>6} {'job s':>7} {'overhead ms':>12}"
        f" {'(p99)':>7} {'start p50 ms':>13} {'p99 ms':>7}"
    )
    print(header)
    for r in results:
        print(
            f"{r['workers']:>7} {r['wall_s']:>8.2f} {r['per_s']:>8.2f} {r['per_s'] / base:>5.2f}x"
            f" {r['job_s']:>7.3f} {r['overhead_ms']:>12.1f} {r['overhead_p99_ms']:>7.1f}"
            f" {r['p50_ms']:>13.1f} {r['p99_ms']:>7.1f}"
        )
    by = {r["workers"]: r for r in results}
    if 1 in by and 2 in by:
        print(f"2 workers / 1: {by[2]['per_s'] / by[1]['per_s']:.2f}x (target >= 1.8x)")
    if 2 in by and 4 in by:
        print(f"4 workers / 2: {by[4]['per_s'] / by[2]['per_s']:.2f}x (target >= 1.0x)")
    worst = max(r["overhead_ms"] for r in results)
    print(f"queue overhead per task: at most {worst:.1f} ms (target < 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", choices=["instant", "tiny"], default="instant")
    parser.add_argument("--tasks", type=int, default=40, help="tasks per burst")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to measure")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--probes", type=int, default=20, help="one-at-a-time tasks for the start latency")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: a throwaway one)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with ExitStack() as stack:
        server = args.database_url or stack.enter_context(throwaway_postgres())
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kinema-scale-")))
        name = f"scale_{uuid.uuid4().hex[:8]}"
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url_db = f"{server}/{name}"
        engine = open_engine(url_db)
        migrate(engine)
        (root / "data" / "models").mkdir(parents=True)
        if args.job == "tiny":
            from kinema.engines.tiny import save_tiny_model

            save_tiny_model(root / "data" / "models" / "kinema-tiny")
        (root / "logs").mkdir()
        cluster = Cluster(url_db, root / "data", root / "logs", dict(os.environ))
        try:
            _, url = cluster.api(name="api")
            results = []
            for workers in counts:
                print(f"measuring {workers} worker(s)...", flush=True)
                results.append(measure(cluster, url, engine, workers, args))
        finally:
            cluster.stop_all()
            engine.dispose()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        report(results, args)


if __name__ == "__main__":
    main()

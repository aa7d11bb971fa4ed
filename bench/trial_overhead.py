"""Per-trial time split: compute (prune, calibrate, evaluate) vs overhead.

Overhead is everything a trial pays that is not scoring the network: the
sampler (ask + budget repair), the database writes, the tell, and, through
the queue, the wait between one trial ending and the next starting on the
same worker (dequeue, fork of the work-horse, loading the job's context).

Usage:
    python bench/trial_overhead.py local   examples/digits.yaml
    python bench/trial_overhead.py service examples/digits.yaml --workers 2
    python bench/trial_overhead.py analyze demo-out          # a finished local run

``service`` needs a Redis (PRUNESEARCH_REDIS_URL, default the local one) and
starts real ``prunesearch worker`` processes. Every mode prints a table and
writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.local import local_settings, run_local
from cli.main import load_spec
from core.db import repo
from core.db.models import CandidateStatus, JobStatus
from core.db.session import migrate, session_factory, session_scope
from core.settings import Settings

COMPUTE = ("prune_s", "calib_s", "eval_s")
IN_TASK_OVERHEAD = ("ask_s", "db_s", "tell_s")


def analyze(db_url: str, job_id: str | None = None) -> dict[str, Any]:
    """Split the trial times of one job (the newest if ``job_id`` is None)."""
    with session_scope(session_factory(db_url)) as s:
        job = repo.get_job(s, job_id) if job_id else repo.list_jobs(s, limit=1, offset=0)[0]
        cands = [
            c
            for c in repo.list_candidates(s, job.id, limit=1_000_000, offset=0)
            if c.status in (CandidateStatus.complete, CandidateStatus.duplicate)
        ]
        duplicates = sum(c.status == CandidateStatus.duplicate for c in cands)
        rows = [(c.worker, c.started_at, c.finished_at, dict(c.timings)) for c in cands]
        name, n_trials = job.name, job.n_trials
    if not rows:
        raise SystemExit("no finished trials to analyze")
    per = {k: [t.get(k, 0.0) for *_, t in rows] for k in (*COMPUTE, *IN_TASK_OVERHEAD)}
    compute = [sum(t.get(k, 0.0) for k in COMPUTE) for *_, t in rows]
    in_task = [sum(t.get(k, 0.0) for k in IN_TASK_OVERHEAD) for *_, t in rows]
    load = [t.get("load_s", 0.0) for *_, t in rows]
    # Gaps between consecutive trials of the same worker: queue + fork + start.
    by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for worker, start, end, _ in rows:
        by_worker[str(worker)].append((start.timestamp(), (end or start).timestamp()))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(spans) if b[0] >= a[1]]
    gap = statistics.mean(gaps) if gaps else 0.0
    # Duplicates (a network already scored) cost overhead only: they count.
    mean_compute = statistics.mean(compute)
    mean_overhead = statistics.mean(in_task) + gap
    trial_wall = mean_compute + mean_overhead + statistics.mean(load)
    return {
        "job": name,
        "trials": n_trials,
        "finished_trials": len(rows),
        "duplicates": duplicates,
        "workers": sorted(by_worker),
        "mean_s": {k: statistics.mean(v) for k, v in per.items()},
        "load_s_mean": statistics.mean(load),
        "queue_gap_s_mean": gap,
        "compute_s_mean": mean_compute,
        "overhead_s_mean": mean_overhead,
        "overhead_fraction": mean_overhead / trial_wall,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
    }


def run_service(spec_path: Path, workers: int) -> dict[str, Any]:
    """Run the job through Redis and ``workers`` real worker processes."""
    from redis import Redis

    from core.queue import enqueue_job

    spec = load_spec(spec_path)
    base = Settings()
    redis_url = os.environ.get("PRUNESEARCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PRUNESEARCH_HOME": tmp, "PRUNESEARCH_REDIS_URL": redis_url}
        settings = Settings(home=Path(tmp), redis_url=redis_url, data_dir=base.data_dir)
        migrate(settings.database_url)
        redis = Redis.from_url(redis_url)
        redis.flushdb()
        threads = max(1, (os.cpu_count() or 1) // workers)
        worker_cmd = [sys.executable, "-m", "cli.main", "worker", "--threads", str(threads)]
        procs = [
            subprocess.Popen(
                [*worker_cmd, "--name", f"bench-w{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        try:
            factory = session_factory(settings.database_url)
            with session_scope(factory) as s:
                job_id = repo.create_job(s, spec, queue="interactive").id
            start = time.perf_counter()
            enqueue_job(redis, job_id, spec.search.n_trials, "interactive")
            while True:
                with session_scope(factory) as s:
                    status = repo.get_job(s, job_id).status
                if status in (JobStatus.done, JobStatus.failed, JobStatus.cancelled):
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - start
            if status != JobStatus.done:
                raise SystemExit(f"job ended {status}")
            out = analyze(settings.database_url, job_id)
            out["mode"] = f"service, {workers} workers"
            out["job_wall_s"] = wall
            return out
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
            redis.flushdb()


def table(r: dict[str, Any]) -> str:
    m = r["mean_s"]
    rows = [
        ("prune", m["prune_s"]),
        ("calibrate (adaptive BN)", m["calib_s"]),
        ("evaluate", m["eval_s"]),
        ("= compute", r["compute_s_mean"]),
        ("sampler ask + repair", m["ask_s"]),
        ("database", m["db_s"]),
        ("tell", m["tell_s"]),
        ("gap between trials (queue)", r["queue_gap_s_mean"]),
        ("= overhead", r["overhead_s_mean"]),
        ("context load (per process)", r["load_s_mean"]),
    ]
    lines = [
        f"{r['job']} — {r['mode']}: {r['finished_trials']} trials "
        f"({r['duplicates']} duplicates, scored once), workers {', '.join(r['workers'])}"
    ]
    lines += [f"  {name:28} {value * 1000:10.1f} ms" for name, value in rows]
    lines.append(f"  {'overhead / trial wall time':28} {100 * r['overhead_fraction']:10.2f} %")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["local", "service", "analyze"])
    parser.add_argument("target", type=Path, help="JobSpec (local/service) or output dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args()
    if args.mode == "analyze":
        result = analyze(local_settings(args.target, "cpu").database_url)
        result["mode"] = f"local run in {args.target}"
    elif args.mode == "local":
        with tempfile.TemporaryDirectory() as tmp:
            job = run_local(load_spec(args.target), Path(tmp), progress=False)
            result = analyze(local_settings(Path(tmp), "cpu").database_url, job["id"])
        result["mode"] = "local (in-process)"
    else:
        result = run_service(args.target, args.workers)
    print(table(result))
    name = f"trial_overhead-{result['job']}-{args.mode}.json"
    out = args.json or ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

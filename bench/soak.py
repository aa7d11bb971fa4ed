"""Soak: hundreds of real trials through two workers; worker memory over time.

Starts its own ``prunesearch serve`` and ``--workers`` (2) ``prunesearch
worker --threads 1`` on loopback (fresh ``PRUNESEARCH_HOME`` in a temporary
folder, SQLite unless ``--database-url``, its own Redis database, flushed
before and after), then submits ``--jobs`` (5) copies of a real JobSpec
(default ``examples/digits.yaml``: LeNet-5 on scikit-learn's digits) with
``search.n_trials`` set to ``--trials-per-job`` (100) and ``search.sampler``
to ``--sampler`` (``random``: TPE converges on this small space and most of
its trials repeat a network already scored, which builds and scores
nothing): 500 trials in all, each a real prune + adaptive-BN calibration +
validation unless it repeats a scored network (then recorded as a duplicate
with the earlier score), plus every job's prepare (baseline training, shared
through ``PRUNESEARCH_BASELINE_CACHE``) and finalize (ladder, fine-tune,
export).

A sampler thread reads ``/proc`` every ``--sample-interval`` seconds: the
resident set (VmRSS) of each worker parent and of its forked work-horses
(and their VmHWM, the peak each reached). Reported per worker: RSS when idle
before any task, after warm-up (the first sample once ``--warmup-trials``
trials have finished in all and that worker has run at least 3 tasks), at
the end (all jobs ended) and the drift between the last two; also the peak
work-horse RSS, trials per second, failed / lost / missing trials and the
wall time. Target (issue 6): worker memory drift under 5%.

Usage:
    python bench/soak.py                         # 5 jobs x 100 trials
    python bench/soak.py --jobs 1 --trials-per-job 20 --json /tmp/soak.json   # a short try
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import save, table
from bench.stack import ROOT, children, hard_stop, memory_kb, require_loopback, stack

DRIFT_TARGET_PCT = 5.0
WARM_TASKS = 3  # a worker is warm once it has run this many tasks (work-horses) as well
TERMINAL = ("done", "failed", "cancelled")


class Sampler(threading.Thread):
    """Reads the memory of the worker parents and their work-horses every ``interval`` s."""

    def __init__(self, pids: dict[str, int], interval: float, start_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids, self.interval, self.start_s = pids, interval, start_s
        self.parents: dict[str, list[tuple[float, int]]] = {}  # worker -> (t, VmRSS KiB)
        self.horse_peak_kb: dict[int, int] = {}  # horse pid -> its VmHWM
        self.horse_worker: dict[int, str] = {}  # horse pid -> worker
        self.horse_seen: dict[str, list[float]] = {}  # worker -> when each new horse was seen
        self.stopped = threading.Event()

    def sample(self) -> None:
        now = time.monotonic() - self.start_s
        for name, pid in self.pids.items():
            mem = memory_kb(pid)
            if mem is not None:
                self.parents.setdefault(name, []).append((now, mem["VmRSS"]))
            for child in children(pid):
                cmem = memory_kb(child)
                if cmem is not None:
                    peak = max(cmem.get("VmHWM", 0), cmem["VmRSS"])
                    self.horse_peak_kb[child] = max(self.horse_peak_kb.get(child, 0), peak)
                    if child not in self.horse_worker:
                        self.horse_seen.setdefault(name, []).append(now)
                    self.horse_worker[child] = name

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def warm(self, name: str, t: float, tasks: int) -> float:
        """``t``, or later: when the worker's ``tasks``-th work-horse was seen (its own warm-up)."""
        seen = self.horse_seen.get(name, [])
        return max(t, seen[tasks - 1]) if len(seen) >= tasks else t

    def at(self, name: str, t: float) -> int | None:
        """The worker parent's RSS (KiB) of the first sample at or after ``t``."""
        return next((kb for ts, kb in self.parents.get(name, []) if ts >= t), None)

    def last(self, name: str) -> int | None:
        samples = self.parents.get(name, [])
        return samples[-1][1] if samples else None


def wait_for_workers(redis_url: str, n: int, timeout: float) -> None:
    """Until ``n`` RQ workers have registered (they then block on the queues, idle)."""
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while redis.scard("rq:workers") < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{n} workers did not register within {timeout:.0f} s")
        time.sleep(0.5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.jobs <= 100 or not 1 <= args.trials_per_job <= 2000:
        raise SystemExit("--jobs must be within 1..100 and --trials-per-job within 1..2000")
    require_loopback(args.redis_url, "Redis")
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    spec = yaml.safe_load(args.spec.read_text())
    spec.setdefault("search", {})["n_trials"] = args.trials_per_job
    if args.sampler:
        spec["search"]["sampler"] = args.sampler
    total_trials = args.jobs * args.trials_per_job
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, CPU only, shared with other work",
        "database": "postgresql (throw-away database)" if args.database_url else "sqlite",
        "spec": str(args.spec),
        "sampler": spec["search"].get("sampler", "tpe"),
        "jobs": args.jobs,
        "trials_per_job": args.trials_per_job,
        "trials": total_trials,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "warmup_trials": args.warmup_trials,
        "sample_interval_s": args.sample_interval,
        "memory_source": "/proc/PID/status VmRSS (parent), VmHWM (work-horse peak)",
    }
    with stack(args.redis_url, args.database_url) as s:
        s.env["PRUNESEARCH_BASELINE_CACHE"] = str(s.home / "baseline-cache")
        s.create_key("soak")
        s.serve()
        names = [f"w{i}" for i in range(args.workers)]
        pids = {name: s.worker(name, threads=args.threads).pid for name in names}
        wait_for_workers(args.redis_url, args.workers, timeout=120)
        time.sleep(2)  # let the freshly started workers settle
        idle = {name: memory_kb(pid) for name, pid in pids.items()}
        sampler = Sampler(pids, args.sample_interval, t0)
        sampler.start()
        timeline: list[dict[str, Any]] = []
        t_warm: float | None = None
        cut = False
        with s.client() as api:
            submitted = time.monotonic()
            ids = []
            for i in range(args.jobs):
                r = api.post("/v1/jobs", json={**spec, "name": f"soak-{i}"})
                if r.status_code != 201:
                    raise SystemExit(f"submit refused: {r.status_code} {r.text}")
                ids.append(r.json()["id"])
            while True:
                jobs = api.get("/v1/jobs", params={"limit": 100}).json()["items"]
                done = sum(j["progress"]["done"] for j in jobs)
                now = time.monotonic() - t0
                timeline.append(
                    {"t_s": round(now, 1), "trials_done": done}
                    | {f"{n}_rss_mb": round((sampler.last(n) or 0) / 1024, 1) for n in names}
                )
                if t_warm is None and done >= args.warmup_trials:
                    t_warm = now
                    since = time.monotonic() - submitted
                    print(f"warm-up: {done} trials done {since:.0f} s after submit", flush=True)
                if all(j["status"] in TERMINAL for j in jobs):
                    break
                dead = [n for n in names if s.procs[n].poll() is not None]
                if dead:
                    raise SystemExit(f"worker(s) {dead} died:\n{s.log_tail()}")
                if time.monotonic() > deadline:
                    cut = True
                    break
                time.sleep(args.poll_interval)
            ended = time.monotonic()
            time.sleep(max(2.0, 3 * args.sample_interval))  # the last horse exits
            sampler.sample()
            sampler.stopped.set()
            sampler.join()

            per_job, statuses, by_worker = [], {}, {}
            first_start, last_end = None, None
            for job_id in ids:
                job = api.get(f"/v1/jobs/{job_id}").json()
                cands = api.get(
                    f"/v1/jobs/{job_id}/candidates", params={"limit": 500, "order": "trial"}
                ).json()
                counts: dict[str, int] = {}
                for c in cands["items"]:
                    counts[c["status"]] = counts.get(c["status"], 0) + 1
                    by_worker[c["worker"]] = by_worker.get(c["worker"], 0) + 1
                    started = datetime.fromisoformat(c["started_at"]).timestamp()
                    first_start = started if first_start is None else min(first_start, started)
                    if c["finished_at"]:
                        finished = datetime.fromisoformat(c["finished_at"]).timestamp()
                        last_end = finished if last_end is None else max(last_end, finished)
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
                per_job.append({
                    "id": job_id, "status": job["status"], "error": job["error"],
                    "progress": job["progress"], "candidates": counts,
                    "timings": job["timings"],
                })  # fmt: skip
        home_logs = s.log_tail(800)

    finished = sum(j["progress"]["done"] for j in per_job)

    def count(status: str) -> int:
        return sum(j["candidates"].get(status, 0) for j in per_job)

    t_start = t_warm if t_warm is not None else ended - t0
    workers = {}
    for name in names:
        # Each worker's own warm-up too: it has run WARM_TASKS tasks (prefetch done).
        t_worker = sampler.warm(name, t_start, WARM_TASKS)
        start_kb, end_kb = sampler.at(name, t_worker), sampler.last(name)
        peak_kb = max((kb for _, kb in sampler.parents.get(name, [])), default=0)
        drift = 100 * (end_kb - start_kb) / start_kb if start_kb and end_kb else None
        workers[name] = {
            "rss_mb_idle": (idle[name] or {}).get("VmRSS", 0) / 1024,
            "rss_mb_after_warmup": (start_kb or 0) / 1024,
            "warm_at_s": t_worker - (submitted - t0),
            "rss_mb_end": (end_kb or 0) / 1024,
            "rss_mb_peak": peak_kb / 1024,
            "drift_pct": drift,
            "target_met": drift is not None and drift < DRIFT_TARGET_PCT,
            "trials_scored": sum(v for k, v in by_worker.items() if k and k.endswith(f"-{name}")),
            "horses_sampled": sum(1 for w in sampler.horse_worker.values() if w == name),
        }
    search_s = (last_end - first_start) if first_start and last_end else None
    result.update({
        "deadline_hit": cut,
        "job_states": statuses,
        "trials_finished": finished,
        "trials_complete": count("complete"),
        "trials_duplicate": count("duplicate"),
        "trials_failed": count("failed"),
        "trials_lost": count("lost"),
        "trials_missing": total_trials - finished,
        "wall_s": ended - submitted,
        "warmup_at_s": None if t_warm is None else t_warm - (submitted - t0),
        "search_span_s": search_s,
        "trials_per_s_search": finished / search_s if search_s else None,
        "trials_per_s_overall": finished / (ended - submitted),
        "workers_detail": workers,
        "horse_peak_rss_mb": max(sampler.horse_peak_kb.values(), default=0) / 1024,
        "horses_sampled": len(sampler.horse_peak_kb),
        "per_job": per_job,
        "timeline": timeline,
        "cleanup": {
            "redis_keys_left": Redis.from_url(args.redis_url).dbsize(),
            "home_deleted": not s.home.exists(),
        },
    })  # fmt: skip
    result["drift_target_met"] = all(w["target_met"] for w in workers.values())
    if cut or statuses.get("done", 0) != args.jobs:
        result["log_tail"] = home_logs
    return result


def render(r: dict[str, Any]) -> str:
    rows = [
        [name, f"{w['rss_mb_idle']:.1f}", f"{w['rss_mb_after_warmup']:.1f}",
         f"{w['rss_mb_end']:.1f}", f"{w['rss_mb_peak']:.1f}",
         "-" if w["drift_pct"] is None else f"{w['drift_pct']:+.2f} %",
         w["trials_scored"], "yes" if w["target_met"] else "**no**"]
        for name, w in r["workers_detail"].items()
    ]  # fmt: skip
    header = ["worker", "RSS idle MB", "RSS after warm-up MB", "RSS at end MB", "peak MB",
              "drift", "trials scored", "drift < 5 %"]  # fmt: skip
    title = (
        f"Soak: {r['jobs']} jobs x {r['trials_per_job']} trials ({r['sampler']}) "
        f"through {r['workers']} workers "
        f"(--threads {r['threads_per_worker']}), {r['database']}"
    )
    rate = r["trials_per_s_search"]
    summary = [
        ["trials finished / asked", f"{r['trials_finished']} / {r['trials']}"],
        ["complete / duplicate", f"{r['trials_complete']} / {r['trials_duplicate']}"],
        ["failed / lost / missing",
         f"{r['trials_failed']} / {r['trials_lost']} / {r['trials_missing']}"],
        ["jobs", ", ".join(f"{v} {k}" for k, v in r["job_states"].items())],
        ["trials per second, search span", "-" if rate is None else
         f"{rate:.2f} ({r['trials_finished']} in {r['search_span_s']:.0f} s)"],
        ["trials per second, whole run", f"{r['trials_per_s_overall']:.2f}"],
        ["wall time (submit to last job ended)", f"{r['wall_s']:.0f} s"],
        ["peak work-horse RSS (VmHWM)",
         f"{r['horse_peak_rss_mb']:.1f} MB ({r['horses_sampled']} horses sampled)"],
    ]  # fmt: skip
    lines = [
        table(title, header, rows),
        "",
        table("Soak: throughput and trials", ["measure", "value"], summary),
        "",
        f"warm-up ended {r['warmup_at_s']:.0f} s after submit ({r['warmup_trials']} trials)"
        if r["warmup_at_s"] is not None
        else "warm-up never reached",
        f"cleanup: home deleted {r['cleanup']['home_deleted']}, "
        f"Redis keys left {r['cleanup']['redis_keys_left']}",
        f"target (worker memory drift < {DRIFT_TARGET_PCT:.0f} %): "
        + ("met" if r["drift_target_met"] else "NOT met")
        + ("; DEADLINE HIT: partial results" if r["deadline_hit"] else ""),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--trials-per-job", type=int, default=100)
    parser.add_argument(
        "--sampler",
        default="random",
        help="search.sampler of the jobs (default random: on this small space TPE converges "
        "and most of its trials repeat a scored network, which costs no build or scoring); "
        "empty: the spec's own",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="--threads of each worker")
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "digits.yaml")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (any database URL on it) to make a throw-away database on; "
        "default SQLite in the temporary home",
    )
    parser.add_argument("--warmup-trials", type=int, default=20)
    parser.add_argument("--sample-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--deadline", type=int, default=1800, help="hard limit of the run, s")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    hard_stop(args.deadline + 120)
    result = run(args)
    print(render(result))
    save(args.json, result)
    return 1 if result["deadline_hit"] else 0


if __name__ == "__main__":
    sys.exit(main())

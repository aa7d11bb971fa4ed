"""API load: concurrent submits, then concurrent status polls and list calls, no workers.

Starts its own ``prunesearch serve`` on a free loopback port (fresh
``PRUNESEARCH_HOME`` in a temporary folder, SQLite unless ``--database-url``
names a PostgreSQL server, its own Redis database, flushed before and after)
and an API key made with ``prunesearch keys create``. No worker runs, so
every job stays ``queued`` and the API alone is measured:

1. ``--jobs`` (200) ``POST /v1/jobs`` of a small valid JobSpec, from
   ``--concurrency`` (32) concurrent clients;
2. ``--polls`` (2,000) ``GET /v1/jobs/{id}`` over the created jobs and
   ``--lists`` (200) ``GET /v1/jobs?limit=20`` pages, shuffled together, from
   the same number of concurrent clients.

Per operation: count, errors (non-2xx or exceptions), p50 / p99 / max
latency (client-side, nearest rank) and throughput. Target (issue 6): no
errors, and p99 under 200 ms for the reads. The per-key rate limit
(``PRUNESEARCH_RATE_LIMIT``, 600 a minute by default) is raised for the run
(``--rate-limit``, 100,000) so it does not answer 429s. Everything is
bounded: counts are capped and the whole run has a hard deadline
(``--deadline``); at the end the home is deleted and the Redis database
flushed, so no job survives.

Usage:
    python bench/load.py                                   # SQLite
    python bench/load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import save, table
from bench.stack import ROOT, cpu_seconds, hard_stop, memory_kb, require_loopback, stack

READ_P99_TARGET_MS = 200.0
LIMITS = {
    "jobs": 1000,
    "polls": 20_000,
    "lists": 5000,
    "concurrency": 256,
    "api_workers": 8,
    "deadline": 1800,
}


@dataclass
class Sample:
    op: str
    latency_s: float
    ok: bool
    outcome: str  # the status code, or the exception's class
    body: Any = None  # a submit's reply, or what went wrong (for errors)
    at_s: float = 0.0  # when the request started, seconds into its phase


async def run_ops(
    url: str,
    key: str,
    ops: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any] | None]],
    concurrency: int,
    deadline: float,
) -> tuple[list[Sample], float, bool]:
    """Run ``(op, method, path, params, json)`` requests from ``concurrency`` clients.

    Returns the samples, the phase's wall time and whether the deadline cut it short.
    """
    require_loopback(url, "API")
    samples: list[Sample] = []
    pending = iter(ops)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        limits=limits,
    ) as client:

        async def client_loop() -> None:
            for op, method, path, params, body in pending:
                start = time.perf_counter()
                try:
                    resp = await client.request(method, path, params=params, json=body)
                except httpx.HTTPError as exc:
                    what = f"{method} {path}: {exc!r}"
                    failed = Sample(op, time.perf_counter() - start, False, type(exc).__name__)
                    failed.body, failed.at_s = what, start - phase_start
                    samples.append(failed)
                    continue
                latency = time.perf_counter() - start
                ok = 200 <= resp.status_code < 300
                keep = resp.json() if ok and op == "submit" else None
                if not ok:
                    keep = f"{method} {path}: {resp.status_code} {resp.text[:300]}"
                done = Sample(op, latency, ok, str(resp.status_code), keep, start - phase_start)
                samples.append(done)

        phase_start = start = time.perf_counter()
        loops = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
        cut = False
        try:
            await asyncio.wait_for(asyncio.gather(*loops), timeout=deadline - time.monotonic())
        except TimeoutError:
            cut = True
        return samples, time.perf_counter() - start, cut


def phase(
    url: str,
    key: str,
    ops: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any] | None]],
    concurrency: int,
    deadline: float,
    api_pid: int,
) -> tuple[list[Sample], float, bool, dict[str, float]]:
    """:func:`run_ops`, plus the CPU seconds the API process and this client used meanwhile."""
    api0, client0 = cpu_seconds(api_pid), time.process_time()
    samples, wall, cut = asyncio.run(run_ops(url, key, ops, concurrency, deadline))
    api_cpu, client_cpu = cpu_seconds(api_pid) - api0, time.process_time() - client0
    n = max(1, len(samples))
    cpu = {
        "api_cpu_s": api_cpu,
        "api_cpu_ms_per_request": 1000 * api_cpu / n,
        "api_cores_busy": api_cpu / wall if wall > 0 else 0.0,
        "client_cpu_s": client_cpu,
        "client_cpu_ms_per_request": 1000 * client_cpu / n,
    }
    return samples, wall, cut, cpu


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(samples: list[Sample], op: str, wall_s: float) -> dict[str, Any]:
    mine = [s for s in samples if s.op == op]
    lat = sorted(s.latency_s * 1000 for s in mine)
    outcomes: dict[str, int] = {}
    for s in mine:
        if not s.ok:
            outcomes[s.outcome] = outcomes.get(s.outcome, 0) + 1
    return {
        "count": len(mine),
        "errors": sum(not s.ok for s in mine),
        "error_outcomes": outcomes,
        "slowest": [
            {"at_s": round(s.at_s, 3), "latency_ms": round(s.latency_s * 1000, 1)}
            for s in sorted(mine, key=lambda s: -s.latency_s)[:5]
        ],
        "error_details": [
            {"at_s": round(s.at_s, 3), "latency_ms": round(s.latency_s * 1000, 1), "what": s.body}
            for s in mine
            if not s.ok
        ][:20],
        "p50_ms": percentile(lat, 50) if lat else None,
        "p99_ms": percentile(lat, 99) if lat else None,
        "max_ms": lat[-1] if lat else None,
        "mean_ms": sum(lat) / len(lat) if lat else None,
        "phase_wall_s": wall_s,
        "throughput_per_s": len(mine) / wall_s if wall_s > 0 else None,
    }


def _cap(args: argparse.Namespace) -> None:
    for name, cap in LIMITS.items():
        value = getattr(args, name)
        if not 1 <= value <= cap:
            raise SystemExit(f"--{name} must be within 1..{cap}, not {value}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    _cap(args)
    require_loopback(args.redis_url, "Redis")
    if args.database_url:
        require_loopback(args.database_url, "database")
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    spec = yaml.safe_load(args.spec.read_text())
    env = {"PRUNESEARCH_RATE_LIMIT": str(args.rate_limit)}
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, CPU only, shared with other work",
        "database": "postgresql (throw-away database)" if args.database_url else "sqlite",
        "redis_url": args.redis_url,
        "rate_limit_per_minute": args.rate_limit,
        "spec": str(args.spec),
        "concurrency": args.concurrency,
        "deadline_s": args.deadline,
        "workers": 0,
        "api_processes": args.api_workers,
    }
    with stack(args.redis_url, args.database_url, env) as s:
        key = s.create_key("load")
        url = s.serve(
            timeout=max(1.0, min(120.0, deadline - time.monotonic())), workers=args.api_workers
        )
        api_pid = s.procs["api"].pid
        with s.client() as c:  # not measured: the key works and the list is empty
            r = c.get("/v1/jobs")
            if r.status_code != 200 or r.json()["total"] != 0:
                raise SystemExit(f"unexpected start: {r.status_code} {r.text}")
        result["api_rss_mb_start"] = (memory_kb(api_pid) or {}).get("VmRSS", 0) / 1024

        submits = [
            ("submit", "POST", "/v1/jobs", {"queue": "interactive"}, {**spec, "name": f"load-{i}"})
            for i in range(args.jobs)
        ]
        samples, wall_submit, cut, cpu = phase(
            url, key, submits, args.concurrency, deadline, api_pid
        )
        result["submit_phase"] = {"wall_s": wall_submit, "requests": len(samples), **cpu}
        ids = [smp.body["id"] for smp in samples if smp.op == "submit" and smp.ok]
        ops: dict[str, dict[str, Any]] = {"submit": summarize(samples, "submit", wall_submit)}
        if not cut and ids:
            reads: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any] | None]]
            reads = [("status poll", "GET", f"/v1/jobs/{ids[i % len(ids)]}", None, None)
                     for i in range(args.polls)]  # fmt: skip
            reads += [
                ("list", "GET", "/v1/jobs", {"limit": 20, "offset": (20 * i) % len(ids)}, None)
                for i in range(args.lists)
            ]
            random.Random(0).shuffle(reads)
            read_samples, wall_read, cut, cpu = phase(
                url, key, reads, args.concurrency, deadline, api_pid
            )
            ops["status poll"] = summarize(read_samples, "status poll", wall_read)
            ops["list"] = summarize(read_samples, "list", wall_read)
            result["read_phase"] = {
                "wall_s": wall_read,
                "requests": len(read_samples),
                "throughput_per_s": len(read_samples) / wall_read,
                **cpu,
            }
        result["ops"] = ops
        result["deadline_hit"] = cut
        result["api_rss_mb_end"] = (memory_kb(api_pid) or {}).get("VmRSS", 0) / 1024

        # What the service holds afterwards: every accepted submit is one job, one prepare queued.
        with s.client() as c:
            total = c.get("/v1/jobs", params={"limit": 1}).json()["total"]
            statuses = {c.get(f"/v1/jobs/{i}").json()["status"] for i in ids[:5]}
        queued = Redis.from_url(args.redis_url).lrange("rq:queue:interactive", 0, -1)
        result["checks"] = {
            "jobs_created": len(ids),
            "jobs_listed_total": total,
            "prepare_tasks_queued": len(queued),
            "duplicate_queue_entries": len(queued) - len(set(queued)),
            "sample_statuses": sorted(statuses),
        }
        home = s.home
        if any(op["errors"] for op in ops.values()):  # kept before the home is deleted
            log = (s.logs / "api.log").read_text(errors="replace").splitlines()
            odd = [line for line in log if not re.search(r'HTTP/1.1" 2\d\d ', line)]
            result["api_log_other_than_2xx"] = odd[-80:]
    result["cleanup"] = {
        "home_deleted": not home.exists(),
        "redis_keys_left": Redis.from_url(args.redis_url).dbsize(),
    }
    result["total_wall_s"] = time.monotonic() - t0
    return result


def met(op: dict[str, Any], read: bool) -> bool:
    ok = op["errors"] == 0
    if read:
        ok = ok and op["p99_ms"] is not None and op["p99_ms"] < READ_P99_TARGET_MS
    return ok


def render(result: dict[str, Any]) -> str:
    rows = []
    for name, op in result["ops"].items():
        read = name != "submit"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        rows.append([
            name, op["count"], op["errors"], ms(op["p50_ms"]), ms(op["p99_ms"]), ms(op["max_ms"]),
            f"{op['throughput_per_s']:.0f}/s",
            ("yes" if met(op, read) else "**no**") if read else
            ("yes" if op["errors"] == 0 else "**no**") + " (errors only)",
        ])  # fmt: skip
    title = (
        f"API load, {result['database']}, {result['concurrency']} concurrent clients, "
        f"no workers, rate limit {result['rate_limit_per_minute']:,}/min"
    )
    header = ["operation", "count", "errors", "p50 ms", "p99 ms", "max ms", "throughput",
              "target met"]  # fmt: skip
    lines = [table(title, header, rows), ""]
    for name in ("submit_phase", "read_phase"):
        if name in result:
            ph = result[name]
            lines.append(
                f"{name.replace('_', ' ')}: {ph['requests']} requests in {ph['wall_s']:.1f} s "
                f"({ph['requests'] / ph['wall_s']:.0f}/s); API process CPU "
                f"{ph['api_cpu_ms_per_request']:.1f} ms/request ({ph['api_cores_busy']:.2f} "
                f"cores busy), this client {ph['client_cpu_ms_per_request']:.1f} ms/request"
            )
    if "read_phase" in result:
        lines.append("(status polls and list calls run shuffled together in the read phase)")
    ck = result["checks"]
    lines.append(
        f"afterwards: {ck['jobs_created']} jobs created, {ck['jobs_listed_total']} listed, "
        f"{ck['prepare_tasks_queued']} prepare tasks queued "
        f"({ck['duplicate_queue_entries']} duplicates), states {ck['sample_statuses']}"
    )
    lines.append(
        f"API process RSS {result['api_rss_mb_start']:.0f} MB -> {result['api_rss_mb_end']:.0f} MB"
    )
    lines.append(
        f"cleanup: home deleted {result['cleanup']['home_deleted']}, "
        f"Redis keys left {result['cleanup']['redis_keys_left']}; "
        f"total {result['total_wall_s']:.0f} s"
        + ("; DEADLINE HIT: partial results" if result["deadline_hit"] else "")
    )
    reads = [op for name, op in result["ops"].items() if name != "submit"]
    all_met = (
        bool(reads)
        and all(met(op, True) for op in reads)
        and result["ops"]["submit"]["errors"] == 0
    )
    lines.append(
        f"target (0 errors, read p99 < {READ_P99_TARGET_MS:.0f} ms): "
        + ("met" if all_met else "NOT met")
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted")
    parser.add_argument("--polls", type=int, default=2000, help="GET /v1/jobs/{id} calls")
    parser.add_argument("--lists", type=int, default=200, help="GET /v1/jobs calls")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="API processes (prunesearch serve --workers)"
    )
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "digits.yaml")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (any database URL on it) to make a throw-away database on; "
        "default SQLite in the temporary home",
    )
    parser.add_argument("--rate-limit", type=int, default=100_000, help="requests/min per key")
    parser.add_argument("--deadline", type=int, default=600, help="hard limit of the whole run, s")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    hard_stop(args.deadline + 120)
    print(
        f"rate limit: PRUNESEARCH_RATE_LIMIT={args.rate_limit} requests/min per key "
        "(default 600), raised so the load run is not throttled",
        flush=True,
    )
    result = run(args)
    print(render(result))
    save(args.json, result)
    return 1 if result["deadline_hit"] else 0


if __name__ == "__main__":
    sys.exit(main())

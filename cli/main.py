"""``prunesearch``: the command line.

``search`` runs a job locally (no servers); ``serve`` and ``worker`` are the
two halves of the service; ``submit`` is a client of a running service.
Heavy imports (torch, uvicorn) happen inside the commands that need them,
so ``prunesearch --help`` and ``submit`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.spec import JobSpec

TERMINAL = ("done", "failed", "cancelled")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEEP_ALIVE_S = 75
DEFAULT_URL = "http://127.0.0.1:8000"


def load_spec(path: Path) -> JobSpec:
    """Read and validate a JobSpec from YAML or JSON, with readable errors."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from exc
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(spec)'}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"{path}: invalid JobSpec: {problems}") from exc


def cmd_search(args: argparse.Namespace) -> int:
    from cli.local import run_local, summary
    from core.errors import InvalidInput

    spec = load_spec(args.spec)
    if args.weights is not None and not args.weights.is_file():
        raise SystemExit(f"--weights {args.weights}: no such file")
    try:
        job = run_local(
            spec, args.out, device=args.device, progress=not args.quiet, weights=args.weights
        )
    except InvalidInput as exc:
        raise SystemExit(f"--weights {args.weights}: {exc}") from exc
    if job["status"] != "done":
        print(f"job {job['id']} {job['status']}: {job['error']}", file=sys.stderr)
        return 1
    print(summary(job["result"]))
    print(
        f"written: {', '.join(str(args.out / n) for n in job['result']['artifacts'])}, "
        f"{args.out / 'result.json'}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from core.settings import Settings
    from service.api.app import create_app

    settings = Settings()
    if settings.auth == "none" and args.host not in LOOPBACK:
        raise SystemExit(
            f"refusing to serve {args.host} without API keys (PRUNESEARCH_AUTH=none): "
            "keyless mode is for one user on loopback only"
        )
    # Idle keep-alive connections are closed after KEEP_ALIVE_S: longer than the
    # 5 s default, so that a polling client rarely reuses one the server is
    # closing at that very moment (the client then sees a connection reset).
    # httptools and uvloop (dependencies) are picked up by uvicorn's "auto"; the
    # access log costs a formatted line per poll, so it is off unless asked for.
    common = {"host": args.host, "port": args.port, "log_level": "info"}
    common["timeout_keep_alive"] = KEEP_ALIVE_S
    common["access_log"] = args.access_log
    if args.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:  # each process builds its own app from the same environment
        uvicorn.run("service.api.app:create_app", factory=True, workers=args.workers, **common)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    run_worker(
        args.queues,
        device=args.device,
        burst=args.burst,
        name=args.name,
        threads=args.threads,
        maintenance_interval=args.maintenance_interval,
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Administer API keys directly in the service's database (run it where the API runs)."""
    from core.db import keys
    from core.db.session import migrate, session_factory
    from core.settings import Settings

    settings = Settings()
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as session:
        if args.action == "create":
            row, new = keys.create_key(session, args.owner)
            print(f"created key {row.id} ({new.prefix}...) for {row.owner}; it is shown only once:")
            print(new.plain)
        elif args.action == "list":
            for row in keys.list_keys(session, args.owner):
                state = "revoked" if row.revoked_at else "active"
                print(f"{row.id}  {row.prefix}...  {row.owner}  {row.created_at:%Y-%m-%d}  {state}")
        else:
            row = keys.revoke_key(session, args.key_id)
            print(f"revoked key {row.id} ({row.prefix}...) of {row.owner}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One reconciler pass now (the API runs one every 30 s by itself)."""
    from core.db.session import migrate, session_factory
    from core.queue import redis_from_url
    from core.settings import Settings
    from service.reconcile import reconcile

    settings = Settings()
    migrate(settings.database_url)
    with session_factory(settings.database_url)() as session:
        report = reconcile(session, redis_from_url(settings.redis_url), settings.optuna_url)
    for job_id, what in report.requeued.items():
        print(f"job {job_id}: requeued {what}")
    print(f"{len(report.requeued)} jobs had lost tasks")
    return 0


def _client(args: argparse.Namespace) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    return httpx.Client(base_url=args.url, timeout=30, headers=headers)


def _check(resp: Any, expected: int = 200) -> Any:
    if resp.status_code != expected:
        raise SystemExit(
            f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
        )
    return resp.json() if resp.content else None


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with _client(args) as client:
        resp = client.post(
            "/v1/jobs",
            json=spec.model_dump(mode="json"),
            params={"queue": args.queue},
            headers=headers,
        )
        if resp.status_code not in (200, 201):
            print(f"rejected ({resp.status_code}): {resp.text}", file=sys.stderr)
            return 1
        job = resp.json()
        print(f"submitted job {job['id']} ({job['status']})")
        if not args.wait:
            return 0
        job = _wait(client, job["id"])
        if job["status"] != "done":
            print(f"job {job['id']} {job['status']}: {job.get('error')}", file=sys.stderr)
            return 1
        from cli.local import summary

        print(summary(client.get(f"/v1/jobs/{job['id']}/result").json()))
    return 0


def _wait(client: Any, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=None, desc="queued", unit="trial")
    while True:
        job = _check(client.get(f"/v1/jobs/{job_id}"))
        progress = job.get("progress") or {}
        bar.total = progress.get("total")
        bar.n = progress.get("done", 0)
        bar.set_description(job["status"])
        best = job.get("best")
        if best and best.get("accuracy") is not None:
            bar.set_postfix(
                best_val_acc=f"{best['accuracy']:.4f}",
                flops=f"{best['flops_ratio'] or 0:.3f}x",
                trial=best["trial_number"],
            )
        bar.refresh()
        if job["status"] in TERMINAL:
            bar.close()
            return job
        time.sleep(1.0)


def _row(job: dict[str, Any]) -> str:
    best = job.get("best") or {}
    acc = f"{best['accuracy']:.4f}" if best.get("accuracy") is not None else "-"
    done, total = job["progress"]["done"], job["progress"]["total"]
    return (
        f"{job['id']}  {job['status']:<10}  {done:>4}/{total:<4}  {acc:>7}  "
        f"{job['queue']:<11}  {job['name']}"
    )


def cmd_jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    with _client(args) as client:
        page = _check(client.get("/v1/jobs", params=params))
    print(f"{'id':<32}  {'status':<10}  {'trials':>9}  {'best':>7}  {'queue':<11}  name")
    for job in page["items"]:
        print(_row(job))
    print(f"{len(page['items'])} of {page['total']} jobs")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _check(client.get(f"/v1/jobs/{args.job_id}"))
        print(_row(job))
        if job.get("error"):
            print(f"error: {job['error']}")
        base = job.get("baseline") or {}
        if base.get("accuracy") is not None:
            print(f"baseline: test accuracy {base['accuracy']:.4f}")
        cands = _check(
            client.get(f"/v1/jobs/{args.job_id}/candidates", params={"order": "score", "limit": 5})
        )
        print(f"top candidates (of {cands['total']}):")
        for c in cands["items"]:
            acc = f"{c['accuracy']:.4f}" if c["accuracy"] is not None else "-"
            print(
                f"  #{c['trial_number']:<4} {c['status']:<9} val acc {acc}  "
                f"FLOPs {c['flops_ratio'] or 0:.3f}x  params {c['params_ratio'] or 0:.3f}x"
            )
        if job.get("has_result"):
            from cli.local import summary

            print(summary(_check(client.get(f"/v1/jobs/{args.job_id}/result"))))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _check(client.post(f"/v1/jobs/{args.job_id}/cancel"))
    print(
        f"job {body['job']['id']} {body['job']['status']}; "
        f"{body['dropped_tasks']} queued tasks dropped"
    )
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    try:
        body = yaml.safe_load(args.file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"cannot read {args.file}: {exc}") from exc
    with _client(args) as client:
        resp = client.post("/v1/batches", json=body)
        if resp.status_code != 201:
            print(f"rejected ({resp.status_code}): {resp.text}", file=sys.stderr)
            return 1
        batch = resp.json()
        print(f"submitted batch {batch['id']} with {len(batch['jobs'])} jobs (overnight queue)")
        while args.wait and batch["status"] != "done":
            time.sleep(2.0)
            batch = _check(client.get(f"/v1/batches/{batch['id']}"))
        for job in batch["jobs"]:
            acc = (
                job["test_accuracy"]
                if job["test_accuracy"] is not None
                else job["best_val_accuracy"]
            )
            print(
                f"{job['id']}  {job['status']:<10}  {acc if acc is None else round(acc, 4)}  "
                f"{job['name']}"
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from workers.verify import report, verify

    checks = verify(args.out, device=args.device)
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run a search locally, no servers")
    p.add_argument("spec", type=Path, help="JobSpec YAML file")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="start from this safetensors file of the spec's network (e.g. a committed "
        "baseline under baselines/) instead of pretraining",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("verify", help="re-measure an exported result against result.json")
    p.add_argument("out", type=Path, help="folder holding result.json and the model")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("serve", help="run the REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes (each uses one core; rate limits and the reconciler lock are "
        "shared through Redis)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (default off)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a queue worker that owns one device")
    p.add_argument("--queues", nargs="+", default=["interactive", "overnight"])
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", default=None, help="worker name (default host.pid.device)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per task (default: all cores)"
    )
    p.add_argument(
        "--maintenance-interval",
        type=int,
        default=30,
        help="seconds between searches for tasks a dead worker abandoned (they are retried)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="create, list or revoke API keys (on the server)")
    keys_sub = p.add_subparsers(dest="action", required=True)
    k = keys_sub.add_parser("create", help="make a key for an owner; printed once")
    k.add_argument("--owner", required=True)
    k = keys_sub.add_parser("list", help="list keys (prefixes only)")
    k.add_argument("--owner", default=None)
    k = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    k.add_argument("key_id")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("reconcile", help="requeue what Redis lost of unfinished jobs (once)")
    p.set_defaults(func=cmd_reconcile)

    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--url", default=os.environ.get("PRUNESEARCH_URL", DEFAULT_URL))
        c.add_argument(
            "--key",
            default=os.environ.get("PRUNESEARCH_API_KEY"),
            help="API key (default $PRUNESEARCH_API_KEY)",
        )
        return c

    p = client_parser("submit", "submit a JobSpec to a running service")
    p.add_argument("spec", type=Path)
    p.add_argument("--queue", default="interactive", choices=["interactive", "overnight"])
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--idempotency-key", default=None, help="resubmitting returns the first job")
    p.set_defaults(func=cmd_submit)

    p = client_parser("jobs", "list your jobs")
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = client_parser("show", "one job: state, top candidates, result")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_show)

    p = client_parser("cancel", "cancel a job (what it found stays readable)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = client_parser("batch", "submit a batch file (list of specs or base + grid)")
    p.add_argument("file", type=Path)
    p.add_argument("--wait", action="store_true", help="wait until every job has ended")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

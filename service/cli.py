"""``prunesearch``: the command line.

``search`` runs a job locally (no servers); ``serve`` and ``worker`` are the
two halves of the service; ``submit`` is a client of a running service.
Heavy imports (torch, uvicorn) happen inside the commands that need them,
so ``prunesearch --help`` and ``submit`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.db.spec import JobSpec

TERMINAL = ("done", "failed", "cancelled")


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
    from service.local import run_local, summary

    spec = load_spec(args.spec)
    job = run_local(spec, args.out, device=args.device, progress=not args.quiet)
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

    from service.api.app import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    run_worker(
        args.queues, device=args.device, burst=args.burst, name=args.name, threads=args.threads
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    spec = load_spec(args.spec)
    with httpx.Client(base_url=args.url, timeout=30) as client:
        resp = client.post(
            "/v1/jobs", json=spec.model_dump(mode="json"), params={"queue": args.queue}
        )
        if resp.status_code != 201:
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
        from service.local import summary

        print(summary(client.get(f"/v1/jobs/{job['id']}/result").json()))
    return 0


def _wait(client: Any, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=None, desc="queued", unit="trial")
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        progress = job.get("progress") or {}
        bar.total = progress.get("total")
        bar.n = progress.get("done", 0)
        bar.set_description(job["status"])
        best = job.get("best")
        if best and best.get("accuracy") is not None:
            bar.set_postfix(best_val_acc=f"{best['accuracy']:.4f}")
        bar.refresh()
        if job["status"] in TERMINAL:
            bar.close()
            return job
        time.sleep(1.0)


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
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("verify", help="re-measure an exported result against result.json")
    p.add_argument("out", type=Path, help="folder holding result.json and the model")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("serve", help="run the REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a queue worker that owns one device")
    p.add_argument("--queues", nargs="+", default=["interactive", "overnight"])
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", default=None, help="worker name (default host.pid.device)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per task (default: all cores)"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a JobSpec to a running service")
    p.add_argument("spec", type=Path)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--queue", default="interactive", choices=["interactive", "overnight"])
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

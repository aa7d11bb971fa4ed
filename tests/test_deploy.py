"""The compose file parses and every service runs a real prunesearch command."""

from __future__ import annotations

from pathlib import Path

import yaml

from cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_run_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    parser = build_parser()
    for name in ("api", "worker"):
        command = services[name]["command"]
        assert command[0] == "prunesearch", name
        args = parser.parse_args(command[1:])  # exits (fails the test) on a bad command
        assert args.command == command[1]
        env = services[name]["environment"]
        assert env["PRUNESEARCH_DATABASE_URL"].startswith("postgresql")
        assert env["PRUNESEARCH_OPTUNA_URL"] != env["PRUNESEARCH_DATABASE_URL"]
    assert (ROOT / services["postgres"]["volumes"][1].split(":")[0]).exists()


def test_dockerfile_default_command_is_real() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = next(line for line in lines if line.startswith("CMD"))
    words = yaml.safe_load(cmd.removeprefix("CMD").strip())
    assert words[0] == "prunesearch"
    assert build_parser().parse_args(words[1:]).command == "serve"


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()

"""There is no Docker engine here, so check the compose stack by reading it: it parses, has every
service with healthchecks and ordering, and every command it runs exists in the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml

from services.cli import build_parser
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services: dict[str, Any] = compose["services"]


def test_compose_names_every_service() -> None:
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "intake",
        "reporting",
        "worker",
        "callback-worker",
        "relay",
    }


def test_redis_keeps_tasks_across_restarts_and_never_evicts() -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_app_services_wait_for_healthy_dependencies_and_migrations() -> None:
    for name in ("intake", "reporting", "worker", "callback-worker", "relay"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "intake", "reporting", "worker", "callback-worker"):
        assert "healthcheck" in services[name], name


def test_web_services_run_under_gunicorn_with_importable_apps() -> None:
    for name in ("intake", "reporting"):
        command = services[name]["command"]
        assert command[0] == "gunicorn"
        module, attr = command[-1].split(":")
        assert hasattr(importlib.import_module(module), attr)
        config = command[command.index("-c") + 1]
        assert (ROOT / config).is_file()


def test_worker_command_points_at_the_celery_app() -> None:
    command = services["worker"]["command"]
    assert command[:2] == ["celery", "-A"]
    module = importlib.import_module(command[2])
    assert "rules.score_assessment" in module.app.tasks
    queues = set(command[command.index("-Q") + 1].split(","))
    # Callbacks have their own worker, so a slow EHR endpoint never delays scoring.
    # Its own Celery app, which never loads the rule set.
    callback_command = services["callback-worker"]["command"]
    assert callback_command[:3] == ["celery", "-A", "services.callbacks.worker"]
    callbacks_app = importlib.import_module(callback_command[2]).app
    assert "callbacks.deliver" in callbacks_app.tasks
    assert "callbacks.deliver" not in module.app.tasks
    assert "rules.score_assessment" not in callbacks_app.tasks
    callback_queues = set(callback_command[callback_command.index("-Q") + 1].split(","))
    assert callback_queues == {"callbacks"}
    assert queues | callback_queues == {q.name for q in module.app.conf.task_queues}
    assert not queues & callback_queues


def test_cli_commands_in_compose_parse() -> None:
    parser = build_parser()
    for name in ("migrate", "relay"):
        command = services[name]["command"]
        assert command[0] == "myotriage"
        parser.parse_args(command[1:])


def test_environment_names_are_settings_the_code_reads() -> None:
    known = {env for env, _ in Settings.documented()}
    # gunicorn's own settings: those deploy/gunicorn.conf.py reads.
    gunicorn_conf = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    known |= set(re.findall(r'os\.environ\.get\("(\w+)"', gunicorn_conf))
    known.add("PROMETHEUS_MULTIPROC_DIR")
    for name, service in services.items():
        if name in ("postgres", "redis"):
            continue
        assert set(service.get("environment", {})) <= known, name


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        for part in source.split():
            assert (ROOT / part).exists(), part


def test_env_example_documents_every_setting() -> None:
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert example == {env for env, _ in Settings.documented()}

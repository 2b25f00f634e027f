"""Fault tests get a database and a redis-server of their own, so the session's worker and relay
cannot rescue their reports by another path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.intake.app import create_app
from shared.auth import SCOPES, create_api_key
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from tests.support import RedisServer, private_database, service_env


@pytest.fixture
def isolated_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    yield from private_database(database_url, tmp_path, "faults")


class FaultRig:
    """A private database + redis-server, an intake app on them, and the env for processes."""

    def __init__(self, database_url: str, workdir: Path, **settings: Any) -> None:
        upgrade_database(database_url)
        self.redis = RedisServer(workdir / "redis").start()
        self.database_url = database_url
        self.workdir = workdir
        self.extra_env = {
            "MYOTRIAGE_RELAY_REPUBLISH_AFTER_SECONDS": str(settings.pop("republish_after", 60)),
        }
        self.settings = Settings.from_env(
            database_url=database_url, redis_url=self.redis.url, api_key_cache_seconds=0.0
        )
        self.sessions = make_session_factory(make_engine(database_url))
        with transaction(self.sessions) as session:
            _, key = create_api_key(session, "faults", list(SCOPES))
        self.auth = {"Authorization": f"Bearer {key}"}
        self.client = create_app(self.settings).test_client()

    @property
    def env(self) -> dict[str, str]:
        return service_env(self.database_url, self.redis.url, **self.extra_env)

    def submit(self, body: dict[str, Any]) -> str:
        response = self.client.post("/v1/assessments", json=body, headers=self.auth)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def status(self, assessment_id: str) -> str:
        body = self.client.get(f"/v1/assessments/{assessment_id}", headers=self.auth).get_json()
        return str(body["status"])


@pytest.fixture
def rig_factory(isolated_database: str, tmp_path: Path) -> Iterator[Any]:
    rigs: list[FaultRig] = []

    def make(**settings: Any) -> FaultRig:
        rig = FaultRig(isolated_database, tmp_path, **settings)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.redis.stop()
        rig.sessions.kw["bind"].dispose()

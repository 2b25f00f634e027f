"""Revoking credentials takes effect at once in every process (Redis pub/sub), and within the
cache time while Redis is away; the caches are bounded; API key prefixes are unique.

Real Redis (the session's, or one of the test's own to stop and start), real database, and for
"another process" a real one."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.cli import main as cli
from services.intake.app import create_app as create_intake
from services.local_stack import free_port
from shared import auth
from shared.auth import (
    UNKNOWN_KEYS_CACHED,
    ApiKeyVerifier,
    announce_revocation,
    create_api_key,
    revoke_api_key,
)
from shared.cache_invalidation import stop_listener
from shared.config import Settings
from shared.db import transaction
from shared.models import ApiKey
from tests.factories import report
from tests.integration.test_webhooks import send, v1_body
from tests.support import PROJECT_ROOT, RedisServer, service_env, wait_until

LONG_CACHE = 3600.0  # without invalidations, a revoked key would work for an hour

# "Another process": a verifier of its own with an hour-long cache, which says when it first
# refuses the key it accepted.
OTHER_PROCESS = r"""
import faulthandler, os, sys, time
# Stuck (a busy database under a loaded suite)? Say where, on stderr, before the test gives up.
faulthandler.dump_traceback_later(75, exit=False)
from shared.auth import ApiKeyVerifier
from shared.db import make_engine, make_session_factory

database_url, redis_url, key = sys.argv[1:4]
verifier = ApiKeyVerifier(make_session_factory(make_engine(database_url)), 3600.0, redis_url)
assert verifier.verify(key) is not None
assert verifier.revocations.listener.wait_subscribed(20)
# One write() each, on lines of their own: the listener thread's log lines share stdout, and a
# print() is two writes another thread's output can fall between.
os.write(1, b"\n@@accepted\n")
while verifier.verify(key) is not None:
    time.sleep(0.005)
os.write(1, b"\n@@refused\n")
"""


def new_key(sessions: Any, *scopes: str) -> tuple[ApiKey, str]:
    with transaction(sessions) as session:
        return create_api_key(session, "revocation test", list(scopes or ["assessments:write"]))


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """What the other process says (not its log lines), as it says it."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() in ("@@accepted", "@@refused"):
                lines.put(line.strip().removeprefix("@@"))

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line sees the tests' database and Redis, as an operator's shell would."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)


def test_a_revocation_reaches_another_process_within_a_second(
    settings: Settings, sessions: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    row, key = new_key(sessions)
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_PROCESS, settings.database_url, settings.redis_url, key],
        cwd=PROJECT_ROOT,
        env=service_env(settings.database_url, settings.redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = lines_of(other)
        try:
            # Generous: under a loaded suite, starting Python and its first SQLite read can
            # wait on the busy timeout (30 s). The one-second claim is about what follows.
            assert lines.get(timeout=90) == "accepted"
        except queue.Empty:
            other.kill()
            _, errors = other.communicate(timeout=10)
            raise AssertionError(f"the other process did not start: {errors[-2000:]}") from None
        assert cli(["api-key", "revoke", row.key_prefix]) == 0
        revoked_at = time.monotonic()
        assert "revoked" in capsys.readouterr().out
        assert lines.get(timeout=1.0) == "refused"
        assert time.monotonic() - revoked_at < 1.0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=10)


def test_an_app_with_an_hour_long_cache_refuses_a_revoked_key_at_once(
    settings: Settings, sessions: Any, cli_env: None
) -> None:
    app = create_intake(settings.with_overrides(api_key_cache_seconds=LONG_CACHE))
    client = app.test_client()
    row, key = new_key(sessions)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/assessments", json=report(), headers=headers).status_code == 202
    verifier: ApiKeyVerifier = app.extensions["myotriage.api_keys"]
    assert verifier.revocations is not None
    assert verifier.revocations.listener.wait_subscribed(10)
    assert cli(["api-key", "revoke", row.id]) == 0
    revoked_at = time.monotonic()
    wait_until(
        lambda: client.get("/v1/assessments/none", headers=headers).status_code == 401,
        timeout=1.0,
        what="the revoked key to be refused",
        interval=0.01,
    )
    assert time.monotonic() - revoked_at < 1.0


@pytest.fixture
def redis_nowhere() -> Iterator[str]:
    """A Redis URL where nothing listens."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    yield url
    stop_listener(url)


def test_without_redis_nothing_waits_and_the_cache_time_bounds_a_revocation(
    sessions: Any, redis_nowhere: str
) -> None:
    cache_seconds = 2.0
    verifier = ApiKeyVerifier(sessions, cache_seconds, redis_nowhere)
    row, key = new_key(sessions)
    started = time.monotonic()
    assert verifier.verify(key) is not None
    cached_at = time.monotonic()
    assert cached_at - started < 0.5  # the listener's failing connection does not hold it up
    with transaction(sessions) as session:
        assert revoke_api_key(session, row.key_prefix) is not None
    before = time.monotonic()
    assert announce_revocation(redis_nowhere, [row.key_hash]) is False
    assert time.monotonic() - before < 3
    assert verifier.revocations is not None and not verifier.revocations.listener.subscribed
    if time.monotonic() - cached_at < cache_seconds - 0.5:
        assert verifier.verify(key) is not None  # cached: Redis could not say otherwise
    time.sleep(max(0.0, cached_at + cache_seconds - time.monotonic()) + 0.05)
    assert verifier.verify(key) is None  # the fallback bound


def test_a_listener_reconnects_after_redis_returns_and_forgets_what_it_may_have_missed(
    sessions: Any, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    verifier = ApiKeyVerifier(sessions, LONG_CACHE, server.url)
    try:
        row, key = new_key(sessions)
        assert verifier.verify(key) is not None
        assert verifier.revocations is not None
        listener = verifier.revocations.listener
        assert listener.wait_subscribed(10)
        assert verifier.verify(key) is not None  # cached again (subscribing emptied the cache)

        server.stop()
        wait_until(lambda: not listener.subscribed, timeout=15, what="the listener to notice")
        with transaction(sessions) as session:
            revoke_api_key(session, row.id)
        assert announce_revocation(server.url, [row.key_hash]) is False  # lost
        assert verifier.verify(key) is not None  # still cached, as nobody could say

        server = RedisServer(tmp_path / "redis", port=server.port).start()
        assert listener.wait_subscribed(20)  # back-off is at most 15 s
        assert verifier.verify(key) is None  # the cache was emptied on resubscribing

        other_row, other_key = new_key(sessions)
        assert verifier.verify(other_key) is not None
        with transaction(sessions) as session:
            revoke_api_key(session, other_row.key_prefix)
        assert announce_revocation(server.url, [other_row.key_hash]) is True
        wait_until(lambda: verifier.verify(other_key) is None, timeout=1.0, what="revocation")
    finally:
        stop_listener(server.url)
        server.stop()


def test_made_up_keys_never_push_a_known_key_out_of_the_cache(sessions: Any) -> None:
    verifier = ApiKeyVerifier(sessions, 60.0)
    row, key = new_key(sessions)
    assert verifier.verify(key) is not None
    for _ in range(UNKNOWN_KEYS_CACHED + 500):
        assert verifier.verify(f"mt_00000000_{uuid.uuid4().hex}") is None
    # Revoked in the database only (nobody announces it): a cached key still answers, which
    # shows the flood did not evict it.
    with transaction(sessions) as session:
        revoke_api_key(session, row.id)
    assert verifier.verify(key) is not None
    verifier.invalidate([row.key_hash])
    assert verifier.verify(key) is None


def test_key_prefixes_are_unique_and_a_collision_draws_again(
    sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken, _ = new_key(sessions)
    draws = iter([taken.key_prefix, "0badcafe"])
    monkeypatch.setattr(auth.secrets, "token_hex", lambda _: next(draws))
    with transaction(sessions) as session:
        row, raw = create_api_key(session, "second", ["assessments:write"])
    assert row.key_prefix == "0badcafe" and raw.startswith("mt_0badcafe_")
    monkeypatch.undo()

    # The database refuses a duplicate however it is written ...
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        session.add(
            ApiKey(
                name="dup",
                key_prefix=taken.key_prefix,
                key_hash=uuid.uuid4().hex,
                scopes=[],
                tenant_id=taken.tenant_id,
            )
        )
    # ... so revoking by prefix names exactly one key.
    with transaction(sessions) as session:
        assert revoke_api_key(session, "0badcafe") is not None
    with sessions() as session:
        revoked = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_not(None))).all()
        assert "0badcafe" in {key.key_prefix for key in revoked}
        assert session.get(ApiKey, taken.id).revoked_at is None  # type: ignore[union-attr]


def test_webhook_secret_changes_reach_an_hour_long_sender_cache_at_once(
    settings: Settings, auth: dict[str, str]
) -> None:
    app = create_intake(settings.with_overrides(api_key_cache_seconds=LONG_CACHE))
    client = app.test_client()
    created = client.post(
        "/v1/admin/integrations", json={"name": f"ehr-{uuid.uuid4().hex[:8]}"}, headers=auth
    )
    assert created.status_code == 201
    integration = created.get_json()
    assert send(client, integration, v1_body()).status_code == 202  # its sender is now cached
    senders = app.extensions["myotriage.webhook_senders"]
    assert senders.changes.listener.wait_subscribed(10)

    def refused(secret: str) -> bool:
        return bool(send(client, {**integration, "secret": secret}, v1_body()).status_code == 401)

    # A new secret works at once.
    added = client.post(f"/v1/admin/integrations/{integration['id']}/secrets", headers=auth)
    assert added.status_code == 201
    new_secret = added.get_json()["secret"]
    wait_until(lambda: not refused(new_secret), timeout=1.0, what="the new secret", interval=0.01)
    # A revoked one is refused at once.
    first_id = integration["secrets"][0]["id"]
    revoked = client.delete(
        f"/v1/admin/integrations/{integration['id']}/secrets/{first_id}", headers=auth
    )
    assert revoked.status_code == 204
    wait_until(lambda: refused(integration["secret"]), timeout=1.0, what="refusal", interval=0.01)
    assert not refused(new_secret)
    # A disabled integration is refused at once.
    disabled = client.post(f"/v1/admin/integrations/{integration['id']}/disable", headers=auth)
    assert disabled.status_code == 200
    wait_until(lambda: refused(new_secret), timeout=1.0, what="refusal", interval=0.01)

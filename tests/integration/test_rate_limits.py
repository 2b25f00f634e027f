"""Rate limits (shared/rate_limits.py) on a real Redis: per key, per address, failed
authentication, fail-open while Redis is down.

Each test builds apps of its own with small limits and sends from addresses of its own (the
documentation ranges; Flask's test client only labels the request with them), so the suite's
generous limits and other tests' counts never meet these.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.intake.app import create_app as create_intake
from services.reporting.app import create_app as create_reporting
from shared.auth import hash_key
from shared.config import Settings
from tests.factories import report
from tests.support import RedisServer

PROBLEM = "application/problem+json"
GENEROUS = "100000/minute"
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture
def address() -> str:
    """A client address no other test sends from."""
    return next(_addresses)


def limited(settings: Settings, **limits: str) -> Settings:
    """`settings` with these limits and generous ones for the rest."""
    values = {
        "rate_limit_enabled": True,
        "rate_limit_per_key": GENEROUS,
        "rate_limit_per_address": GENEROUS,
        "rate_limit_failed_auth": GENEROUS,
    }
    values.update({f"rate_limit_{name}": value for name, value in limits.items()})
    return settings.with_overrides(**values)


def post(client: Any, key: str, address: str) -> Any:
    return client.post(
        "/v1/assessments",
        json=report(),
        headers={"Authorization": f"Bearer {key}"},
        environ_base={"REMOTE_ADDR": address},
    )


def assert_rate_limited(response: Any, limit: int) -> dict[str, Any]:
    assert response.status_code == 429, response.get_json()
    assert response.mimetype == PROBLEM
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    problem: dict[str, Any] = response.get_json()
    assert problem["status"] == 429 and problem["title"] == "Too Many Requests"
    assert problem["type"].endswith("/rate-limited") and problem["request_id"]
    assert f"Try again in {retry_after} s" in problem["detail"]
    return problem


def test_the_request_after_a_keys_limit_gets_429_and_other_keys_go_on(
    settings: Settings, make_key: Any, address: str
) -> None:
    client = create_intake(limited(settings, per_key="3/minute")).test_client()
    key, other_key = make_key("assessments:write"), make_key("assessments:write")
    assert [post(client, key, address).status_code for _ in range(3)] == [202, 202, 202]
    problem = assert_rate_limited(post(client, key, address), limit=3)
    assert "API key" in problem["detail"]
    # Another key, from the same address, is not affected.
    assert post(client, other_key, address).status_code == 202


def test_failed_authentication_is_refused_sooner_then_the_address_waits(
    settings: Settings, make_key: Any, address: str
) -> None:
    client = create_intake(
        limited(settings, per_key="10/minute", failed_auth="3/minute")
    ).test_client()
    # Made-up keys, a different one each time: the failures count per address.
    statuses = [post(client, f"mt_0000000{n}_guess", address).status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    problem = assert_rate_limited(post(client, "mt_00000009_guess", address), limit=3)
    assert "failed authentication" in problem["detail"]
    # The address is refused for a while, even with a good key...
    key = make_key("assessments:write")
    assert post(client, key, address).status_code == 429
    # ...but the same key from elsewhere is not.
    assert post(client, key, next(_addresses)).status_code == 202


def test_the_request_after_an_address_limit_gets_429(
    settings: Settings, make_key: Any, address: str
) -> None:
    client = create_intake(limited(settings, per_address="2/minute")).test_client()
    key = make_key("assessments:write")
    assert [post(client, key, address).status_code for _ in range(2)] == [202, 202]
    problem = assert_rate_limited(post(client, key, address), limit=2)
    assert "address" in problem["detail"]
    assert post(client, key, next(_addresses)).status_code == 202


def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(
    settings: Settings, make_key: Any, address: str
) -> None:
    app = create_intake(
        limited(settings, per_address="1/minute").with_overrides(trusted_proxy_hops=1)
    )
    client, key = app.test_client(), make_key("assessments:write")

    def via_proxy(client_address: str) -> int:
        response = client.post(
            "/v1/assessments",
            json=report(),
            headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": client_address},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},  # the proxy
        )
        return int(response.status_code)

    other = next(_addresses)
    assert [via_proxy(address), via_proxy(other), via_proxy(address)] == [202, 202, 429]


def test_reporting_is_limited_too(settings: Settings, make_key: Any, address: str) -> None:
    client = create_reporting(limited(settings, per_key="2/minute")).test_client()
    headers = {"Authorization": f"Bearer {make_key('reports:read')}"}
    environ = {"REMOTE_ADDR": address}
    statuses = [
        client.get("/v1/reports/queue", headers=headers, environ_base=environ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_a_large_limit_is_counted_in_batches_and_overrun_by_less_than_one(
    settings: Settings, make_key: Any, address: str
) -> None:
    # 300/minute: a process tells Redis every 3 requests (1% of the limit).
    client = create_intake(limited(settings, per_key="300/minute")).test_client()
    key = make_key("assessments:read")
    headers = {"Authorization": f"Bearer {key}"}
    environ = {"REMOTE_ADDR": address}
    statuses = [
        client.get("/v1/assessments/unknown", headers=headers, environ_base=environ).status_code
        for _ in range(310)
    ]
    accepted = statuses.index(429)
    assert 300 <= accepted <= 302  # the limit, plus at most a batch less one
    assert set(statuses[accepted:]) == {429}  # and from then on every request is asked about


def test_probes_metrics_and_public_documents_are_never_limited(
    settings: Settings, address: str
) -> None:
    client = create_intake(limited(settings, per_address="1/minute")).test_client()
    paths = [
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/v1/schemas/symptom-report",
        "/fhir/Questionnaire/myotriage-symptom-report-v1",
    ]
    for path in paths * 3:
        response = client.get(path, environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 200, path
    # The budget of 1 is still there for a request that counts.
    assert client.get("/v1/assessments/x", environ_base={"REMOTE_ADDR": address}).status_code == 401


def test_redis_holds_neither_the_key_nor_its_stored_hash(
    settings: Settings, make_key: Any, address: str
) -> None:
    client = create_intake(limited(settings, per_key="1/minute")).test_client()
    key = make_key("assessments:write")
    assert post(client, key, address).status_code == 202
    assert post(client, key, address).status_code == 429
    names = [
        name.decode() for name in redis.Redis.from_url(settings.redis_url).scan_iter("LIMITS:*")
    ]
    assert any("intake:api-key" in name for name in names)  # the key's count is in Redis
    secret = key.rsplit("_", 1)[1]
    assert not any(secret in name or hash_key(key) in name for name in names)


def test_a_bad_limit_setting_stops_the_service_naming_it(settings: Settings) -> None:
    with pytest.raises(ValueError, match="MYOTRIAGE_RATE_LIMIT_PER_KEY"):
        create_intake(limited(settings, per_key="lots"))


def test_disabled_limits_refuse_nothing(settings: Settings, make_key: Any, address: str) -> None:
    app = create_intake(
        limited(settings, per_key="1/minute").with_overrides(rate_limit_enabled=False)
    )
    key = make_key("assessments:write")
    assert "myotriage.rate_limits" not in app.extensions
    assert [post(app.test_client(), key, address).status_code for _ in range(3)] == [202] * 3


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_intake_accepts_while_redis_is_down_and_limits_again_when_it_is_back(
    settings: Settings, make_key: Any, address: str, own_redis: RedisServer
) -> None:
    client = create_intake(
        limited(settings, per_key="5/minute").with_overrides(redis_url=own_redis.url)
    ).test_client()
    key = make_key("assessments:write")
    assert post(client, key, address).status_code == 202  # counted in Redis

    own_redis.stop()
    for _ in range(4):
        started = time.monotonic()
        assert post(client, key, address).status_code == 202  # fails open, and fast
        assert time.monotonic() - started < 1.0
    # Meanwhile each process keeps the limits in memory (counting from zero).
    assert post(client, key, address).status_code == 202
    assert post(client, key, address).status_code == 429

    own_redis.start()  # same port, empty
    # Back on Redis once the limiter tries it again (after at most a few seconds).
    other_key = make_key("assessments:write")
    deadline = time.monotonic() + 10
    while not redis.Redis.from_url(own_redis.url).keys("LIMITS:*"):
        assert time.monotonic() < deadline, "the limiter did not return to Redis"
        assert post(client, other_key, next(_addresses)).status_code in (202, 429)
        time.sleep(0.2)

"""Faults lose nothing: Redis restarts, a worker SIGKILLed mid-batch, the relay killed.

Each ends with every accepted report scored exactly once in effect.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.celery_app import SCORE_GROUP_TASK
from shared.models import Assessment, TriageResult
from tests.factories import DOMS, STROKE, report
from tests.support import queue_reports, relay_process, wait_until, worker_process

pytestmark = pytest.mark.slow


def patient(n: int) -> dict[str, Any]:
    base = STROKE if n % 3 == 0 else DOMS if n % 3 == 1 else None
    return report(base, patient={"id": f"FAULT-{n}", "age": 30 + n % 60})


def scored_count(rig: Any, ids: list[str]) -> int:
    with rig.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Assessment)
                .where(Assessment.id.in_(ids), Assessment.status == "scored")
            )
            or 0
        )


def assert_each_scored_exactly_once(rig: Any, ids: list[str]) -> None:
    with rig.sessions() as session:
        per_assessment = dict(
            session.execute(
                select(TriageResult.assessment_id, func.count())
                .where(TriageResult.assessment_id.in_(ids))
                .group_by(TriageResult.assessment_id)
            ).all()
        )
    assert set(per_assessment) == set(ids)
    assert set(per_assessment.values()) == {1}


def test_redis_down_at_submit_then_restarted_scores_the_report(rig_factory: Any) -> None:
    rig = rig_factory()
    logs = rig.workdir / "logs"
    worker = worker_process(rig.env, logs).start()
    relay = relay_process(rig.env, logs).start()
    try:
        first = rig.submit(patient(0))
        wait_until(lambda: rig.status(first) == "scored", 30, "the first report to be scored")

        rig.redis.stop()
        ready = rig.client.get("/readyz").get_json()
        assert ready["status"] == "degraded" and ready["checks"]["redis"] == "down"
        during = [rig.submit(patient(n)) for n in range(1, 6)]  # intake still answers 202
        time.sleep(1.0)
        assert all(rig.status(i) == "queued" for i in during)

        rig.redis.start()  # same port, empty: nothing survived in Redis
        wait_until(
            lambda: scored_count(rig, during) == len(during),
            60,
            "reports accepted during the outage to be scored",
        )
        assert_each_scored_exactly_once(rig, [first, *during])
        assert worker.alive() and relay.alive()
    finally:
        worker.stop()
        relay.stop()


def test_messages_lost_with_redis_are_republished(rig_factory: Any) -> None:
    rig = rig_factory(republish_after=2)
    logs = rig.workdir / "logs"
    relay = relay_process(rig.env, logs).start()
    worker = None
    try:
        # No worker yet: the relay publishes into Redis, then Redis restarts empty.
        ids = [rig.submit(patient(n)) for n in range(6)]
        wait_until(
            lambda: rig.redis.proc is not None and _queued_in_redis(rig) >= len(ids),
            20,
            "the relay to publish",
        )
        rig.redis.stop()
        rig.redis.start()
        assert _queued_in_redis(rig) == 0
        worker = worker_process(rig.env, logs).start()
        wait_until(
            lambda: scored_count(rig, ids) == len(ids),
            60,
            "lost messages to be republished and scored",
        )
        assert_each_scored_exactly_once(rig, ids)
    finally:
        relay.stop()
        if worker is not None:
            worker.stop()


def _queued_in_redis(rig: Any) -> int:
    """How many reports wait in the scoring queue: one per per-report message, the length of
    its list for a group (`rules.score_group` carries many assessment ids)."""
    import redis

    waiting = 0
    for raw in redis.Redis.from_url(rig.redis.url).lrange("scoring", 0, -1):
        message = json.loads(raw)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        waiting += len(args[0]) if message["headers"]["task"] == SCORE_GROUP_TASK else 1
    return waiting


def test_worker_killed_mid_batch_loses_nothing_and_scores_once(rig_factory: Any) -> None:
    """A backlog goes out in groups of a few hundred reports, each scored in one transaction:
    the worker is killed while groups are in flight, and a replacement finishes them."""
    rig = rig_factory(republish_after=3)
    logs = rig.workdir / "logs"
    relay = relay_process(rig.env, logs).start()
    worker = worker_process(rig.env, logs, name="doomed").start()
    replacement = None
    try:
        first = rig.submit(patient(0))
        wait_until(lambda: rig.status(first) == "scored", 60, "the worker to be ready")
        # One transaction: the relay finds all of them pending and sends full groups.
        ids = queue_reports(rig.sessions, [patient(n) for n in range(1, 1501)])
        wait_until(lambda: scored_count(rig, ids) >= 1, 60, "the worker to get going", 0.005)
        worker.kill()  # SIGKILL the whole worker, main process and children, mid-batch
        done_at_kill = scored_count(rig, ids)
        assert done_at_kill < len(ids), "the batch finished before the kill: make it larger"
        replacement = worker_process(rig.env, logs, name="replacement").start()
        wait_until(lambda: scored_count(rig, ids) == len(ids), 120, "every report to be scored")
        assert_each_scored_exactly_once(rig, ids)
    finally:
        relay.stop()
        worker.stop()
        if replacement is not None:
            replacement.stop()


def test_relay_killed_and_restarted_catches_up(rig_factory: Any) -> None:
    rig = rig_factory()
    logs = rig.workdir / "logs"
    worker = worker_process(rig.env, logs).start()
    relay = relay_process(rig.env, logs).start()
    try:
        relay.kill()
        ids = [rig.submit(patient(n)) for n in range(20)]
        time.sleep(0.5)
        assert scored_count(rig, ids) == 0
        relay = relay_process(rig.env, logs, name="relay2").start()
        wait_until(lambda: scored_count(rig, ids) == len(ids), 60, "the backlog to be scored")
        assert_each_scored_exactly_once(rig, ids)
    finally:
        relay.stop()
        worker.stop()


def test_a_backlog_is_not_mistaken_for_lost_messages(rig_factory: Any) -> None:
    """Messages waiting behind a backlog are not republished: that would only grow it."""
    import redis

    rig = rig_factory(republish_after=1)
    logs = rig.workdir / "logs"
    relay = relay_process(rig.env, logs).start()
    try:
        ids = [rig.submit(patient(n)) for n in range(30)]
        # No worker: everything waits in the queue, long past `republish_after`.
        wait_until(lambda: _queued_in_redis(rig) >= len(ids), 20, "the relay to publish")
        time.sleep(4)
        assert _queued_in_redis(rig) == len(ids)  # nothing was published twice
        assert 1 <= redis.Redis.from_url(rig.redis.url).llen("scoring") <= len(ids)
    finally:
        relay.stop()

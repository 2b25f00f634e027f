"""Scoring in groups: the relay sends pending reports a group per message (`rules.score_group`),
and the worker scores a group with one read and one write transaction.

Through the session's real relay, worker and callbacks worker: a backlog of 300 gets exactly one
current result each, a poisoned report fails alone, a group delivered twice at once changes
nothing, and callbacks reach only each report's own tenant. In this process, on a private
database no relay watches: the duplicate found at write time falls back to one report at a time.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select

from services.rules.engine import RuleSet, load_ruleset
from services.rules.scoring import score_assessment, score_group
from shared import repository
from shared.auth import create_api_key
from shared.callbacks import EVENT_EMERGENCY, EVENT_SCORED, events_for
from shared.celery_app import SCORE_GROUP_TASK, SCORING_QUEUE, create_celery
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import (
    DEFAULT_TENANT_ID,
    Assessment,
    CallbackDelivery,
    CallbackSubscription,
    OutboxMessage,
    TriageResult,
)
from shared.secrets_at_rest import install_secret_keys
from tests.factories import DOMS, STROKE, report
from tests.support import TEST_SECRET_KEYS, private_database, queue_reports, wait_until


class OkReceiver:
    """An EHR endpoint on loopback that takes every callback (204) and counts them by path."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.paths[self.path] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def ehr() -> Iterator[OkReceiver]:
    receiver = OkReceiver()
    yield receiver
    receiver.server.shutdown()


# The engine raises on this (a complaint that is not a code): a bug's stand-in.
POISON = {"complaints": [{"not": "a code"}]}


def patient(n: int, **fields: Any) -> dict[str, Any]:
    base = STROKE if n % 3 == 0 else DOMS if n % 3 == 1 else None
    return {**report(base, patient={"id": f"GROUP-{n}", "age": 30 + n % 60}), **fields}


def results_per_assessment(sessions: Any, ids: list[str]) -> dict[str, tuple[int, int]]:
    """assessment id -> (results, current results)."""
    with sessions() as session:
        rows = session.execute(
            select(TriageResult.assessment_id, TriageResult.current).where(
                TriageResult.assessment_id.in_(ids)
            )
        ).all()
    counts: dict[str, list[int]] = {}
    for assessment_id, current in rows:
        pair = counts.setdefault(assessment_id, [0, 0])
        pair[0] += 1
        pair[1] += int(bool(current))
    return {assessment_id: (pair[0], pair[1]) for assessment_id, pair in counts.items()}


def statuses(sessions: Any, ids: list[str]) -> dict[str, str]:
    with sessions() as session:
        return dict(
            session.execute(
                select(Assessment.id, Assessment.status).where(Assessment.id.in_(ids))
            ).all()
        )


def settled(sessions: Any, ids: list[str]) -> bool:
    return all(s in ("scored", "failed") for s in statuses(sessions, ids).values())


def open_score_messages(sessions: Any, ids: list[str]) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(
                    OutboxMessage.assessment_id.in_(ids),
                    OutboxMessage.task_name == "rules.score_assessment",
                    OutboxMessage.completed_at.is_(None),
                )
            )
            or 0
        )


# ---- Through the real relay and worker ---------------------------------------------------------


@pytest.mark.usefixtures("pipeline")
def test_a_backlog_of_300_is_scored_with_exactly_one_current_result_each(sessions: Any) -> None:
    ids = queue_reports(sessions, [patient(n) for n in range(300)])
    wait_until(lambda: settled(sessions, ids), 90, "300 queued reports to be scored")
    assert set(statuses(sessions, ids).values()) == {"scored"}
    assert results_per_assessment(sessions, ids) == dict.fromkeys(ids, (1, 1))
    assert open_score_messages(sessions, ids) == 0
    with sessions() as session:
        levels = Counter(
            session.scalars(
                select(TriageResult.triage_level).where(TriageResult.assessment_id.in_(ids))
            )
        )
    assert levels["emergency_ambulance"] == 100 and levels["self_care"] >= 100


@pytest.mark.usefixtures("pipeline")
def test_a_poisoned_report_fails_alone_and_its_group_is_scored(sessions: Any) -> None:
    reports = [patient(n) for n in range(10)]
    reports.insert(5, patient(99, **POISON))
    ids = queue_reports(sessions, reports)  # one transaction: one group
    poisoned = ids[5]
    wait_until(lambda: settled(sessions, ids), 60, "the group to be scored")
    with sessions() as session:
        failed = session.get(Assessment, poisoned)
        assert failed is not None and failed.status == "failed"
        assert failed.failure_reason == "engine error: TypeError"
    others = [i for i in ids if i != poisoned]
    assert set(statuses(sessions, others).values()) == {"scored"}
    assert results_per_assessment(sessions, ids) == dict.fromkeys(others, (1, 1))
    assert open_score_messages(sessions, ids) == 0  # the poisoned one is not sent again


@pytest.mark.usefixtures("pipeline")
def test_a_group_delivered_twice_at_once_changes_nothing(
    sessions: Any, settings: Settings, pipeline: Any, ehr: OkReceiver
) -> None:
    """The same group message twice, as a broker redelivery or a relay republish makes it:
    both worker processes score it at the same time, and one current result stands each."""
    subscription_id = _subscribe(sessions, DEFAULT_TENANT_ID, ehr.url("/twice"))
    try:
        ids = queue_reports(sessions, [patient(n) for n in range(40)], published=True)
        with sessions() as session:
            task_id = session.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.assessment_id == ids[0])
                .where(OutboxMessage.task_name == "rules.score_assessment")
            ).one()
        celery = create_celery(settings, name="test-duplicates")
        for _ in range(2):
            celery.send_task(SCORE_GROUP_TASK, args=[ids], task_id=task_id, queue=SCORING_QUEUE)

        def both_done() -> bool:
            return _group_runs(pipeline["worker"].output(), task_id) == 2

        wait_until(both_done, 60, "both deliveries of the group to be run")
        assert set(statuses(sessions, ids).values()) == {"scored"}
        assert results_per_assessment(sessions, ids) == dict.fromkeys(ids, (1, 1))
        assert open_score_messages(sessions, ids) == 0
        with sessions() as session:
            deliveries = Counter(
                session.execute(
                    select(CallbackDelivery.assessment_id, CallbackDelivery.event_type).where(
                        CallbackDelivery.subscription_id == subscription_id
                    )
                ).all()
            )
            levels = dict(
                session.execute(
                    select(TriageResult.assessment_id, TriageResult.triage_level).where(
                        TriageResult.assessment_id.in_(ids)
                    )
                ).all()
            )
        expected = {(i, event): 1 for i in ids for event in events_for(levels[i])}
        assert dict(deliveries) == expected
        wait_until(lambda: ehr.paths["/twice"] == len(expected), 60, "every callback to arrive")
    finally:
        _disable(sessions, subscription_id)


@pytest.mark.usefixtures("pipeline")
def test_grouped_results_reach_only_their_own_tenants_subscriptions(
    sessions: Any, ehr: OkReceiver
) -> None:
    with transaction(sessions) as session:
        other = repository.create_tenant(session, f"group-{uuid.uuid4().hex[:8]}").id
        create_api_key(session, "group-test", ["callbacks:manage"], tenant_id=other)
    mine = _subscribe(sessions, DEFAULT_TENANT_ID, ehr.url("/mine"))
    theirs = _subscribe(sessions, other, ehr.url("/theirs"))
    try:
        tenants = [DEFAULT_TENANT_ID if n % 2 else other for n in range(30)]
        ids = queue_reports(sessions, [patient(n) for n in range(30)], tenant_ids=tenants)
        wait_until(lambda: settled(sessions, ids), 60, "the mixed group to be scored")
        tenant_of = dict(zip(ids, tenants, strict=True))
        with sessions() as session:
            levels = dict(
                session.execute(
                    select(TriageResult.assessment_id, TriageResult.triage_level).where(
                        TriageResult.assessment_id.in_(ids)
                    )
                ).all()
            )
            deliveries = session.execute(
                select(
                    CallbackDelivery.subscription_id,
                    CallbackDelivery.assessment_id,
                    CallbackDelivery.event_type,
                    CallbackDelivery.payload,
                ).where(CallbackDelivery.assessment_id.in_(ids))
            ).all()
        for subscription_id, tenant_id in ((mine, DEFAULT_TENANT_ID), (theirs, other)):
            heard = sorted(
                (assessment_id, event)
                for sub, assessment_id, event, _ in deliveries
                if sub == subscription_id
            )
            expected = sorted(
                (i, event)
                for i in ids
                if tenant_of[i] == tenant_id
                for event in events_for(levels[i])
            )
            assert heard == expected
        assert {event for _, _, event, _ in deliveries} == {EVENT_SCORED, EVENT_EMERGENCY}
        for _, assessment_id, _, payload in deliveries:
            assert payload["data"]["assessment_id"] == assessment_id
            assert payload["data"]["triage"] == levels[assessment_id]
            assert "GROUP-" not in json.dumps(payload)  # ids and codes only, no patient data
        arrived = {"/mine": 0, "/theirs": 0}
        for subscription_id, _, _, _ in deliveries:
            arrived["/mine" if subscription_id == mine else "/theirs"] += 1
        wait_until(
            lambda: {path: ehr.paths[path] for path in arrived} == arrived,
            60,
            "each tenant's callbacks to arrive at its own endpoint",
        )
    finally:
        _disable(sessions, mine)
        _disable(sessions, theirs)


def _group_runs(worker_log: str, task_id: str) -> int:
    runs = 0
    for line in worker_log.splitlines():
        if task_id in line and '"score.group_done"' in line:
            runs += 1
    return runs


def _subscribe(sessions: Any, tenant_id: str, url: str) -> str:
    """A subscription to both events, stored as it is (past the API's checks)."""
    from services.reporting.api.subscriptions import new_secret

    install_secret_keys(TEST_SECRET_KEYS)  # as every service does at start-up
    subscription = CallbackSubscription(
        tenant_id=tenant_id,
        owner_key_id="group-test",
        callback_url=url,
        secret=new_secret(),
        event_types=[EVENT_SCORED, EVENT_EMERGENCY],
        include_fhir=False,
    )
    with transaction(sessions) as session:
        session.add(subscription)
    return subscription.id


def _disable(sessions: Any, subscription_id: str) -> None:
    from shared.callbacks import disable_subscription

    with transaction(sessions) as session:
        subscription = session.get(CallbackSubscription, subscription_id)
        assert subscription is not None
        disable_subscription(session, subscription, "test over")


# ---- In this process, on a private database ----------------------------------------------------


@pytest.fixture
def private_sessions(database_url: str, tmp_path: Any) -> Iterator[Any]:
    databases = private_database(database_url, tmp_path, "groups")
    url = next(databases)
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
    next(databases, None)


class RacedRuleSet:
    """The real rule set, except that while the group is being scored another "worker" stores
    the first report's result: the group's write then meets the unique index."""

    def __init__(self, ruleset: RuleSet, sessions: Any, raced_id: str) -> None:
        self.ruleset = ruleset
        self.version = ruleset.version
        self.sessions = sessions
        self.raced_id = raced_id

    def score(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.raced_id:
            raced, self.raced_id = self.raced_id, ""
            assert score_assessment(self.sessions, self.ruleset, raced).outcome == "scored"
        return self.ruleset.score(data)


def test_a_duplicate_met_at_write_time_falls_back_to_one_report_at_a_time(
    private_sessions: Any,
) -> None:
    sessions = private_sessions
    subscription_id = _subscribe(sessions, DEFAULT_TENANT_ID, "http://127.0.0.1:9/hook")
    reports = [patient(n) for n in range(12)]
    reports.insert(3, patient(77, **POISON))
    ids = queue_reports(sessions, reports, published=True)
    ruleset = load_ruleset()
    raced = RacedRuleSet(ruleset, sessions, ids[0])

    outcome = score_group(sessions, raced, ids)  # type: ignore[arg-type]

    assert outcome.fell_back
    assert [f.assessment_id for f in outcome.failed] == [ids[3]]
    good = [i for i in ids if i != ids[3]]
    assert results_per_assessment(sessions, ids) == dict.fromkeys(good, (1, 1))
    assert statuses(sessions, ids) == {i: "failed" if i == ids[3] else "scored" for i in ids}
    assert open_score_messages(sessions, ids) == 0
    with sessions() as session:
        per_assessment = Counter(
            session.scalars(
                select(CallbackDelivery.assessment_id).where(
                    CallbackDelivery.subscription_id == subscription_id,
                    CallbackDelivery.event_type == EVENT_SCORED,
                )
            )
        )
    assert per_assessment == dict.fromkeys(good, 1)

    again = score_group(sessions, ruleset, ids)  # delivered once more: nothing changes
    assert again.scored == [] and not again.fell_back
    assert sorted(again.already_scored) == sorted(good)
    assert results_per_assessment(sessions, ids) == dict.fromkeys(good, (1, 1))

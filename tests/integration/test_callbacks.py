"""Outbound result callbacks, received by a real HTTP server on loopback and checked with the
`standardwebhooks` package (a verifier we did not write).

Most tests drive one delivery attempt at a time on a private database (so the session's worker
and relay cannot race them) with a receiver that fails on purpose: 500, timeouts, refused
connections, 410, Retry-After. Others check where callbacks may go (loopback only through the
allowlist, to the address that was checked) and the caps on in-flight attempts and on
subscriptions. Two tests go through real processes: the session's worker and relay (a scored
report arrives signed), and a callback worker + relay of our own with a short retry schedule
(retries from the database, a slow endpoint not holding up another).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.callbacks.delivery import RetryPolicy, deliver, parse_retry_after, parse_schedule
from services.local_stack import LOOPBACK_CALLBACK_NETWORKS, callbacks_worker_command, free_port
from services.reporting.api.subscriptions import new_secret
from services.reporting.app import create_app as create_reporting
from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared import repository
from shared.auth import create_api_key
from shared.callback_destinations import DestinationPolicy, IPAddress
from shared.callbacks import CALLBACK_TASK, EVENT_EMERGENCY, EVENT_SCORED, queue_due_deliveries
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import (
    DEFAULT_TENANT_ID,
    Assessment,
    CallbackAttempt,
    CallbackDelivery,
    CallbackSubscription,
    OutboxMessage,
    utcnow,
)
from tests.factories import DOMS, STROKE, report
from tests.support import (
    RedisServer,
    ServiceProcess,
    private_database,
    relay_process,
    service_env,
    wait_until,
)

FAST = RetryPolicy(schedule=(0, 1, 2), jitter=0.0, connect_timeout=0.5, read_timeout=0.5)


# ---- A loopback EHR endpoint ------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class CallbackReceiver:
    """An EHR's webhook endpoint on loopback: records every request, answers as scripted."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._answers: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else each answer waits ~40 ms on a delayed ACK

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to `path` like this; 200 once the script runs out."""
        with self._lock:
            self._answers.setdefault(path, []).extend(answers)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        with self._lock:
            self.received.append(
                Received(handler.path, dict(handler.headers.items()), body, time.monotonic())
            )
            queue = self._answers.get(handler.path) or []
            answer = queue.pop(0) if queue else Answer()
        time.sleep(answer.delay)
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the sender gave up waiting (a timeout test)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    yield server
    server.close()


def aware(moment: datetime | None) -> datetime:
    """A stored time in UTC (SQLite gives naive UTC, PostgreSQL the session's zone)."""
    assert moment is not None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def verified(received: Received, secret: str) -> dict[str, Any]:
    """The payload, if the signature verifies with the standardwebhooks package."""
    return Webhook(secret).verify(received.body, received.headers)  # type: ignore[no-any-return]


class Rig:
    """A migrated private database, a reporting app on it, and a callbacks:manage key.

    Callbacks may go to loopback (the session's settings allow it, as the worker's environment
    does), and the key may own many subscriptions: these tests make dozens."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        upgrade_database(database_url)
        self.database_url = database_url
        self.settings = settings.with_overrides(
            database_url=database_url, callback_max_subscriptions=1000
        )
        self.destinations = DestinationPolicy.from_settings(self.settings)
        self.sessions = make_session_factory(make_engine(database_url))
        with transaction(self.sessions) as session:
            _, key = create_api_key(session, "ehr", ["callbacks:manage"])
        self.auth = {"Authorization": f"Bearer {key}"}
        app = create_reporting(self.settings)
        app.config["TESTING"] = True
        self.client = app.test_client()

    def subscribe(self, url: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/subscriptions", json={"callback_url": url, **fields}, headers=self.auth
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def add_subscription(self, url: str) -> tuple[str, str]:
        """A subscription stored as it is, past the API's check (as if its host name resolved
        elsewhere when it was created); (id, secret)."""
        subscription = CallbackSubscription(
            tenant_id=DEFAULT_TENANT_ID,
            owner_key_id="test",
            callback_url=url,
            secret=new_secret(),
            event_types=[EVENT_SCORED],
            include_fhir=False,
        )
        with transaction(self.sessions) as session:
            session.add(subscription)
        return subscription.id, subscription.secret

    def score(self, body: dict[str, Any]) -> str:
        """Store a report and score it in this process with the real engine and `_store`."""
        with transaction(self.sessions) as session:
            assessment = Assessment(
                tenant_id=DEFAULT_TENANT_ID,
                report=body,
                patient_ref=body["patient"]["id"],
                source="api",
                status="queued",
            )
            session.add(assessment)
        outcome = score_assessment(self.sessions, _ruleset(), assessment.id)
        assert outcome.outcome == "scored"
        return assessment.id

    def deliveries(self, subscription_id: str) -> list[CallbackDelivery]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(CallbackDelivery)
                    .where(CallbackDelivery.subscription_id == subscription_id)
                    .order_by(CallbackDelivery.created_at)
                )
            )

    def delivery(self, delivery_id: str) -> CallbackDelivery:
        with self.sessions() as session:
            row = session.get(CallbackDelivery, delivery_id)
            assert row is not None
            return row

    def open_message(self, delivery_id: str) -> OutboxMessage | None:
        """The outbox row that will wake a worker for this delivery, if any."""
        with self.sessions() as session:
            for message in session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.task_name == CALLBACK_TASK, OutboxMessage.completed_at.is_(None)
                )
            ):
                if message.args == [delivery_id]:
                    return message
        return None

    def attempt(self, delivery_id: str, policy: RetryPolicy = FAST) -> str:
        """One attempt, the way the task makes it (woken by the open outbox row)."""
        message = self.open_message(delivery_id)
        return deliver(
            self.sessions,
            delivery_id,
            policy,
            message_id=message.id if message else None,
            destinations=self.destinations,
        )


@functools.cache
def _ruleset() -> Any:
    return load_ruleset()


@pytest.fixture(scope="module")
def rig(
    database_url: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    databases = private_database(database_url, tmp_path_factory.mktemp("cb"), "callbacks")
    yield Rig(next(databases), settings)
    next(databases, None)


# ---- Signing, payload, event types ------------------------------------------------------------


def test_a_scored_result_arrives_signed_thin_and_verifiable(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    subscription = rig.subscribe(receiver.url(), description="EHR test")
    secret = subscription["secret"]
    assert secret.startswith("whsec_")
    assessment_id = rig.score(report())
    [delivery] = rig.deliveries(subscription["id"])
    assert delivery.status == "pending" and rig.open_message(delivery.id) is not None

    assert rig.attempt(delivery.id) == "delivered"

    [request] = receiver.at("/hook")
    payload = verified(request, secret)
    assert request.headers["webhook-id"] == delivery.id  # receivers dedupe on it
    assert payload["type"] == EVENT_SCORED
    data = payload["data"]
    assert data["assessment_id"] == assessment_id
    assert data["triage"] in ("consultation", "consultation_24")
    assert "RF_WEAKNESS_WITH_TWITCHING" in data["red_flags"]
    assert data["links"]["risk_assessment"].endswith(f"/fhir/RiskAssessment/{assessment_id}")
    assert data["links"]["report"].endswith(f"/v1/reports/assessments/{assessment_id}")
    # Thin: ids, codes and links only; no patient identifier, no free text, no FHIR by default.
    raw = request.body.decode()
    assert "MRN-0042" not in raw and "Right hand" not in raw and "atorvastatin" not in raw
    assert "fhir" not in data
    with pytest.raises(WebhookVerificationError):
        verified(request, "whsec_" + "A" * 44)  # another secret does not verify

    done = rig.delivery(delivery.id)
    assert done.status == "delivered" and done.attempts == 1 and done.last_status_code == 200
    assert rig.open_message(delivery.id) is None  # the relay will not republish it

    log = rig.client.get(
        f"/v1/subscriptions/{subscription['id']}/deliveries", headers=rig.auth
    ).get_json()["items"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in log[0]["attempt_log"]] == [
        (1, 200, "delivered")
    ]
    assert log[0]["attempt_log"][0]["duration_ms"] >= 0


def test_emergency_subscribers_hear_only_of_emergencies(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    everything = rig.subscribe(receiver.url("/all"), event_types=[EVENT_SCORED, EVENT_EMERGENCY])
    emergencies = rig.subscribe(receiver.url("/urgent"), event_types=[EVENT_EMERGENCY])
    stroke = rig.score(report(STROKE))
    rig.score(report(DOMS))
    assert sorted(
        (d.assessment_id == stroke, d.event_type) for d in rig.deliveries(everything["id"])
    ) == [(False, EVENT_SCORED), (True, EVENT_EMERGENCY), (True, EVENT_SCORED)]
    [urgent] = rig.deliveries(emergencies["id"])
    assert (urgent.assessment_id, urgent.event_type) == (stroke, EVENT_EMERGENCY)
    assert rig.attempt(urgent.id) == "delivered"
    payload = verified(receiver.at("/urgent")[0], emergencies["secret"])
    assert payload["type"] == EVENT_EMERGENCY
    assert payload["data"]["triage"] == "emergency_ambulance"


def test_include_fhir_adds_a_valid_bundle(rig: Rig, receiver: CallbackReceiver) -> None:
    subscription = rig.subscribe(receiver.url(), include_fhir=True)
    assessment_id = rig.score(report(STROKE))
    [delivery] = rig.deliveries(subscription["id"])
    rig.attempt(delivery.id)
    payload = verified(receiver.at("/hook")[0], subscription["secret"])
    bundle = Bundle.model_validate(payload["data"]["fhir"])
    risk = bundle.entry[0].resource
    assert risk.get_resource_type() == "RiskAssessment" and risk.id == assessment_id
    assert risk.basis[0].reference == f"QuestionnaireResponse/{assessment_id}"
    issues = [e.resource for e in bundle.entry[1:]]
    assert issues and {i.get_resource_type() for i in issues} == {"DetectedIssue"}
    assert "RF_STROKE_FAST" in {i.code.coding[0].code for i in issues}


def test_a_caller_supplied_secret_is_used_and_never_echoed(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    subscription = rig.subscribe(receiver.url(), secret=own)
    assert "secret" not in subscription
    shown = rig.client.get(f"/v1/subscriptions/{subscription['id']}", headers=rig.auth)
    assert "secret" not in shown.get_json()
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    rig.attempt(delivery.id)
    assert verified(receiver.at("/hook")[0], own)["data"]["triage"] == "self_care"


# ---- Retries, dead letters, 410 ---------------------------------------------------------------


def test_a_500_is_retried_from_the_database_with_the_same_webhook_id(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    subscription = rig.subscribe(receiver.url())
    receiver.script("/hook", Answer(500))
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])

    before = utcnow()
    assert rig.attempt(delivery.id) == "retry"
    waiting = rig.delivery(delivery.id)
    assert waiting.status == "failed_retrying" and waiting.last_status_code == 500
    due = aware(waiting.next_attempt_at)
    assert timedelta(seconds=0.9) < due - before < timedelta(seconds=2)  # schedule[1] = 1 s
    assert rig.open_message(delivery.id) is None  # completed: no republishing meanwhile

    with transaction(rig.sessions) as session:
        assert queue_due_deliveries(session, utcnow(), 100) == 0  # not due yet
    with transaction(rig.sessions) as session:
        assert queue_due_deliveries(session, due + timedelta(seconds=0.01), 100) == 1
    assert rig.delivery(delivery.id).status == "pending"
    assert rig.attempt(delivery.id) == "delivered"

    first, second = receiver.at("/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert verified(second, subscription["secret"])["data"]["assessment_id"]
    log = rig.client.get(
        f"/v1/subscriptions/{subscription['id']}/deliveries", headers=rig.auth
    ).get_json()["items"][0]["attempt_log"]
    assert [(a["status_code"], a["outcome"]) for a in log] == [(500, "retry"), (200, "delivered")]


def test_timeouts_and_refused_connections_are_retried(rig: Rig, receiver: CallbackReceiver) -> None:
    slow = rig.subscribe(receiver.url("/slow"))
    closed_port = free_port()
    refused = rig.subscribe(f"http://127.0.0.1:{closed_port}/hook")
    receiver.script("/slow", Answer(200, delay=1.5))  # read timeout is 0.5 s
    rig.score(report(DOMS))
    [slow_delivery] = rig.deliveries(slow["id"])
    [refused_delivery] = rig.deliveries(refused["id"])

    started = time.monotonic()
    assert rig.attempt(slow_delivery.id) == "retry"
    assert time.monotonic() - started < 1.4  # we did not wait for the slow answer
    assert rig.delivery(slow_delivery.id).last_error == "ReadTimeout"

    assert rig.attempt(refused_delivery.id) == "retry"
    assert rig.delivery(refused_delivery.id).last_error == "ConnectionError"


def test_retry_after_is_honoured(rig: Rig, receiver: CallbackReceiver) -> None:
    subscription = rig.subscribe(receiver.url())
    receiver.script("/hook", Answer(503, {"Retry-After": "120"}))
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    before = utcnow()
    assert rig.attempt(delivery.id) == "retry"
    due = aware(rig.delivery(delivery.id).next_attempt_at)
    assert due - before >= timedelta(seconds=119)  # not the scheduled 1 s


def test_after_the_last_attempt_it_is_dead_lettered_and_can_be_replayed(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    two_tries = RetryPolicy(schedule=(0, 0), jitter=0.0, connect_timeout=0.5, read_timeout=0.5)
    subscription = rig.subscribe(receiver.url())
    receiver.script("/hook", Answer(500), Answer(502))
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    deliveries_url = f"/v1/subscriptions/{subscription['id']}/deliveries"
    replay_url = f"{deliveries_url}/{delivery.id}/replay"

    assert rig.client.post(replay_url, headers=rig.auth).status_code == 409  # not dead yet
    assert rig.attempt(delivery.id, two_tries) == "retry"
    with transaction(rig.sessions) as session:
        queue_due_deliveries(session, utcnow() + timedelta(seconds=1), 100)
    assert rig.attempt(delivery.id, two_tries) == "dead"
    dead = rig.client.get(f"{deliveries_url}?status=dead", headers=rig.auth).get_json()["items"]
    assert [d["id"] for d in dead] == [delivery.id]
    assert rig.open_message(delivery.id) is None

    replayed = rig.client.post(replay_url, headers=rig.auth)
    assert replayed.status_code == 202
    assert replayed.get_json()["status"] == "pending"
    assert rig.attempt(delivery.id, two_tries) == "delivered"
    assert len(receiver.at("/hook")) == 3
    assert len({r.headers["webhook-id"] for r in receiver.at("/hook")}) == 1


def test_a_client_error_is_dead_lettered_at_once(rig: Rig, receiver: CallbackReceiver) -> None:
    subscription = rig.subscribe(receiver.url())
    receiver.script("/hook", Answer(400))
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    assert rig.attempt(delivery.id) == "dead"
    assert rig.delivery(delivery.id).last_status_code == 400


def test_410_gone_disables_the_subscription(rig: Rig, receiver: CallbackReceiver) -> None:
    subscription = rig.subscribe(receiver.url())
    receiver.script("/hook", Answer(410))
    rig.score(report(DOMS))
    rig.score(report(DOMS))
    first, second = rig.deliveries(subscription["id"])
    assert rig.attempt(first.id) == "disabled"

    shown = rig.client.get(f"/v1/subscriptions/{subscription['id']}", headers=rig.auth).get_json()
    assert shown["status"] == "disabled" and "410" in shown["disabled_reason"]
    assert rig.delivery(second.id).status == "disabled"  # queued ones are not sent either
    assert rig.attempt(second.id) == "skipped" and rig.open_message(second.id) is None
    rig.score(report(DOMS))
    assert len(rig.deliveries(subscription["id"])) == 2  # no new deliveries
    assert len(receiver.at("/hook")) == 1


def test_disabling_through_the_api_stops_queued_deliveries(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    subscription = rig.subscribe(receiver.url())
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    disabled = rig.client.post(f"/v1/subscriptions/{subscription['id']}/disable", headers=rig.auth)
    assert disabled.status_code == 200 and disabled.get_json()["status"] == "disabled"
    assert rig.attempt(delivery.id) == "skipped"
    assert rig.delivery(delivery.id).status == "disabled"
    assert receiver.at("/hook") == []


def test_a_dead_workers_lease_runs_out_and_another_takes_over(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    subscription = rig.subscribe(receiver.url())
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription["id"])
    held = update(CallbackDelivery).where(CallbackDelivery.id == delivery.id)
    with transaction(rig.sessions) as session:  # a worker claimed it, then was killed
        session.execute(
            held.values(
                status="delivering", attempts=1, next_attempt_at=utcnow() + timedelta(seconds=60)
            )
        )
    assert rig.attempt(delivery.id) == "skipped"  # its lease still runs
    assert rig.open_message(delivery.id) is not None  # so the relay will wake us again
    with transaction(rig.sessions) as session:
        session.execute(held.values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert rig.attempt(delivery.id) == "delivered"
    assert rig.delivery(delivery.id).attempts == 2


# ---- Where callbacks may go, and how many at once ----------------------------------------------


def test_a_host_name_resolving_to_loopback_is_refused_without_the_allowlist(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    port = receiver.server.server_address[1]
    subscription_id, _ = rig.add_subscription(f"http://localhost:{port}/hook")
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription_id)

    production = DestinationPolicy()  # no allowlist
    outcome = deliver(rig.sessions, delivery.id, FAST, destinations=production)

    assert outcome == "retry"  # DNS may change: it is tried again on the schedule
    assert receiver.received == []  # nothing was sent
    with rig.sessions() as session:
        [attempt] = session.scalars(
            select(CallbackAttempt).where(CallbackAttempt.delivery_id == delivery.id)
        ).all()
    # A failed attempt with a generic reason: no address, no range, no timing.
    assert (attempt.status_code, attempt.error, attempt.duration_ms, attempt.outcome) == (
        None,
        "destination not allowed",
        0.0,
        "retry",
    )
    assert rig.delivery(delivery.id).last_error == "destination not allowed"


def test_the_connection_goes_to_the_checked_address_with_the_urls_host(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    looked_up: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        looked_up.append((host, port))
        return [IPv4Address("127.0.0.1")]

    destinations = DestinationPolicy.parse(LOOPBACK_CALLBACK_NETWORKS, resolver=resolve)
    port = receiver.server.server_address[1]
    # `.invalid` never resolves (RFC 6761): only the checked address can have been used.
    subscription_id, secret = rig.add_subscription(f"http://ehr.invalid:{port}/pinned")
    rig.score(report(DOMS))
    [delivery] = rig.deliveries(subscription_id)

    assert deliver(rig.sessions, delivery.id, FAST, destinations=destinations) == "delivered"

    [request] = receiver.at("/pinned")
    assert request.headers["Host"] == f"ehr.invalid:{port}"
    assert verified(request, secret)["data"]["triage"] == "self_care"
    assert looked_up == [("ehr.invalid", port)]  # resolved once, for the check and the connect


def test_a_subscription_has_at_most_max_in_flight_attempts_at_once(
    rig: Rig, receiver: CallbackReceiver
) -> None:
    one_at_a_time = RetryPolicy(
        schedule=(0, 1, 2), jitter=0.0, connect_timeout=0.5, read_timeout=2.0, max_in_flight=1
    )
    subscription = rig.subscribe(receiver.url("/one"))
    other = rig.subscribe(receiver.url("/other"))
    receiver.script("/one", Answer(200, delay=1.0))
    for _ in range(3):
        rig.score(report(DOMS))
    deliveries = rig.deliveries(subscription["id"])
    assert len(deliveries) == 3
    [other_delivery, *_] = rig.deliveries(other["id"])

    started = utcnow()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda d: rig.attempt(d.id, one_at_a_time), deliveries))
        # Another subscription is not held back by this one's cap.
        assert rig.attempt(other_delivery.id, one_at_a_time) == "delivered"

    assert sorted(outcomes) == ["deferred", "deferred", "delivered"]
    assert len(receiver.at("/one")) == 1
    held = [d.id for d, outcome in zip(deliveries, outcomes, strict=True) if outcome == "deferred"]
    for delivery_id in held:
        row = rig.delivery(delivery_id)
        # Deferred, not dropped and not failed: no attempt counted, due again in 1-2 s, and
        # the relay queues it again then (its wake-up message is done).
        assert (row.status, row.attempts, row.last_error) == ("failed_retrying", 0, None)
        assert timedelta(seconds=0.9) < aware(row.next_attempt_at) - started < timedelta(seconds=3)
        assert rig.open_message(delivery_id) is None
    with transaction(rig.sessions) as session:
        assert queue_due_deliveries(session, utcnow() + timedelta(seconds=3), 100) >= 2
    assert [rig.attempt(d, one_at_a_time) for d in held] == ["delivered", "delivered"]
    assert len(receiver.at("/one")) == 3
    with rig.sessions() as session:
        attempts = session.scalars(
            select(CallbackAttempt.attempt).where(CallbackAttempt.delivery_id.in_(held))
        ).all()
    assert attempts == [1, 1]  # the deferral was not an attempt


def test_callback_urls_at_internal_addresses_are_refused_with_422(rig: Rig) -> None:
    def refused(client: Any, url: str) -> str:
        response = client.post("/v1/subscriptions", json={"callback_url": url}, headers=rig.auth)
        assert response.status_code == 422, (url, response.get_json())
        assert response.mimetype == "application/problem+json"
        [error] = response.get_json()["errors"]
        assert error["field"] == "callback_url"
        return str(error["message"])

    before = len(rig.client.get("/v1/subscriptions", headers=rig.auth).get_json()["items"])
    assert "private" in refused(rig.client, "https://10.0.0.5/hook")
    assert "private" in refused(rig.client, "https://192.168.1.20:8443/hook")
    assert "private" in refused(rig.client, "https://[::ffff:172.16.0.9]/hook")
    assert "link-local" in refused(rig.client, "https://169.254.169.254/latest/meta-data/")
    assert "unique-local" in refused(rig.client, "https://[fd00::7]/hook")
    assert "https://" in refused(rig.client, "http://8.8.8.8/hook")  # public, but plain http
    # Without the tests' loopback allowlist (as in production), localhost is refused too.
    production = create_reporting(rig.settings.with_overrides(callback_allowed_networks=""))
    production.config["TESTING"] = True
    client = production.test_client()
    assert "loopback" in refused(client, "https://localhost/hook")
    assert "loopback" in refused(client, "http://127.0.0.1:8080/hook")
    after = len(rig.client.get("/v1/subscriptions", headers=rig.auth).get_json()["items"])
    assert after == before  # nothing stored


def test_a_tenant_owns_at_most_max_subscriptions(rig: Rig) -> None:
    capped = create_reporting(rig.settings.with_overrides(callback_max_subscriptions=2))
    capped.config["TESTING"] = True
    client = capped.test_client()
    suffix = uuid.uuid4().hex[:8]
    with transaction(rig.sessions) as session:
        tenant = repository.create_tenant(session, f"capped {suffix}")
        another = repository.create_tenant(session, f"another {suffix}")
        _, key = create_api_key(session, "capped ehr", ["callbacks:manage"], tenant.id)
        _, colleague = create_api_key(session, "capped lab", ["callbacks:manage"], tenant.id)
        _, other_key = create_api_key(session, "another ehr", ["callbacks:manage"], another.id)
    auth = {"Authorization": f"Bearer {key}"}
    colleague_auth = {"Authorization": f"Bearer {colleague}"}
    other_auth = {"Authorization": f"Bearer {other_key}"}

    def create(path: str, headers: dict[str, str] = auth) -> Any:
        url = f"https://8.8.8.8/{path}"  # a public address: checked, never contacted here
        return client.post("/v1/subscriptions", json={"callback_url": url}, headers=headers)

    created = [create("one").get_json(), create("two").get_json()]
    third = create("three")
    assert third.status_code == 409 and third.mimetype == "application/problem+json"
    assert "2 active subscriptions" in third.get_json()["detail"]
    # The count is the tenant's: another key of the same tenant gets no more ...
    assert create("colleague", colleague_auth).status_code == 409
    # ... and another tenant has its own count.
    theirs = create("theirs", other_auth)
    assert theirs.status_code == 201
    # Disabling one frees its slot (there is no delete).
    client.post(f"/v1/subscriptions/{created[0]['id']}/disable", headers=auth)
    fourth = create("four")
    assert fourth.status_code == 201
    for subscription, headers in (
        (created[1], auth),
        (fourth.get_json(), auth),
        (theirs.get_json(), other_auth),
    ):
        client.post(f"/v1/subscriptions/{subscription['id']}/disable", headers=headers)


# ---- The subscriptions API --------------------------------------------------------------------


def test_subscriptions_api_validates_and_keeps_keys_apart(rig: Rig) -> None:
    bad = rig.client.post(
        "/v1/subscriptions",
        json={
            "callback_url": "ftp://ehr.example/hook",
            "event_types": ["assessment.deleted"],
            "secret": "not-a-secret",
        },
        headers=rig.auth,
    )
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert {e["field"] for e in bad.get_json()["errors"]} >= {
        "callback_url",
        "event_types.0",
        "secret",
    }
    creds = rig.client.post(
        "/v1/subscriptions", json={"callback_url": "https://u:p@ehr.example/"}, headers=rig.auth
    )
    assert creds.status_code == 422

    mine = rig.subscribe("https://ehr.example/hook")
    with transaction(rig.sessions) as session:
        _, other = create_api_key(session, "other ehr", ["callbacks:manage"])
        _, reader = create_api_key(session, "reader", ["reports:read"])
    other_auth = {"Authorization": f"Bearer {other}"}
    assert rig.client.get(f"/v1/subscriptions/{mine['id']}", headers=other_auth).status_code == 404
    listed = rig.client.get("/v1/subscriptions", headers=other_auth).get_json()["items"]
    assert mine["id"] not in {s["id"] for s in listed}
    reader_auth = {"Authorization": f"Bearer {reader}"}
    assert rig.client.get("/v1/subscriptions", headers=reader_auth).status_code == 403
    assert rig.client.get("/v1/subscriptions").status_code == 401


# ---- Pure parts -------------------------------------------------------------------------------


def test_the_default_schedule_and_its_jitter() -> None:
    policy = RetryPolicy.from_settings(Settings())
    assert policy.schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert policy.delay_after(1, rand=lambda: 0.0) == pytest.approx(4.0)  # 5 s - 20 %
    assert policy.delay_after(1, rand=lambda: 1.0) == pytest.approx(6.0)  # 5 s + 20 %
    assert policy.delay_after(8) is None  # eight attempts, then the dead letter
    assert policy.delay_after(1, retry_after=600, rand=lambda: 0.5) == 600
    assert policy.delay_after(1, retry_after=10**9, rand=lambda: 0.5) == 24 * 3600
    with pytest.raises(ValueError):
        parse_schedule("5,-1")


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = utcnow()
    assert parse_retry_after("30", now) == 30
    in_a_minute = now + timedelta(seconds=60)
    http_date = in_a_minute.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(http_date, now) == pytest.approx(60, abs=1.5)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("²", now) is None  # a digit to str.isdigit, not to float()
    assert parse_retry_after("9" * 400, now) == 24 * 3600.0


# ---- Through real processes -------------------------------------------------------------------


@pytest.mark.usefixtures("pipeline")
def test_the_pipeline_delivers_a_signed_callback_for_a_submitted_report(
    intake: Any, reporting: Any, auth: Any, receiver: CallbackReceiver, sessions: Any
) -> None:
    created = reporting.post(
        "/v1/subscriptions",
        json={"callback_url": receiver.url(), "event_types": [EVENT_SCORED, EVENT_EMERGENCY]},
        headers=auth,
    )
    subscription = created.get_json()
    try:
        response = intake.post("/v1/assessments", json=report(STROKE), headers=auth)
        assessment_id = response.get_json()["id"]

        def both_events() -> list[dict[str, Any]]:
            payloads = [verified(r, subscription["secret"]) for r in receiver.at("/hook")]
            mine = [p for p in payloads if p["data"]["assessment_id"] == assessment_id]
            return mine if len(mine) == 2 else []

        payloads = wait_until(both_events, 20, "the scored and emergency callbacks")
        assert sorted(p["type"] for p in payloads) == [EVENT_EMERGENCY, EVENT_SCORED]
        assert {p["data"]["triage"] for p in payloads} == {"emergency_ambulance"}

        def statuses() -> set[str]:
            with sessions() as session:
                return set(
                    session.scalars(
                        select(CallbackDelivery.status).where(
                            CallbackDelivery.assessment_id == assessment_id
                        )
                    )
                )

        wait_until(lambda: statuses() == {"delivered"}, 10, "both deliveries to be recorded")
    finally:
        reporting.post(f"/v1/subscriptions/{subscription['id']}/disable", headers=auth)


@pytest.fixture(scope="module")
def callback_stack(
    database_url: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    """A private database and Redis, with a callbacks-only worker (threads) and a relay whose
    retry schedule is 0.3 s apart, the way docker-compose runs the callback-worker."""
    workdir = tmp_path_factory.mktemp("cbstack")
    databases = private_database(database_url, workdir, "cbstack")
    rig = Rig(next(databases), settings)
    redis_server = RedisServer(workdir / "redis").start()
    env = service_env(
        rig.database_url,
        redis_server.url,
        MYOTRIAGE_CALLBACK_RETRY_SCHEDULE="0,0.3,0.3",
        MYOTRIAGE_CALLBACK_RETRY_JITTER="0",
        MYOTRIAGE_CALLBACK_DISPATCH_SECONDS="0.1",
        MYOTRIAGE_CALLBACK_CONNECT_TIMEOUT="1",
        MYOTRIAGE_CALLBACK_READ_TIMEOUT="1.5",
    )
    worker = ServiceProcess(
        "callback-worker",
        callbacks_worker_command(
            4, f"callbacks-{os.getpid()}@%h", "--without-gossip", "--without-mingle"
        ),
        env,
        workdir / "logs",
    ).start()
    relay = relay_process(env, workdir / "logs").start()
    yield rig
    relay.stop()
    worker.stop()
    redis_server.stop()
    next(databases, None)


def test_the_callback_worker_retries_from_the_database_until_delivered(
    callback_stack: Rig, receiver: CallbackReceiver
) -> None:
    subscription = callback_stack.subscribe(receiver.url())
    receiver.script("/hook", Answer(500), Answer(503))
    callback_stack.score(report(DOMS))
    [delivery] = callback_stack.deliveries(subscription["id"])

    def delivered() -> bool:
        return callback_stack.delivery(delivery.id).status == "delivered"

    wait_until(delivered, 25, "the third attempt to succeed")
    with callback_stack.sessions() as session:
        attempts = session.scalars(
            select(CallbackAttempt)
            .where(CallbackAttempt.delivery_id == delivery.id)
            .order_by(CallbackAttempt.attempt)
        ).all()
        assert [(a.status_code, a.outcome) for a in attempts] == [
            (500, "retry"),
            (503, "retry"),
            (200, "delivered"),
        ]
        message = session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.task_name == CALLBACK_TASK, OutboxMessage.completed_at.is_(None)
            )
        ).all()
        assert message == []  # every wake-up was marked done: nothing for the relay to republish
    first, *_, last = receiver.at("/hook")
    assert last.at - first.at >= 0.55  # two scheduled 0.3 s waits


def test_a_slow_endpoint_does_not_hold_up_another_subscriber(
    callback_stack: Rig, receiver: CallbackReceiver
) -> None:
    slow = callback_stack.subscribe(receiver.url("/slow"))
    fast = callback_stack.subscribe(receiver.url("/fast"))
    receiver.script("/slow", *[Answer(200, delay=5)] * 3)
    callback_stack.score(report(DOMS))
    wait_until(lambda: receiver.at("/fast") and receiver.at("/slow"), 20, "both callbacks")
    [fast_request] = receiver.at("/fast")
    assert verified(fast_request, fast["secret"])["type"] == EVENT_SCORED
    # The fast endpoint was not queued behind the slow one (which holds its request 5 s).
    assert fast_request.at - receiver.at("/slow")[0].at < 3
    with transaction(callback_stack.sessions) as session:  # stop its retries for teardown
        session.execute(
            update(CallbackSubscription)
            .where(CallbackSubscription.id == slow["id"])
            .values(disabled_at=utcnow())
        )

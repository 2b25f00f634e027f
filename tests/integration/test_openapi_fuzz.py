"""Property-based fuzzing of both services' OpenAPI documents (schemathesis).

Every operation of intake's and reporting's `/openapi.json` gets requests generated from the
document itself, valid and invalid, sent in-process (WSGI) with a real key carrying every scope.
Each answer must be no 5xx, a status the operation documents, in a content type it documents,
with a body that matches the documented schema; and a request the document calls valid must
not be refused (`positive_data_acceptance`: the document states the rules the API enforces).
Bounded and derandomized, so CI sees the same requests on every run.

Isolation: the apps run on a private database (other tests read whole listings) that is seeded
first with a scored assessment, a subscription with a delivery and an integration, so that
listings and reads by id answer with real rows too. Nothing leaves this process: callback URLs
are only checked, never called (no worker or relay runs on this database); the apps resolve no
host name; and a guard records any connection or name lookup beyond loopback, failing the test.

Not fuzzed here: CDS Hooks (`/cds-services`: EHR JWTs, bare 401s) and reporting's FHIR results
(`/fhir/RiskAssessment`, `/fhir/DetectedIssue`: OperationOutcome errors) are plain Flask
blueprints outside the OpenAPI documents; test_cds_hooks.py, test_fhir_results_api.py,
test_hostile_input.py and test_tenant_isolation.py cover them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from services.intake.app import create_app as create_intake
from services.reporting.app import create_app as create_reporting
from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared.auth import SCOPES, create_api_key
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.request_input import MAX_IDEMPOTENCY_KEY_LENGTH
from tests.factories import STROKE, report
from tests.support import private_database

# Per operation; with both services' operations and every check, well under a minute a backend.
MAX_EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Whether a QuestionnaireResponse's answers fit is the Questionnaire's to say (item by item,
# against the v1 contract), not the OpenAPI's: a response valid by the OpenAPI's outline may
# still get its 422 OperationOutcome. Every other check still applies to it.
OUTLINE_ONLY = {"POST /fhir/QuestionnaireResponse"}
IDEMPOTENCY_KEY = "Idempotency-Key"


class OutboundGuard:
    """Records every connection and name lookup this process makes beyond loopback."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def check(self, host: Any) -> None:
        if host in (None, "localhost") or _is_loopback(host):
            return
        self.attempts.append(str(host))
        raise OSError(f"the OpenAPI fuzz test reaches no host beyond loopback ({host!r})")


def _is_loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def outbound() -> Iterator[OutboundGuard]:
    guard = OutboundGuard()
    resolve = socket.getaddrinfo
    connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        guard.check(host)
        return resolve(host, *args, **kwargs)

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            guard.check(address[0])
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", guarded_connect)
        yield guard
    assert guard.attempts == [], f"the fuzzed apps tried to reach {guard.attempts}"


@pytest.fixture(scope="module")
def fuzz_settings(
    database_url: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    databases = private_database(database_url, tmp_path_factory.mktemp("fuzz"), "fuzz")
    url = next(databases)
    upgrade_database(url)
    yield settings.with_overrides(
        database_url=url,
        # One key and one address send every request: limits that never get in the way.
        rate_limit_per_key="100000/minute",
        rate_limit_per_address="100000/minute",
        rate_limit_failed_auth="100000/minute",
    )
    next(databases, None)


@pytest.fixture(scope="module")
def fuzz_key(fuzz_settings: Settings) -> str:
    sessions = make_session_factory(make_engine(fuzz_settings.database_url))
    with transaction(sessions) as session:
        _, raw = create_api_key(session, "openapi-fuzz", list(SCOPES))
    return raw


def _unresolvable(host: str, port: int) -> list[Any]:
    raise OSError("the OpenAPI fuzz test resolves no host name")


@pytest.fixture(scope="module")
def fuzz_apps(fuzz_settings: Settings, fuzz_key: str, outbound: OutboundGuard) -> dict[str, Any]:
    """Both apps on the private database, seeded with a row of every kind a read can show."""
    intake = create_intake(fuzz_settings)
    reporting = create_reporting(fuzz_settings)
    # A callback URL's host name is never looked up: every one is "not resolvable yet", which
    # the API accepts for https (deliveries check again; none run here).
    policy = reporting.extensions["myotriage.callback_destinations"]
    reporting.extensions["myotriage.callback_destinations"] = dataclasses.replace(
        policy, resolver=_unresolvable
    )
    for app in (intake, reporting):
        app.config["TESTING"] = True
    _seed(intake, reporting, fuzz_settings, {"Authorization": f"Bearer {fuzz_key}"})
    return {"intake": intake, "reporting": reporting}


def _seed(intake: Any, reporting: Any, fuzz_settings: Settings, auth: dict[str, str]) -> None:
    client = reporting.test_client()
    # Loopback over http is allowlisted in the test settings; no worker ever sends to it.
    subscribed = client.post(
        "/v1/subscriptions",
        json={"callback_url": "http://127.0.0.1:9/hook", "event_types": ["assessment.scored"]},
        headers=auth,
    )
    assert subscribed.status_code == 201, subscribed.get_json()
    integration = intake.test_client().post(
        "/v1/admin/integrations", json={"name": "fuzz-seed-ehr"}, headers=auth
    )
    assert integration.status_code == 201, integration.get_json()
    sessions = make_session_factory(make_engine(fuzz_settings.database_url))
    ruleset = load_ruleset()
    for body in (report(), report(STROKE)):
        accepted = intake.test_client().post("/v1/assessments", json=body, headers=auth)
        assert accepted.status_code == 202, accepted.get_json()
        outcome = score_assessment(sessions, ruleset, accepted.get_json()["id"])
        assert outcome.outcome == "scored"


def _schema(app: Any) -> Any:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # No U+0000 (refused everywhere with a 400: PostgreSQL cannot store it, the 400 is
    # documented) and only text that UTF-8 can carry, as every JSON body and header is.
    schema.config.generation.update(allow_x00=False, codec="utf-8")
    return schema


@pytest.fixture(scope="module")
def intake_schema(fuzz_apps: dict[str, Any]) -> Any:
    return _schema(fuzz_apps["intake"])


@pytest.fixture(scope="module")
def reporting_schema(fuzz_apps: dict[str, Any]) -> Any:
    return _schema(fuzz_apps["reporting"])


@pytest.fixture(autouse=True)
def _subtest_node_ids(request: pytest.FixtureRequest) -> None:
    # schemathesis's fixture-loaded schemas rename the test node per operation through the
    # `_nodeid` attribute, which pytest 9.2 nodes no longer have: give it one to write to.
    request.node._nodeid = request.node.nodeid


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def _call_and_validate(case: Any, fuzz_key: str) -> None:
    key = (case.headers or {}).get(IDEMPOTENCY_KEY)
    if (
        isinstance(key, str)
        and 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        and key.isascii()
        and key.isprintable()
    ):
        # A key reused with another body is refused (422), by design: each well-formed key is
        # made unique, so that refusal is never taken for a rule the OpenAPI leaves unsaid.
        case.headers[IDEMPOTENCY_KEY] = f"fuzz-{uuid.uuid4()}"
    checks = CHECKS
    if case.operation.label in OUTLINE_ONLY:
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, checks=checks)


intake_api = schemathesis.pytest.from_fixture("intake_schema")
reporting_api = schemathesis.pytest.from_fixture("reporting_schema")


@intake_api.parametrize()
@FUZZ
def test_intake_answers_as_its_openapi_says(case: Any, fuzz_key: str) -> None:
    _call_and_validate(case, fuzz_key)


@reporting_api.parametrize()
@FUZZ
def test_reporting_answers_as_its_openapi_says(case: Any, fuzz_key: str) -> None:
    _call_and_validate(case, fuzz_key)


@pytest.mark.parametrize("service", ["intake", "reporting"])
def test_reads_of_real_rows_match_their_schemas(
    service: str,
    fuzz_apps: dict[str, Any],
    fuzz_key: str,
    intake_schema: Any,
    reporting_schema: Any,
) -> None:
    """Generated ids are never found; every GET by id is sent once more with a seeded row's."""
    auth = {"Authorization": f"Bearer {fuzz_key}"}
    ids = _seeded_ids(fuzz_apps, auth)
    schema = intake_schema if service == "intake" else reporting_schema
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [p.name for p in operation.path_parameters]
        if operation.method.upper() != "GET" or not names or not set(names) <= set(ids):
            continue
        case = operation.Case(path_parameters={name: ids[name] for name in names})
        response = case.call_and_validate(headers=auth, checks=CHECKS)
        assert response.status_code == 200, (operation.label, response.text[:300])
        sent += 1
    assert sent >= 3


def _seeded_ids(fuzz_apps: dict[str, Any], auth: dict[str, str]) -> dict[str, str]:
    reporting = fuzz_apps["reporting"].test_client()
    intake = fuzz_apps["intake"].test_client()
    [subscription] = [
        s
        for s in reporting.get("/v1/subscriptions", headers=auth).get_json()["items"]
        if s["callback_url"] == "http://127.0.0.1:9/hook"
    ]
    deliveries = reporting.get(subscription["links"]["deliveries"], headers=auth).get_json()
    [integration] = [
        i
        for i in intake.get("/v1/admin/integrations", headers=auth).get_json()["items"]
        if i["name"] == "fuzz-seed-ehr"
    ]
    queue = reporting.get("/v1/reports/queue", headers=auth).get_json()["items"]
    return {
        "assessment_id": queue[0]["assessment_id"],
        "subscription_id": subscription["id"],
        "delivery_id": deliveries["items"][0]["id"],
        "integration_id": integration["id"],
        "secret_id": integration["secrets"][0]["id"],
    }

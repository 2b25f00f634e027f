"""One organisation never sees another's patients: every route of both services, walked from
their URL maps.

Tenant A owns an assessment (scored), a FHIR QuestionnaireResponse, an integration with a
secret, a subscription with a delivery, and a patient whose MRN tenant B also uses for a
patient of its own. B's credentials (API key, webhook secret, CDS Hooks JWT) are then used on
A's ids: every read or change is a 404 (never 403: existence is not confirmed), every list is
empty of A's rows, and everything B creates lands in B's tenant. A route that no case below
covers fails `test_every_route_is_covered`: adding a route means saying how it keeps tenants
apart.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.intake.app import create_app as create_intake
from services.reporting.app import create_app as create_reporting
from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared import repository
from shared.auth import SCOPES, create_api_key
from shared.config import Settings
from shared.db import transaction
from shared.models import Assessment, CallbackDelivery, CallbackSubscription, CdsFeedback
from tests.factories import report

REPORTING = "http://reporting.test"  # the test settings' reporting_base_url

# Routes that hold no tenant's data: health, metrics, API documents, the public contract, the
# FHIR Questionnaire (the questions, not answers), CDS discovery and FHIR's catch-all 404.
PUBLIC = {
    ("intake", "static"),
    ("intake", "api-docs.openapi_json"),
    ("intake", "api-docs.openapi_swagger_ui"),
    ("intake", "swagger_ui_assets.static"),
    ("intake", "health.livez"),
    ("intake", "health.readyz"),
    ("intake", "health.metrics"),
    ("intake", "schemas.symptom_report_schema"),
    ("intake", "fhir.read_questionnaire"),
    ("intake", "fhir.read_other_questionnaire"),
    ("intake", "fhir.search_questionnaires"),
    ("reporting", "static"),
    ("reporting", "api-docs.openapi_json"),
    ("reporting", "api-docs.openapi_swagger_ui"),
    ("reporting", "swagger_ui_assets.static"),
    ("reporting", "health.livez"),
    ("reporting", "health.readyz"),
    ("reporting", "health.metrics"),
    ("reporting", "cds_hooks.discovery"),
    ("reporting", "fhir.unsupported"),
}


class CdsIssuer:
    """An EHR that signs CDS Hooks JWTs, configured for one tenant."""

    def __init__(self, name: str) -> None:
        self.issuer = f"https://{name}.ehr.test"
        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": f"{name}-1", "use": "sig", "alg": "ES384"}

    def auth(self, path: str) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": f"{REPORTING}{path}",
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.jwk["kid"]})
        return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    """One organisation's credentials and the ids of what it owns."""

    id: str
    name: str
    key: str
    cds: CdsIssuer
    webhook_secret: str = ""
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    intake: Any
    reporting: Any
    sessions: Any
    a: Tenant
    b: Tenant
    shared_mrn: str
    a_only_mrn: str


def _tenant(sessions: Any, label: str) -> Tenant:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        tenant = repository.create_tenant(session, name)
        _, key = create_api_key(session, f"{label} admin", list(SCOPES), tenant.id)
        return Tenant(tenant.id, name, key, CdsIssuer(name))


def _submit(world_intake: Any, tenant: Tenant, mrn: str, sessions: Any) -> str:
    body = report()
    body["patient"] = {**body["patient"], "id": mrn}
    response = world_intake.post("/v1/assessments", json=body, headers=tenant.auth)
    assert response.status_code == 202, response.get_json()
    assessment_id: str = response.get_json()["id"]
    # Scored here, by the real engine and scoring code (the worker would do the same).
    outcome = score_assessment(sessions, load_ruleset(), assessment_id)
    assert outcome.outcome in ("scored", "already_scored")
    return assessment_id


@pytest.fixture(scope="module")
def world(settings: Settings, sessions: Any) -> Iterator[World]:
    a = _tenant(sessions, "alpha")
    b = _tenant(sessions, "beta")
    issuers = [
        {"iss": t.cds.issuer, "jwks": {"keys": [t.cds.jwk]}, "tenant": t.name} for t in (a, b)
    ]
    app_settings = settings.with_overrides(cds_issuers=json.dumps(issuers))
    intake_app = create_intake(app_settings)
    reporting_app = create_reporting(app_settings)
    intake_app.config["TESTING"] = reporting_app.config["TESTING"] = True
    intake, reporting = intake_app.test_client(), reporting_app.test_client()
    shared_mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    a_only_mrn = f"MRN-{uuid.uuid4().hex[:8]}"

    # A's subscription first, so scoring A's assessment makes a delivery for it.
    for tenant in (a, b):
        created = reporting.post(
            "/v1/subscriptions",
            json={"callback_url": f"https://8.8.8.8/{tenant.name}"},
            headers=tenant.auth,
        )
        assert created.status_code == 201, created.get_json()
        tenant.ids["subscription"] = created.get_json()["id"]
    a.ids["assessment"] = _submit(intake, a, shared_mrn, sessions)
    a.ids["a_only"] = _submit(intake, a, a_only_mrn, sessions)
    b.ids["assessment"] = _submit(intake, b, shared_mrn, sessions)
    with sessions() as session:
        a.ids["delivery"] = session.scalars(
            select(CallbackDelivery.id).where(
                CallbackDelivery.subscription_id == a.ids["subscription"]
            )
        ).first()
    assert a.ids["delivery"]
    for tenant in (a, b):
        created = intake.post(
            "/v1/admin/integrations", json={"name": "the-ehr"}, headers=tenant.auth
        )
        assert created.status_code == 201, created.get_json()  # the same name in both tenants
        body = created.get_json()
        tenant.ids["integration"] = body["id"]
        tenant.ids["secret"] = body["secrets"][0]["id"]
        tenant.webhook_secret = body["secret"]
    qr = _questionnaire_response(a_only_mrn)
    posted = intake.post("/fhir/QuestionnaireResponse", json=qr, headers=a.auth)
    assert posted.status_code == 202, posted.get_json()
    a.ids["fhir_assessment"] = posted.get_json()["id"]
    yield World(intake, reporting, sessions, a, b, shared_mrn, a_only_mrn)


def _questionnaire_response(mrn: str) -> dict[str, Any]:
    from services.intake.fhir_questionnaire import questionnaire_response_from_report

    body = report()
    body["patient"] = {**body["patient"], "id": mrn}
    resource = questionnaire_response_from_report(body, response_id="qr-1", authored=None)
    resource["subject"] = {"identifier": {"system": "urn:alpha:mrn", "value": mrn}}
    return resource


def _tenant_of(world: World, assessment_id: str) -> str:
    with world.sessions() as session:
        assessment = session.get(Assessment, assessment_id)
        assert assessment is not None
        return assessment.tenant_id


def _signed(secret: str, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(body)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, text),
        "Content-Type": "application/json",
    }
    return text.encode(), headers


# ---- The cases, one per route ----------------------------------------------------------------
# Each runs B's credentials against A's data and asserts what B gets; each also checks that A
# itself gets the data, so a 404 means "not yours", not "wrong path".


def _not_found(response: Any) -> None:
    assert response.status_code == 404, (response.status_code, response.get_data(as_text=True))


def case_assessment(w: World) -> None:
    path = f"/v1/assessments/{w.a.ids['assessment']}"
    assert w.intake.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.intake.get(path, headers=w.b.auth))


def case_submit_assessment(w: World) -> None:
    body = report()
    body["patient"] = {**body["patient"], "id": w.shared_mrn}
    created = w.intake.post("/v1/assessments", json=body, headers=w.b.auth)
    assert created.status_code == 202
    assert _tenant_of(w, created.get_json()["id"]) == w.b.id


def case_fhir_submit(w: World) -> None:
    created = w.intake.post(
        "/fhir/QuestionnaireResponse", json=_questionnaire_response(w.shared_mrn), headers=w.b.auth
    )
    assert created.status_code == 202
    assert _tenant_of(w, created.get_json()["id"]) == w.b.id


def case_fhir_read_answers(w: World) -> None:
    path = f"/fhir/QuestionnaireResponse/{w.a.ids['fhir_assessment']}"
    assert w.intake.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.intake.get(path, headers=w.b.auth))


def case_integrations(w: World) -> None:
    listed = w.intake.get("/v1/admin/integrations", headers=w.b.auth).get_json()["items"]
    assert [i["id"] for i in listed] == [w.b.ids["integration"]]
    created = w.intake.post("/v1/admin/integrations", json={"name": "b-2"}, headers=w.b.auth)
    assert created.status_code == 201 and created.get_json()["tenant_id"] == w.b.id


def case_integration(w: World) -> None:
    path = f"/v1/admin/integrations/{w.a.ids['integration']}"
    assert w.intake.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.intake.get(path, headers=w.b.auth))


def case_disable_integration(w: World) -> None:
    path = f"/v1/admin/integrations/{w.a.ids['integration']}"
    _not_found(w.intake.post(f"{path}/disable", headers=w.b.auth))
    assert w.intake.get(path, headers=w.a.auth).get_json()["disabled_at"] is None


def case_add_secret(w: World) -> None:
    path = f"/v1/admin/integrations/{w.a.ids['integration']}/secrets"
    _not_found(w.intake.post(path, json={}, headers=w.b.auth))


def case_revoke_secret(w: World) -> None:
    path = f"/v1/admin/integrations/{w.a.ids['integration']}/secrets/{w.a.ids['secret']}"
    _not_found(w.intake.delete(path, headers=w.b.auth))
    secrets = w.intake.get(
        f"/v1/admin/integrations/{w.a.ids['integration']}", headers=w.a.auth
    ).get_json()["secrets"]
    assert secrets[0]["active"] is True


def _webhook_cases(
    w: World, path_for: Callable[[str], str], header_for: Callable[[str], Any]
) -> None:
    body = report()
    # B's secret naming A's integration: the same 401 an unknown integration gets.
    raw, headers = _signed(w.b.webhook_secret, body)
    response = w.intake.post(
        path_for(w.a.ids["integration"]),
        data=raw,
        headers={**headers, **header_for(w.a.ids["integration"])},
    )
    assert response.status_code == 401
    # Both tenants call their integration "the-ehr": the signature decides whose it is.
    for tenant in (w.a, w.b):
        raw, headers = _signed(tenant.webhook_secret, body)
        accepted = w.intake.post(
            path_for("the-ehr"), data=raw, headers={**headers, **header_for("the-ehr")}
        )
        assert accepted.status_code == 202, accepted.get_json()
        assert _tenant_of(w, accepted.get_json()["id"]) == tenant.id


def case_webhook_by_path(w: World) -> None:
    _webhook_cases(w, lambda ref: f"/v1/webhooks/ehr/{ref}", lambda ref: {})


def case_webhook_by_header(w: World) -> None:
    _webhook_cases(w, lambda ref: "/v1/webhooks/ehr", lambda ref: {"webhook-integration": ref})


def case_cds_patient_view(w: World) -> None:
    path = "/cds-services/myotriage-patient-view"

    def cards(tenant: Tenant, mrn: str) -> list[dict[str, Any]]:
        call = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": mrn},
        }
        response = w.reporting.post(path, json=call, headers=tenant.cds.auth(path))
        assert response.status_code == 200
        return response.get_json()["cards"]  # type: ignore[no-any-return]

    assert len(cards(w.a, w.a_only_mrn)) == 1
    assert cards(w.b, w.a_only_mrn) == []
    # The same MRN in both tenants: each EHR sees its own patient's result only.
    for tenant in (w.a, w.b):
        [card] = cards(tenant, w.shared_mrn)
        shown = json.dumps(card)
        other = w.b if tenant is w.a else w.a
        # The card is about the tenant's own latest assessment of that MRN (other cases may
        # have added newer ones of its own), never the other tenant's.
        with w.sessions() as session:
            own = repository.scored_for_patient(session, tenant.id, w.shared_mrn, limit=50)
            theirs = repository.scored_for_patient(session, other.id, w.shared_mrn, limit=50)
        assert any(assessment.id in shown for assessment, _ in own)
        assert not any(assessment.id in shown for assessment, _ in theirs)


def case_cds_feedback(w: World) -> None:
    path = "/cds-services/myotriage-patient-view/feedback"
    card = str(uuid.uuid4())
    feedback = {
        "feedback": [
            {"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-12-01T10:00:00+00:00"}
        ]
    }
    assert w.reporting.post(path, json=feedback, headers=w.b.cds.auth(path)).status_code == 200
    with w.sessions() as session:
        stored = session.scalars(select(CdsFeedback).where(CdsFeedback.card_uuid == card)).one()
        assert stored.tenant_id == w.b.id


def case_fhir_risk_assessment(w: World) -> None:
    path = f"/fhir/RiskAssessment/{w.a.ids['assessment']}"
    assert w.reporting.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.reporting.get(path, headers=w.b.auth))


def _bundle_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [json.dumps(e["resource"]) for e in response.get_json().get("entry", [])]


def case_fhir_risk_assessment_search(w: World) -> None:
    path = "/fhir/RiskAssessment?subject=Patient/"
    assert _bundle_ids(w.reporting.get(path + w.a_only_mrn, headers=w.a.auth))
    assert _bundle_ids(w.reporting.get(path + w.a_only_mrn, headers=w.b.auth)) == []
    shared = _bundle_ids(w.reporting.get(path + w.shared_mrn, headers=w.b.auth))
    assert shared and all(w.a.ids["assessment"] not in r for r in shared)


def case_fhir_detected_issue(w: World) -> None:
    path = f"/fhir/DetectedIssue/{w.a.ids['assessment']}-0"
    assert w.reporting.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.reporting.get(path, headers=w.b.auth))


def case_fhir_detected_issue_search(w: World) -> None:
    by_assessment = f"/fhir/DetectedIssue?assessment={w.a.ids['assessment']}"
    assert _bundle_ids(w.reporting.get(by_assessment, headers=w.a.auth))
    assert _bundle_ids(w.reporting.get(by_assessment, headers=w.b.auth)) == []
    by_patient = f"/fhir/DetectedIssue?patient=Patient/{w.a_only_mrn}"
    assert _bundle_ids(w.reporting.get(by_patient, headers=w.b.auth)) == []


def case_report(w: World) -> None:
    path = f"/v1/reports/assessments/{w.a.ids['assessment']}"
    summary = w.reporting.get(path, headers=w.a.auth)
    assert summary.status_code == 200
    # The patient's history is the tenant's own: B's patient with the same MRN is not in it.
    history = json.dumps(summary.get_json())
    assert w.b.ids["assessment"] not in history
    _not_found(w.reporting.get(path, headers=w.b.auth))


def case_queue(w: World) -> None:
    items = w.reporting.get("/v1/reports/queue?limit=500", headers=w.b.auth).get_json()["items"]
    ids = json.dumps(items)
    assert w.b.ids["assessment"] in ids
    assert w.a.ids["assessment"] not in ids and w.a.ids["a_only"] not in ids


def case_subscriptions(w: World) -> None:
    listed = w.reporting.get("/v1/subscriptions", headers=w.b.auth).get_json()["items"]
    assert [s["id"] for s in listed] == [w.b.ids["subscription"]]


def case_subscription(w: World) -> None:
    path = f"/v1/subscriptions/{w.a.ids['subscription']}"
    assert w.reporting.get(path, headers=w.a.auth).status_code == 200
    _not_found(w.reporting.get(path, headers=w.b.auth))


def case_deliveries(w: World) -> None:
    path = f"/v1/subscriptions/{w.a.ids['subscription']}/deliveries"
    assert w.reporting.get(path, headers=w.a.auth).get_json()["items"]
    _not_found(w.reporting.get(path, headers=w.b.auth))
    # B's own subscription got no delivery for A's results.
    own = f"/v1/subscriptions/{w.b.ids['subscription']}/deliveries"
    delivered_for = json.dumps(w.reporting.get(own, headers=w.b.auth).get_json())
    assert w.a.ids["assessment"] not in delivered_for


def case_replay(w: World) -> None:
    path = f"/v1/subscriptions/{w.a.ids['subscription']}/deliveries/{w.a.ids['delivery']}/replay"
    _not_found(w.reporting.post(path, headers=w.b.auth))


def case_disable_subscription(w: World) -> None:
    path = f"/v1/subscriptions/{w.a.ids['subscription']}"
    _not_found(w.reporting.post(f"{path}/disable", headers=w.b.auth))
    assert w.reporting.get(path, headers=w.a.auth).get_json()["status"] == "active"


CASES: dict[tuple[str, str], Callable[[World], None]] = {
    ("intake", "assessments.Assessment"): case_assessment,
    ("intake", "assessments.Assessments"): case_submit_assessment,
    ("intake", "fhir.create_questionnaire_response"): case_fhir_submit,
    ("intake", "fhir.read_questionnaire_response"): case_fhir_read_answers,
    ("intake", "admin_integrations.Integrations"): case_integrations,
    ("intake", "admin_integrations.Integration"): case_integration,
    ("intake", "admin_integrations.DisableIntegration"): case_disable_integration,
    ("intake", "admin_integrations.Secrets"): case_add_secret,
    ("intake", "admin_integrations.Secret"): case_revoke_secret,
    ("intake", "webhooks.receive_for_integration"): case_webhook_by_path,
    ("intake", "webhooks.receive"): case_webhook_by_header,
    ("reporting", "cds_hooks.call_service"): case_cds_patient_view,
    ("reporting", "cds_hooks.feedback"): case_cds_feedback,
    ("reporting", "fhir.read_risk_assessment"): case_fhir_risk_assessment,
    ("reporting", "fhir.search_risk_assessments"): case_fhir_risk_assessment_search,
    ("reporting", "fhir.read_detected_issue"): case_fhir_detected_issue,
    ("reporting", "fhir.search_detected_issues"): case_fhir_detected_issue_search,
    ("reporting", "reports.AssessmentReport"): case_report,
    ("reporting", "reports.TriageQueue"): case_queue,
    ("reporting", "subscriptions.Subscriptions"): case_subscriptions,
    ("reporting", "subscriptions.Subscription"): case_subscription,
    ("reporting", "subscriptions.Deliveries"): case_deliveries,
    ("reporting", "subscriptions.DeliveryReplay"): case_replay,
    ("reporting", "subscriptions.SubscriptionDisable"): case_disable_subscription,
}


def _routes(world: World) -> set[tuple[str, str]]:
    found = set()
    for service, client in (("intake", world.intake), ("reporting", world.reporting)):
        for rule in client.application.url_map.iter_rules():
            found.add((service, rule.endpoint))
    return found


def test_every_route_is_covered(world: World) -> None:
    routes = _routes(world)
    missing = sorted(routes - PUBLIC - set(CASES))
    assert missing == [], (
        "routes with no tenant-isolation case (add one to CASES, or to PUBLIC if it holds no "
        f"tenant's data): {missing}"
    )
    assert not (set(CASES) | PUBLIC) - routes, "cases for routes that no longer exist"


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]}:{r[1]}")
def test_a_second_tenant_reaches_nothing_of_the_first(world: World, route: tuple[str, str]) -> None:
    CASES[route](world)


def test_results_are_delivered_only_to_the_owning_tenants_subscriptions(world: World) -> None:
    with world.sessions() as session:
        for tenant, other in ((world.a, world.b), (world.b, world.a)):
            delivered = set(
                session.scalars(
                    select(CallbackDelivery.assessment_id).where(
                        CallbackDelivery.subscription_id == tenant.ids["subscription"]
                    )
                )
            )
            assert tenant.ids["assessment"] in delivered
            assert other.ids["assessment"] not in delivered
        subscription = session.get(CallbackSubscription, world.a.ids["subscription"])
        assert subscription is not None and subscription.tenant_id == world.a.id


def test_reads_are_in_the_readers_own_audit_log(world: World) -> None:
    world.reporting.get(
        f"/v1/reports/assessments/{world.a.ids['assessment']}", headers=world.a.auth
    )
    with world.sessions() as session:
        a_log = repository.audit_events(session, world.a.id, limit=500)
        b_log = repository.audit_events(session, world.b.id, limit=500)
    assert any(
        e.action == "report.read" and e.assessment_id == world.a.ids["assessment"] for e in a_log
    )
    assert all(
        e.assessment_id not in (world.a.ids["assessment"], world.a.ids["a_only"]) for e in b_log
    )


def test_equal_mrns_in_two_tenants_are_two_patients(world: World) -> None:
    with world.sessions() as session:
        mine = repository.scored_for_patient(session, world.a.id, world.shared_mrn, limit=10)
        theirs = repository.scored_for_patient(session, world.b.id, world.shared_mrn, limit=10)
    assert {a.id for a, _ in mine}.isdisjoint({a.id for a, _ in theirs})
    assert {a.tenant_id for a, _ in mine} == {world.a.id}

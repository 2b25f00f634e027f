"""Signed EHR webhooks on a real database, signed by the `standardwebhooks` package (a client
nobody here wrote), with FHIR bodies built by fhir.resources."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.questionnaireresponse import (
    QuestionnaireResponse,
    QuestionnaireResponseItem,
    QuestionnaireResponseItemAnswer,
)
from fhir.resources.R4B.reference import Reference
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from services.intake.fhir_questionnaire import CODE_SYSTEM_BASE, QUESTIONNAIRE_URL
from shared.models import Assessment, FhirQuestionnaireResponse, IdempotencyRecord, OutboxMessage
from tests.factories import report

PROBLEM = "application/problem+json"
FHIR = "application/fhir+json"
PHI_MARKER = "Quillon-Vexmoor-31"


@pytest.fixture
def integration(intake: Any, auth: dict[str, str]) -> dict[str, Any]:
    """A fresh integration registered through the admin API: {id, name, secret, ...}."""
    name = f"ehr-{uuid.uuid4().hex[:8]}"
    response = intake.post("/v1/admin/integrations", json={"name": name}, headers=auth)
    assert response.status_code == 201
    return response.get_json()  # type: ignore[no-any-return]


def signed(
    secret: str,
    body: str,
    *,
    webhook_id: str | None = None,
    at: datetime | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers a Standard Webhooks sender puts on `body`."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
        "Content-Type": content_type,
    }


def send(intake: Any, integration: dict[str, Any], body: str, **kwargs: Any) -> Any:
    headers = signed(integration["secret"], body, **kwargs)
    return intake.post(f"/v1/webhooks/ehr/{integration['id']}", data=body, headers=headers)


def fhir_response(age: Any = 58, patient: str = "MRN-WH-1") -> str:
    """A QuestionnaireResponse for the intake Questionnaire, built and serialised by
    fhir.resources."""

    def coded(field: str, code: str) -> QuestionnaireResponseItemAnswer:
        return QuestionnaireResponseItemAnswer(
            valueCoding=Coding(system=CODE_SYSTEM_BASE + field, code=code)
        )

    def answer(link_id: str, *answers: QuestionnaireResponseItemAnswer) -> Any:
        return QuestionnaireResponseItem(linkId=link_id, answer=list(answers))

    resource = QuestionnaireResponse(
        status="completed",
        questionnaire=QUESTIONNAIRE_URL,
        subject=Reference(reference=f"Patient/{patient}"),
        item=[
            answer("patient.age", QuestionnaireResponseItemAnswer(valueInteger=age)),
            answer("complaints", coded("complaints", "cramps")),
            answer("onset_days", QuestionnaireResponseItemAnswer(valueDecimal=3)),
            answer("course", coded("course", "unchanged")),
            answer("findings.dark_urine", QuestionnaireResponseItemAnswer(valueBoolean=False)),
            answer("free_text", QuestionnaireResponseItemAnswer(valueString=PHI_MARKER)),
        ],
    )
    return resource.model_dump_json()


def counts(sessions: Any) -> tuple[int, int, int, int]:
    with sessions() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (Assessment, OutboxMessage, IdempotencyRecord, FhirQuestionnaireResponse)
        )


def v1_body(**overrides: Any) -> str:
    return json.dumps(report(free_text=PHI_MARKER, **overrides))


# ---- Accepted ---------------------------------------------------------------------------------


def test_signed_v1_report_is_accepted_and_stored_once(
    intake: Any, integration: dict[str, Any], sessions: Any
) -> None:
    response = send(intake, integration, v1_body())
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/assessments/{body['id']}"
    with sessions() as session:
        assessment = session.get(Assessment, body["id"])
        assert assessment.source == "webhook"
        assert assessment.submitted_by == integration["id"]
        assert assessment.report["free_text"] == PHI_MARKER
        outbox = session.scalars(
            select(OutboxMessage).where(OutboxMessage.assessment_id == body["id"])
        ).all()
        assert [m.args for m in outbox] == [[body["id"]]]


def test_signed_questionnaire_response_is_accepted_and_its_original_kept(
    intake: Any, integration: dict[str, Any], auth: dict[str, str], sessions: Any
) -> None:
    original = fhir_response()
    response = send(intake, integration, original, content_type=FHIR)
    assert response.status_code == 202
    body = response.get_json()
    with sessions() as session:
        assessment = session.get(Assessment, body["id"])
        assert assessment.report["patient"]["id"] == "MRN-WH-1"
        assert assessment.report["findings"] == {"dark_urine": False}
    back = intake.get(body["links"]["questionnaire_response"], headers=auth)
    assert back.status_code == 200 and back.mimetype == FHIR
    assert back.get_json()["item"] == json.loads(original)["item"]


def test_redelivery_gets_the_first_answer_and_stores_nothing_new(
    intake: Any, integration: dict[str, Any], sessions: Any
) -> None:
    body = v1_body()
    first = send(intake, integration, body, webhook_id="msg_redelivered_1")
    before = counts(sessions)
    # A sender retrying signs again with a new timestamp, same id, same body.
    later = datetime.now(UTC) + timedelta(seconds=30)
    again = send(intake, integration, body, webhook_id="msg_redelivered_1", at=later)
    assert again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(sessions) == before


def test_the_same_id_on_another_integration_is_a_different_message(
    intake: Any, integration: dict[str, Any], auth: dict[str, str]
) -> None:
    other = intake.post(
        "/v1/admin/integrations", json={"name": f"other-{uuid.uuid4().hex[:6]}"}, headers=auth
    ).get_json()
    first = send(intake, integration, v1_body(), webhook_id="msg_shared_id")
    second = send(intake, other, v1_body(onset_days=2), webhook_id="msg_shared_id")
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] != second.get_json()["id"]


def test_integration_named_in_a_header_on_the_plain_route(
    intake: Any, integration: dict[str, Any]
) -> None:
    body = v1_body()
    for ref in (integration["name"], integration["id"]):
        headers = {**signed(integration["secret"], body), "webhook-integration": ref}
        assert intake.post("/v1/webhooks/ehr", data=body, headers=headers).status_code == 202
    missing = intake.post(
        "/v1/webhooks/ehr", data=body, headers=signed(integration["secret"], body)
    )
    assert missing.status_code == 400 and missing.mimetype == PROBLEM


# ---- Refused, logged without PHI, nothing stored ----------------------------------------------


def _wrong_secret(integration: dict[str, Any], body: str) -> dict[str, Any]:
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    return {"headers": signed(other, body)}


def _item_not_a_list() -> str:
    resource = json.loads(fhir_response())
    resource["item"] = {"linkId": "patient.age"}
    return json.dumps(resource)


CASES: dict[str, tuple[Any, int, str]] = {
    # name: (how to send it, status, media type)
    "wrong-secret": (_wrong_secret, 401, PROBLEM),
    "tampered-body": (
        lambda i, b: {"headers": signed(i["secret"], b), "data": b.replace("58", "59")},
        401,
        PROBLEM,
    ),
    "stale-timestamp": (
        lambda i, b: {
            "headers": signed(i["secret"], b, at=datetime.now(UTC) - timedelta(minutes=6))
        },
        401,
        PROBLEM,
    ),
    "future-timestamp": (
        lambda i, b: {
            "headers": signed(i["secret"], b, at=datetime.now(UTC) + timedelta(minutes=6))
        },
        401,
        PROBLEM,
    ),
    "unknown-integration": (
        lambda i, b: {"headers": signed(i["secret"], b), "path": str(uuid.uuid4())},
        401,
        PROBLEM,
    ),
    "missing-signature": (
        lambda i, b: {
            "headers": {k: v for k, v in signed(i["secret"], b).items() if k != "webhook-signature"}
        },
        400,
        PROBLEM,
    ),
    "garbage-signature": (
        lambda i, b: {"headers": {**signed(i["secret"], b), "webhook-signature": "v1 nonsense"}},
        401,
        PROBLEM,
    ),
    "text-plain": (
        lambda i, b: {"headers": signed(i["secret"], b, content_type="text/plain")},
        415,
        PROBLEM,
    ),
    "malformed-json": (
        lambda i, b: {"headers": signed(i["secret"], b[:-5]), "data": b[:-5]},
        400,
        PROBLEM,
    ),
    "invalid-v1-report": (
        lambda i, b: {
            "headers": signed(i["secret"], bad := v1_body(onset_days=-1)),
            "data": bad,
        },
        422,
        PROBLEM,
    ),
    "not-a-report": (
        lambda i, b: {
            "headers": signed(i["secret"], other := json.dumps({"resourceType": "Patient"})),
            "data": other,
        },
        422,
        PROBLEM,
    ),
    "malformed-fhir": (
        lambda i, b: {
            "headers": signed(i["secret"], qr := _item_not_a_list(), content_type=FHIR),
            "data": qr,
        },
        400,
        FHIR,
    ),
    "fhir-answer-of-wrong-type": (
        lambda i, b: {
            "headers": signed(
                i["secret"],
                qr := fhir_response().replace('{"valueInteger":58}', '{"valueString":"58"}'),
                content_type=FHIR,
            ),
            "data": qr,
        },
        422,
        FHIR,
    ),
    "fhir-out-of-range": (
        lambda i, b: {
            "headers": signed(i["secret"], qr := fhir_response(age=9), content_type=FHIR),
            "data": qr,
        },
        422,
        FHIR,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_webhooks_get_the_right_status_are_logged_without_phi_and_store_nothing(
    intake: Any, integration: dict[str, Any], sessions: Any, capsys: Any, case: str
) -> None:
    build, status, media_type = CASES[case]
    body = v1_body()
    request = build(integration, body)
    before = counts(sessions)
    capsys.readouterr()
    response = intake.post(
        f"/v1/webhooks/ehr/{request.get('path', integration['id'])}",
        data=request.get("data", body),
        headers=request["headers"],
    )
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == media_type
    if media_type == FHIR:
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    else:
        assert response.get_json()["status"] == status
    assert counts(sessions) == before
    logs = capsys.readouterr().out
    assert "webhook.rejected" in logs or status == 422
    assert PHI_MARKER not in logs and "MRN-" not in logs


def test_wrong_answer_type_names_the_linkid(intake: Any, integration: dict[str, Any]) -> None:
    qr = fhir_response().replace('{"valueInteger":58}', '{"valueString":"58"}')
    response = send(intake, integration, qr, content_type=FHIR)
    issues = response.get_json()["issue"]
    assert [(i["code"], i["expression"]) for i in issues] == [("value", ["patient.age"])]


def test_unknown_integration_looks_like_a_bad_signature(
    intake: Any, integration: dict[str, Any]
) -> None:
    body = v1_body()
    unknown = intake.post(
        f"/v1/webhooks/ehr/{uuid.uuid4()}", data=body, headers=signed(integration["secret"], body)
    )
    wrong = intake.post(
        f"/v1/webhooks/ehr/{integration['id']}",
        data=body,
        headers=signed("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=", body),
    )
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json()["detail"] == wrong.get_json()["detail"]


def test_replayed_id_with_another_body_is_a_409_and_stores_nothing(
    intake: Any, integration: dict[str, Any], sessions: Any
) -> None:
    assert send(intake, integration, v1_body(), webhook_id="msg_replay_x").status_code == 202
    before = counts(sessions)
    replay = send(intake, integration, v1_body(onset_days=7), webhook_id="msg_replay_x")
    assert replay.status_code == 409 and replay.mimetype == PROBLEM
    assert counts(sessions) == before


# ---- Secrets: rotation, revocation, disabling -------------------------------------------------


def test_rotation_both_secrets_work_until_the_old_is_revoked(
    intake: Any, integration: dict[str, Any], auth: dict[str, str]
) -> None:
    base = f"/v1/admin/integrations/{integration['id']}"
    added = intake.post(f"{base}/secrets", json={}, headers=auth)
    assert added.status_code == 201
    new = {**integration, "secret": added.get_json()["secret"]}
    assert send(intake, integration, v1_body()).status_code == 202
    assert send(intake, new, v1_body()).status_code == 202
    # A sender mid-rotation may sign with both: either may match.
    body = v1_body()
    headers = signed(new["secret"], body)
    old_sig = signed(integration["secret"], body, webhook_id=headers["webhook-id"])
    headers["webhook-signature"] = f"v1,bm90IGEgcmVhbCBzaWc= {old_sig['webhook-signature']}"
    assert (
        intake.post(f"/v1/webhooks/ehr/{integration['id']}", data=body, headers=headers).status_code
        == 202
    )
    old_id = intake.get(base, headers=auth).get_json()["secrets"][0]["id"]
    assert intake.delete(f"{base}/secrets/{old_id}", headers=auth).status_code == 204
    assert send(intake, integration, v1_body()).status_code == 401
    assert send(intake, new, v1_body()).status_code == 202


def test_disabled_integration_is_refused(
    intake: Any, integration: dict[str, Any], auth: dict[str, str]
) -> None:
    disabled = intake.post(
        f"/v1/admin/integrations/{integration['id']}/disable", headers=auth
    ).get_json()
    assert disabled["disabled_at"]
    assert send(intake, integration, v1_body()).status_code == 401


def test_integration_without_write_scope_is_forbidden(intake: Any, auth: dict[str, str]) -> None:
    reader = intake.post(
        "/v1/admin/integrations",
        json={"name": f"reader-{uuid.uuid4().hex[:6]}", "scopes": ["reports:read"]},
        headers=auth,
    ).get_json()
    assert send(intake, reader, v1_body()).status_code == 403


# ---- The admin API ----------------------------------------------------------------------------


def test_admin_api_shows_a_secret_once_and_needs_admin(
    intake: Any, integration: dict[str, Any], auth: dict[str, str], make_key: Any
) -> None:
    assert integration["secret"].startswith("whsec_")
    assert integration["webhook_url"] == f"/v1/webhooks/ehr/{integration['id']}"
    listing = intake.get("/v1/admin/integrations", headers=auth)
    assert listing.status_code == 200
    assert integration["id"] in {i["id"] for i in listing.get_json()["items"]}
    assert integration["secret"] not in listing.get_data(as_text=True)
    writer = {"Authorization": f"Bearer {make_key('assessments:write')}"}
    assert intake.get("/v1/admin/integrations", headers=writer).status_code == 403
    again = intake.post("/v1/admin/integrations", json={"name": integration["name"]}, headers=auth)
    assert again.status_code == 409 and again.mimetype == PROBLEM  # a conflict, not bad input
    bad_scope = intake.post(
        "/v1/admin/integrations", json={"name": "x-scope", "scopes": ["root"]}, headers=auth
    )
    assert bad_scope.status_code == 422
    weak = intake.post(
        f"/v1/admin/integrations/{integration['id']}/secrets",
        json={"secret": "whsec_c2hvcnQ="},
        headers=auth,
    )
    assert weak.status_code == 422
    missing = intake.delete(
        f"/v1/admin/integrations/{integration['id']}/secrets/{uuid.uuid4()}", headers=auth
    )
    assert missing.status_code == 404


# ---- End to end: the worker scores a webhook --------------------------------------------------


@pytest.mark.usefixtures("pipeline")
def test_a_signed_questionnaire_response_is_scored(
    intake: Any, integration: dict[str, Any], wait_scored: Any
) -> None:
    response = send(intake, integration, fhir_response(), content_type=FHIR)
    assert response.status_code == 202
    scored = wait_scored(response.get_json()["id"])
    assert scored["status"] == "scored"
    assert scored["result"]["triage"]

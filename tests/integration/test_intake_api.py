"""The intake API on a real database: what callers see for good and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from shared.models import Assessment, OutboxMessage
from tests.factories import MEDICATION_CHANGE, WITH_MEDICATION_CHANGES, report

PROBLEM = "application/problem+json"


def count_rows(sessions: Any) -> tuple[int, int]:
    with sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Assessment)),
            session.scalar(select(func.count()).select_from(OutboxMessage)),
        )


def test_accepts_a_report_with_202_location_and_outbox_row(
    intake: Any, auth: Any, sessions: Any
) -> None:
    response = intake.post("/v1/assessments", json=report(), headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/v1/assessments/{body['id']}"
    assert body["links"]["report"] == f"http://reporting.test/v1/reports/assessments/{body['id']}"
    with sessions() as session:
        assessment = session.get(Assessment, body["id"])
        assert assessment is not None and assessment.status == "queued"
        assert assessment.report["patient"]["id"] == "MRN-0042"
        outbox = session.scalars(
            select(OutboxMessage).where(OutboxMessage.assessment_id == body["id"])
        ).all()
        # Task messages carry the id only, never the report.
        assert [m.args for m in outbox] == [[body["id"]]]


def test_invalid_report_is_a_422_naming_every_field_and_stores_nothing(
    intake: Any, auth: Any, sessions: Any
) -> None:
    before = count_rows(sessions)
    body = report(patient={"id": "MRN 1", "age": 9}, onset_days=-3, findings={"zzz": True})
    response = intake.post("/v1/assessments", json=body, headers=auth)
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == 422 and problem["title"] and problem["request_id"]
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"patient.id", "patient.age", "onset_days", "findings.zzz"}
    assert {e["pointer"] for e in problem["errors"]} >= {"/patient/age", "/findings/zzz"}
    assert count_rows(sessions) == before


def test_a_report_with_medication_changes_is_accepted_and_stored_with_them(
    intake: Any, auth: Any, sessions: Any
) -> None:
    response = intake.post("/v1/assessments", json=report(WITH_MEDICATION_CHANGES), headers=auth)
    assert response.status_code == 202, response.get_data(as_text=True)
    with sessions() as session:
        stored = session.get(Assessment, response.get_json()["id"])
        assert stored is not None
        assert stored.report["medication_changes"] == WITH_MEDICATION_CHANGES["medication_changes"]
    # A v1 report (no medication_changes) is stored with the contract's default.
    v1 = intake.post("/v1/assessments", json=report(), headers=auth)
    assert v1.status_code == 202
    with sessions() as session:
        assert session.get(Assessment, v1.get_json()["id"]).report["medication_changes"] == []


def test_bad_medication_changes_are_a_422_naming_every_field_and_store_nothing(
    intake: Any, auth: Any, sessions: Any
) -> None:
    before = count_rows(sessions)
    body = report(
        medication_changes=[
            MEDICATION_CHANGE,
            {"name": "x" * 201, "change": "increased", "days_ago": -1},
            {**MEDICATION_CHANGE, "days_ago": "30", "dose": "20 mg"},
            "ramipril",
        ]
    )
    response = intake.post("/v1/assessments", json=body, headers=auth)
    assert response.status_code == 422 and response.mimetype == PROBLEM
    problem = response.get_json()
    assert {(e["field"], e["pointer"]) for e in problem["errors"]} == {
        ("medication_changes.1.name", "/medication_changes/1/name"),
        ("medication_changes.1.change", "/medication_changes/1/change"),
        ("medication_changes.1.days_ago", "/medication_changes/1/days_ago"),
        ("medication_changes.2.days_ago", "/medication_changes/2/days_ago"),
        ("medication_changes.2.dose", "/medication_changes/2/dose"),
        ("medication_changes.3", "/medication_changes/3"),
    }
    assert problem["detail"].startswith("6 field(s) are invalid: medication_changes.1.change")
    too_many = intake.post(
        "/v1/assessments", json=report(medication_changes=[MEDICATION_CHANGE] * 51), headers=auth
    )
    assert too_many.status_code == 422
    assert [e["field"] for e in too_many.get_json()["errors"]] == ["medication_changes"]
    assert count_rows(sessions) == before


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("[1, 2]", "application/json", 422),
        ('"a string"', "application/json", 422),
        ("null", "application/json", 422),
        ("patient=1", "application/x-www-form-urlencoded", 415),
        ("{}", "text/plain", 415),
    ],
)
def test_malformed_bodies_get_problem_json_not_5xx(
    intake: Any, auth: Any, sessions: Any, data: str, content_type: str, status: int
) -> None:
    before = count_rows(sessions)
    response = intake.post("/v1/assessments", data=data, content_type=content_type, headers=auth)
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    assert count_rows(sessions) == before


def test_oversized_body_is_413(intake: Any, auth: Any) -> None:
    body = report(free_text="x" * 70_000)
    response = intake.post("/v1/assessments", json=body, headers=auth)
    assert response.status_code == 413
    assert response.mimetype == PROBLEM


def test_no_key_is_401_and_wrong_scope_is_403(intake: Any, make_key: Any) -> None:
    assert intake.post("/v1/assessments", json=report()).status_code == 401
    bad = intake.post("/v1/assessments", json=report(), headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.mimetype == PROBLEM
    reader = make_key("reports:read")
    forbidden = intake.post(
        "/v1/assessments", json=report(), headers={"Authorization": f"Bearer {reader}"}
    )
    assert forbidden.status_code == 403
    writer = make_key("assessments:write")
    accepted = intake.post("/v1/assessments", json=report(), headers={"X-API-Key": writer})
    assert accepted.status_code == 202
    # Writing does not grant reading the result back.
    read = intake.get(accepted.headers["Location"], headers={"X-API-Key": writer})
    assert read.status_code == 403


def test_revoked_key_is_refused(intake: Any, sessions: Any, make_key: Any) -> None:
    from shared.auth import revoke_api_key
    from shared.db import transaction

    key = make_key("assessments:write")
    headers = {"Authorization": f"Bearer {key}"}
    assert intake.post("/v1/assessments", json=report(), headers=headers).status_code == 202
    with transaction(sessions) as session:
        assert revoke_api_key(session, key.split("_")[1])
    assert intake.post("/v1/assessments", json=report(), headers=headers).status_code == 401


def test_idempotency_key_replays_and_refuses_a_different_body(
    intake: Any, auth: Any, sessions: Any
) -> None:
    headers = {**auth, "Idempotency-Key": "order-7781"}
    first = intake.post("/v1/assessments", json=report(), headers=headers)
    before = count_rows(sessions)
    again = intake.post("/v1/assessments", json=report(), headers=headers)
    assert again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_rows(sessions) == before
    other = intake.post("/v1/assessments", json=report(onset_days=3), headers=headers)
    assert other.status_code == 422 and other.mimetype == PROBLEM
    assert count_rows(sessions) == before


def test_unknown_assessment_is_404(intake: Any, auth: Any) -> None:
    response = intake.get("/v1/assessments/00000000-0000-0000-0000-000000000000", headers=auth)
    assert response.status_code == 404 and response.mimetype == PROBLEM


def test_unknown_route_and_wrong_method_are_problem_json(intake: Any, auth: Any) -> None:
    assert intake.get("/v1/nothing", headers=auth).mimetype == PROBLEM
    response = intake.delete("/v1/assessments", headers=auth)
    assert response.status_code == 405 and response.mimetype == PROBLEM


def test_openapi_describes_the_contract(intake: Any) -> None:
    spec = intake.get("/openapi.json").get_json()
    post = spec["paths"]["/v1/assessments"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = schema_ref.rsplit("/", 1)[-1]
    properties = spec["components"]["schemas"][name]["properties"]
    assert {"patient", "complaints", "onset_days", "course", "findings"} <= set(properties)
    assert post["security"] == [{"ApiKeyAuth": []}]
    page = intake.get("/docs")
    assert page.status_code == 200
    # Every asset the page loads is served here: closed hospital networks reach no CDN.
    html = page.get_data(as_text=True)
    assert "http://" not in html.replace("http://localhost", "") and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in html
        served = intake.get(f"/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.get_data()) > 10_000


def test_health_and_metrics(intake: Any, auth: Any) -> None:
    assert intake.get("/livez").get_json()["status"] == "ok"
    ready = intake.get("/readyz").get_json()
    assert ready["checks"] == {"database": "ok", "redis": "ok"}
    intake.post("/v1/assessments", json={"bad": 1}, headers=auth)
    metrics = intake.get("/metrics").get_data(as_text=True)
    assert 'myotriage_http_requests_total{method="POST",route="/v1/assessments"' in metrics
    assert "MRN-" not in metrics


def test_an_expired_idempotency_key_can_be_used_again(
    intake: Any, auth: Any, sessions: Any
) -> None:
    from datetime import timedelta

    from shared.db import transaction
    from shared.models import IdempotencyRecord, utcnow

    headers = {**auth, "Idempotency-Key": "expired-key-1"}
    first = intake.post("/v1/assessments", json=report(), headers=headers)
    with transaction(sessions) as session:
        session.query(IdempotencyRecord).filter(IdempotencyRecord.key == "expired-key-1").update(
            {"created_at": utcnow() - timedelta(days=3)}
        )
    again = intake.post("/v1/assessments", json=report(onset_days=2), headers=headers)
    assert again.status_code == 202
    assert again.get_json()["id"] != first.get_json()["id"]
    assert "Idempotent-Replayed" not in again.headers


def test_the_contract_is_published_as_json_schema(intake: Any) -> None:
    import fastjsonschema

    response = intake.get("/v1/schemas/symptom-report")  # public: no key needed
    assert response.status_code == 200
    assert response.mimetype == "application/schema+json"
    check = fastjsonschema.compile(response.get_json())
    check(report())
    check(report(WITH_MEDICATION_CHANGES))
    with pytest.raises(fastjsonschema.JsonSchemaException):
        check(report(complaints=["headache"]))
    for entry in (
        {**MEDICATION_CHANGE, "change": "increased"},
        {**MEDICATION_CHANGE, "days_ago": -1},
        {**MEDICATION_CHANGE, "dose": "20 mg"},
        {"name": "atorvastatin", "change": "started"},
    ):
        with pytest.raises(fastjsonschema.JsonSchemaException):
            check(report(medication_changes=[entry]))

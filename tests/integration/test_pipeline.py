"""A report travels intake → outbox → relay → Redis → worker → database → reporting, for real."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from shared.models import DEFAULT_TENANT_ID, AuditEvent, OutboxMessage, TriageResult
from tests.factories import DOMS, STROKE, report

pytestmark = pytest.mark.usefixtures("pipeline")


def submit(intake: Any, auth: Any, body: dict[str, Any]) -> str:
    response = intake.post("/v1/assessments", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def test_contract_example_is_scored_with_an_explained_result(
    intake: Any, auth: Any, wait_scored: Any
) -> None:
    body = wait_scored(submit(intake, auth, report()))
    assert body["status"] == "scored"
    # Timestamps are UTC and say so, on SQLite as on PostgreSQL.
    assert body["created_at"].endswith("+00:00") and body["scored_at"].endswith("+00:00")
    result = body["result"]
    # Twitching with distal weakness and wasting for months: an MND concern, never self-care.
    assert result["triage"] in ("consultation", "consultation_24")
    flag_ids = {flag["id"] for flag in result["red_flags"]}
    assert "RF_WEAKNESS_WITH_TWITCHING" in flag_ids
    for flag in result["red_flags"]:
        assert flag["because"] and flag["source"]
    assert 0 <= result["priority"] <= 100
    assert result["ruleset_version"]
    # Free-text medicines and conditions are mapped to classes, and shown as written.
    assert result["medication_classes"] == {"statin": ["atorvastatin 20 mg"]}
    assert result["condition_classes"] == {"diabetes": ["type 2 diabetes"]}
    # The contract example leaves most safety questions unasked: the nurse's next questions.
    assert "face_drooping" in result["unanswered_safety_questions"]


def test_stroke_is_an_ambulance_and_doms_is_self_care(
    intake: Any, auth: Any, wait_scored: Any
) -> None:
    stroke = wait_scored(submit(intake, auth, report(STROKE)))
    assert stroke["result"]["triage"] == "emergency_ambulance"
    doms = wait_scored(submit(intake, auth, report(DOMS)))
    assert doms["result"]["triage"] == "self_care"
    assert doms["result"]["advice"]


def test_scoring_marks_the_outbox_row_done_and_stores_one_result(
    intake: Any, auth: Any, wait_scored: Any, sessions: Any
) -> None:
    assessment_id = submit(intake, auth, report())
    wait_scored(assessment_id)
    with sessions() as session:
        message = session.scalars(
            select(OutboxMessage).where(OutboxMessage.assessment_id == assessment_id)
        ).one()
        assert message.published_at is not None and message.completed_at is not None
        count = session.scalar(
            select(func.count())
            .select_from(TriageResult)
            .where(TriageResult.assessment_id == assessment_id)
        )
        assert count == 1


def test_running_the_task_twice_changes_nothing(
    intake: Any, auth: Any, wait_scored: Any, sessions: Any, settings: Any
) -> None:
    from services.rules.engine import load_ruleset
    from services.rules.scoring import score_assessment

    assessment_id = submit(intake, auth, report())
    first = wait_scored(assessment_id)
    outcome = score_assessment(sessions, load_ruleset(), assessment_id)
    assert outcome.outcome == "already_scored"
    again = intake.get(f"/v1/assessments/{assessment_id}", headers=auth).get_json()
    assert again["result"] == first["result"]


def test_clinician_summary_and_audit(
    intake: Any, reporting: Any, auth: Any, wait_scored: Any, sessions: Any
) -> None:
    assessment_id = submit(intake, auth, report())
    wait_scored(assessment_id)
    response = reporting.get(f"/v1/reports/assessments/{assessment_id}", headers=auth)
    assert response.status_code == 200
    summary = response.get_json()
    assert summary["patient"]["id"] == "MRN-0042"
    assert summary["triage"]["level"] in ("consultation", "consultation_24")
    assert summary["triage"]["red_flags"]
    questions = {q["code"]: q["question"] for q in summary["triage"]["next_questions"]}
    assert questions["face_drooping"].endswith("?")
    assert summary["patient_words"].startswith("Right hand")
    with sessions() as session:
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.assessment_id == assessment_id)
        ).all()
        # Reading the status (each poll, assessments:read) and the summary (reports:read) are
        # all audited.
        actions = [a.action for a in audit]
        assert set(actions) == {"assessment.read", "report.read"}
        assert actions.count("report.read") == 1
        assert {a.tenant_id for a in audit} == {DEFAULT_TENANT_ID}


def test_reports_need_the_reports_scope(reporting: Any, make_key: Any) -> None:
    writer = make_key("assessments:write")
    response = reporting.get("/v1/reports/queue", headers={"Authorization": f"Bearer {writer}"})
    assert response.status_code == 403
    assert reporting.get("/v1/reports/queue").status_code == 401


@pytest.mark.usefixtures("empty_db")
def test_queue_is_most_urgent_first(
    intake: Any, reporting: Any, auth: Any, wait_scored: Any
) -> None:
    ids = {
        "doms": submit(intake, auth, report(DOMS)),
        "mnd": submit(intake, auth, report()),
        "stroke": submit(intake, auth, report(STROKE)),
    }
    for assessment_id in ids.values():
        wait_scored(assessment_id)
    items = reporting.get("/v1/reports/queue", headers=auth).get_json()["items"]
    assert [item["assessment_id"] for item in items] == [ids["stroke"], ids["mnd"], ids["doms"]]
    assert items[0]["triage"] == "emergency_ambulance"
    only = reporting.get("/v1/reports/queue?level=self_care", headers=auth).get_json()["items"]
    assert [item["assessment_id"] for item in only] == [ids["doms"]]
    bad = reporting.get("/v1/reports/queue?limit=0", headers=auth)
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"


def test_rescore_under_a_new_version_keeps_both(
    intake: Any, auth: Any, wait_scored: Any, sessions: Any
) -> None:
    from services.rules.engine import load_ruleset
    from services.rules.scoring import score_assessment

    assessment_id = submit(intake, auth, report())
    wait_scored(assessment_id)
    ruleset = load_ruleset()

    class NextVersion:
        version = ruleset.version + "-next"

        def score(self, data: dict[str, Any]) -> dict[str, Any]:
            return {**ruleset.score(data), "ruleset_version": self.version}

    outcome = score_assessment(sessions, NextVersion(), assessment_id, rescore=True)  # type: ignore[arg-type]
    assert outcome.outcome == "scored"
    with sessions() as session:
        rows = session.scalars(
            select(TriageResult)
            .where(TriageResult.assessment_id == assessment_id)
            .order_by(TriageResult.created_at)
        ).all()
        assert [(r.ruleset_version, r.current) for r in rows] == [
            (ruleset.version, False),
            (ruleset.version + "-next", True),
        ]

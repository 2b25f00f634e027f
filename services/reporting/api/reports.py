"""`/v1/reports`: the clinician summary of one assessment and the triage queue."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from services.reporting.summaries import clinician_summary, queue_item
from shared import repository
from shared.auth import require_scope
from shared.db import transaction
from shared.problems import Problem
from shared.request_input import MAX_LIST_OFFSET
from shared.vocabulary import TRIAGE_LEVELS
from shared.web import ApiBlueprint, audit_caller, sessions, settings_of

blp = ApiBlueprint(
    "reports",
    __name__,
    url_prefix="/v1/reports",
    description="Clinician summaries and the triage queue (reads are audited).",
)


class QueueArgs(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_LIST_OFFSET))
    level = fields.String(load_default=None, validate=validate.OneOf(TRIAGE_LEVELS))


@blp.route("/assessments/<string:assessment_id>")
class AssessmentReport(MethodView):
    @blp.response(200)
    @require_scope("reports:read")
    def get(self, assessment_id: str) -> Any:
        """The clinician summary: what was reported, the triage level, and why."""
        with transaction(sessions()) as session:
            assessment = repository.get_assessment(session, g.caller.tenant_id, assessment_id)
            if assessment is None:
                raise Problem(404, "Not Found", "No assessment has this id.")
            result = repository.current_result(session, assessment_id)
            older = repository.older_results(session, assessment_id)
            history = repository.history_for_patient(session, assessment)
            audit_caller(
                session,
                "report.read",
                assessment_id=assessment_id,
            )
            return clinician_summary(assessment, result, history, older)


@blp.route("/queue")
class TriageQueue(MethodView):
    @require_scope("reports:read")  # above @arguments: no key is a 401 whatever the query
    @blp.arguments(QueueArgs, location="query")
    @blp.response(200)
    def get(self, args: dict[str, Any]) -> Any:
        """Scored assessments, most urgent first (level, then priority, then oldest)."""
        reporting_url = settings_of().reporting_base_url
        with transaction(sessions()) as session:
            rows = repository.triage_queue(
                session,
                g.caller.tenant_id,
                limit=args["limit"],
                offset=args["offset"],
                level=args["level"],
            )
            audit_caller(
                session,
                "queue.read",
                detail=f"{len(rows)} rows",
            )
            return {
                "items": [queue_item(a, r, reporting_url) for a, r in rows],
                "limit": args["limit"],
                "offset": args["offset"],
            }

"""`/v1/schemas`: the input contract as JSON Schema, for clients to check reports before sending.

Public: it describes the contract and holds no patient data.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask_smorest import Blueprint

from shared.schemas.report_json_schema import SYMPTOM_REPORT_JSON_SCHEMA

blp = Blueprint(
    "schemas",
    __name__,
    url_prefix="/v1/schemas",
    description="The v1 symptom report contract as JSON Schema (draft-07).",
)


@blp.route("/symptom-report")
@blp.doc(
    responses={
        "200": {
            "description": "The JSON Schema of a v1 symptom report.",
            "content": {"application/schema+json": {"schema": {"type": "object"}}},
        }
    }
)
def symptom_report_schema() -> Any:
    """The v1 symptom report as JSON Schema. Intake's own answer (422 naming every bad field)
    stays the reference; this schema accepts exactly what intake accepts."""
    response = jsonify(SYMPTOM_REPORT_JSON_SCHEMA)
    response.mimetype = "application/schema+json"
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response

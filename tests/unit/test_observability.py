"""The log processor that keeps report fields out of log lines, even if bound by mistake."""

from __future__ import annotations

import json

import structlog

from shared.observability import _drop_phi
from tests.factories import WITH_MEDICATION_CHANGES


def test_report_fields_bound_by_mistake_are_redacted() -> None:
    captured = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(
        captured, processors=[_drop_phi, structlog.processors.JSONRenderer()]
    )
    logger.info("assessment.accepted", assessment_id="a-1", **WITH_MEDICATION_CHANGES)
    lines = [call.args[0] for call in captured.calls]
    line = json.loads(lines[0])
    assert line["assessment_id"] == "a-1"
    for field in (
        "patient",
        "free_text",
        "medications",
        "medication_changes",
        "conditions",
        "findings",
    ):
        assert line[field] == "[redacted]", field
    assert "atorvastatin" not in lines[0] and "MRN-0042" not in lines[0]

"""No patient data in logs or task messages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import report

pytestmark = pytest.mark.usefixtures("pipeline")


def test_worker_and_relay_logs_hold_no_patient_data(
    intake: Any, auth: Any, wait_scored: Any, pipeline: Any, capsys: Any
) -> None:
    marker = "Zebulon-Quux-7"
    body = report(
        patient={"id": "PHI-MARKER-991", "age": 44},
        free_text=f"{marker} says hi",
        medications=[f"{marker} tablets"],
        medication_changes=[{"name": f"{marker} drops", "change": "started", "days_ago": 3}],
    )
    response = intake.post("/v1/assessments", json=body, headers=auth)
    wait_scored(response.get_json()["id"])
    logs = pipeline["worker"].output() + pipeline["relay"].output() + capsys.readouterr().out
    assert response.get_json()["id"] in logs  # the logs do talk about the assessment...
    assert marker not in logs  # ...but never quote it
    assert "PHI-MARKER-991" not in logs

"""The problem+json mapping and the settings loader."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.problems import field_errors, validation_problem


def test_nested_messages_flatten_to_every_field_with_pointers() -> None:
    messages = {
        "patient": {"age": ["Too young."], "id": ["Bad id."]},
        "complaints": {1: ["Unknown complaint."]},
        "_schema": ["Whole-body problem."],
    }
    errors = field_errors(messages)
    assert {(e["field"], e["pointer"]) for e in errors} == {
        ("patient.age", "/patient/age"),
        ("patient.id", "/patient/id"),
        ("complaints.1", "/complaints/1"),
        (None, ""),
    }


def test_validation_problem_names_the_fields_in_its_detail() -> None:
    problem = validation_problem({"onset_days": ["Not a number."], "course": ["Bad."]})
    assert problem.status == 422
    assert problem.detail == "2 field(s) are invalid: course, onset_days."


def test_settings_read_the_environment_with_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://db/x")
    monkeypatch.setenv("MYOTRIAGE_RELAY_BATCH_SIZE", "7")
    monkeypatch.setenv("MYOTRIAGE_RELAY_POLL_SECONDS", "0.5")
    settings = Settings.from_env()
    assert settings.database_url == "postgresql+psycopg://db/x"
    assert settings.relay_batch_size == 7 and settings.relay_poll_seconds == 0.5
    assert Settings.from_env(relay_batch_size=3).relay_batch_size == 3


def test_a_malformed_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYOTRIAGE_TASK_TIME_LIMIT", "soon")
    with pytest.raises(ValueError, match="MYOTRIAGE_TASK_TIME_LIMIT"):
        Settings.from_env()

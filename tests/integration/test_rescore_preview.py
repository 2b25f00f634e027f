"""`myotriage rescore --dry-run`: what a re-score under the current rule set would change, shown
before anything is written, and a real re-score afterwards changing exactly that.

On a private database (so the session's worker and relay, and other tests' rows, stay out of the
counts), with assessments stored as if scored under an older rule set that triaged some of them
differently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from services.cli import main
from services.rules.engine import RuleSet, load_ruleset
from services.rules.rescoring import preview_rescore
from shared import repository
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import (
    DEFAULT_TENANT_ID,
    Assessment,
    AuditEvent,
    OutboxMessage,
    TriageResult,
    new_id,
    utcnow,
)
from tests.factories import DOMS, STROKE, report
from tests.support import private_database

OLD_VERSION = "2025.01.1"
RETIRED_RULE = "RF_RETIRED_IN_TEST"


@dataclass
class Rig:
    database_url: str
    sessions: sessionmaker[Session]
    ruleset: RuleSet


@pytest.fixture(scope="module")
def rig(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    databases = private_database(database_url, tmp_path_factory.mktemp("rescore"), "rescore")
    url = next(databases)
    upgrade_database(url)
    engine = make_engine(url)
    yield Rig(url, make_session_factory(engine), load_ruleset())
    engine.dispose()
    next(databases, None)


@pytest.fixture
def stored(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Assessments with the results an older rule set gave them; their ids by name."""
    monkeypatch.setenv("DATABASE_URL", rig.database_url)
    with transaction(rig.sessions) as session:
        for model in (TriageResult, OutboxMessage, AuditEvent, Assessment):
            session.execute(delete(model))
    ruleset = rig.ruleset
    stroke, doms, mnd = report(STROKE), report(DOMS), report()
    mnd_level = ruleset.score(mnd)["triage"]
    mnd_flags = _flag_ids(ruleset.score(mnd))
    other_level = "self_care" if mnd_level != "self_care" else "consultation"
    return {
        # The old rule set missed the stroke: the new one sends an ambulance.
        "stroke_up": _store(rig, stroke, [(OLD_VERSION, "consultation", [])]),
        # The old one had a rule (since retired) that kept sore thighs at 24 hours.
        "doms_down": _store(rig, doms, [(OLD_VERSION, "consultation_24", [RETIRED_RULE])]),
        # The same level and red flags under both.
        "mnd_same": _store(rig, mnd, [(OLD_VERSION, mnd_level, mnd_flags)]),
        # The same level, one red flag fewer now.
        "mnd_flags": _store(rig, mnd, [(OLD_VERSION, mnd_level, [*mnd_flags, RETIRED_RULE])]),
        # Already re-scored under the current version: a re-score leaves it.
        "current": _store(rig, mnd, [(ruleset.version, mnd_level, mnd_flags)]),
        # Stored under the current version with another level: rules edited without a bump.
        "stale": _store(rig, mnd, [(ruleset.version, other_level, mnd_flags)]),
        # Scored under the current version once, then under an older one again (a rollback):
        # a re-score finds its result for this version and leaves the current one as it is.
        "rolled_back": _store(
            rig, mnd, [(ruleset.version, mnd_level, mnd_flags), (OLD_VERSION, other_level, [])]
        ),
        # Scoring failed: not in --all; by --id a re-score gives it its first result.
        "failed": _store(rig, doms, [], status="failed"),
    }


def _store(
    rig: Rig,
    body: dict[str, Any],
    results: list[tuple[str, str, list[str]]],
    *,
    status: str = "scored",
) -> str:
    """An assessment and its results, oldest first; the last one is current."""
    assessment_id = new_id()
    with transaction(rig.sessions) as session:
        session.add(
            Assessment(
                tenant_id=DEFAULT_TENANT_ID,
                id=assessment_id,
                status=status,
                source="api",
                patient_ref=body["patient"]["id"],
                report=body,
                scored_at=utcnow() if results else None,
            )
        )
        session.flush()
        for index, (version, level, flags) in enumerate(results):
            scored = rig.ruleset.score(body)
            result = {
                **scored,
                "triage": level,
                "ruleset_version": version,
                "red_flags": [{"id": flag} for flag in flags],
            }
            session.add(
                TriageResult(
                    id=new_id(),
                    assessment_id=assessment_id,
                    ruleset_version=version,
                    triage_level=level,
                    priority=50,
                    urgency=repository.urgency_of(level, 50),
                    current=index == len(results) - 1,
                    result=result,
                )
            )
            session.flush()
    return assessment_id


def _flag_ids(result: dict[str, Any]) -> list[str]:
    return [flag["id"] for flag in result["red_flags"]]


def _results(rig: Rig) -> list[tuple[str, str, str, str, bool]]:
    with rig.sessions() as session:
        rows = session.scalars(select(TriageResult).order_by(TriageResult.id)).all()
        return [(r.id, r.assessment_id, r.ruleset_version, r.triage_level, r.current) for r in rows]


def _current_levels(rig: Rig, ids: dict[str, str]) -> dict[str, str | None]:
    with rig.sessions() as session:
        levels = {}
        for name, assessment_id in ids.items():
            current = repository.current_result(session, assessment_id)
            levels[name] = current.triage_level if current else None
        return levels


def test_the_preview_counts_directions_and_the_matrix_and_writes_nothing(
    rig: Rig, stored: dict[str, str]
) -> None:
    assert rig.ruleset.score(report(STROKE))["triage"] == "emergency_ambulance"
    assert rig.ruleset.score(report(DOMS))["triage"] == "self_care"
    mnd_level = rig.ruleset.score(report())["triage"]
    before = _results(rig)

    preview = preview_rescore(rig.sessions, rig.ruleset)

    assert _results(rig) == before  # not a row added, none changed
    assert preview.ruleset_version == rig.ruleset.version
    assert preview.compared == 4  # stroke_up, doms_down, mnd_same, mnd_flags
    assert (preview.changed, preview.up, preview.down) == (2, 1, 1)
    assert preview.red_flags_changed == 1
    assert preview.from_versions == {OLD_VERSION: 4}
    assert preview.already_scored == 3  # current, stale, rolled_back
    assert preview.stale_under_same_version == (stored["stale"],)
    assert preview.first_results == {} and preview.missing == () and preview.engine_failed == ()

    moves = {
        (before_level, after_level): count
        for before_level, row in preview.matrix.items()
        for after_level, count in row.items()
        if count
    }
    assert moves == {
        ("consultation", "emergency_ambulance"): 1,
        ("consultation_24", "self_care"): 1,
        (mnd_level, mnd_level): 2,
    }
    assert list(preview.matrix) == [
        "emergency_ambulance",
        "emergency",
        "consultation_24",
        "consultation",
        "self_care",
    ]

    # Less urgent first: the change a safety officer looks at hardest.
    down, up = preview.changes
    assert (down.assessment_id, down.from_level, down.to_level, down.direction) == (
        stored["doms_down"],
        "consultation_24",
        "self_care",
        "down",
    )
    assert down.red_flags_removed == (RETIRED_RULE,)
    assert down.red_flags_added == tuple(sorted(_flag_ids(rig.ruleset.score(report(DOMS)))))
    assert (up.assessment_id, up.from_level, up.to_level, up.direction) == (
        stored["stroke_up"],
        "consultation",
        "emergency_ambulance",
        "up",
    )
    assert up.from_version == OLD_VERSION
    assert up.red_flags_added == tuple(sorted(_flag_ids(rig.ruleset.score(report(STROKE)))))
    assert up.red_flags_added and up.red_flags_removed == ()


def test_a_preview_by_id_names_missing_ones_and_first_results(
    rig: Rig, stored: dict[str, str]
) -> None:
    unknown = new_id()
    preview = preview_rescore(
        rig.sessions, rig.ruleset, [stored["failed"], stored["stroke_up"], unknown]
    )
    assert preview.compared == 1 and preview.up == 1 and preview.down == 0
    assert preview.first_results == {stored["failed"]: "self_care"}
    assert preview.missing == (unknown,)


def test_the_dry_run_command_prints_ids_levels_and_rule_ids_only(
    rig: Rig, stored: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _results(rig)

    assert main(["rescore", "--all", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert _results(rig) == before
    assert "dry run: nothing was written" in out
    assert f"compared: 4 (current results scored under: {OLD_VERSION} (4); new: " in out
    assert "level would change: 2 (1 up, more urgent; 1 down, less urgent); unchanged: 2" in out
    assert (
        f"already scored under {rig.ruleset.version} (a re-score leaves them as they are): 3"
        in (out)
    )
    assert f"warning: 1 result(s) stored under {rig.ruleset.version}" in out
    assert stored["stale"] in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("from \\ to"))
    assert header.split()[3:] == [
        "emergency_ambulance",
        "emergency",
        "consultation_24",
        "consultation",
        "self_care",
    ]
    consultation_row = next(line for line in lines if line.startswith("consultation "))
    assert consultation_row.split()[1] == "1"  # consultation -> emergency_ambulance
    changes = lines[lines.index("changes, less urgent first (2 of 2):") + 1 :]
    assert changes[0].startswith(f"{stored['doms_down']}  consultation_24 -> self_care  down")
    assert f"-{RETIRED_RULE}" in changes[0]
    assert changes[1].startswith(f"{stored['stroke_up']}  consultation -> emergency_ambulance  up")
    # No patient data: no patient reference, free text, medicine or condition.
    body = report()
    for text in (
        "MRN-",
        body["free_text"],
        body["medications"][0],
        body["conditions"][0],
        "atorvastatin",
    ):
        assert text not in out

    # One audit row for the run, counts only.
    with rig.sessions() as session:
        audits = session.scalars(select(AuditEvent)).all()
    assert [(a.actor, a.action, a.assessment_id) for a in audits] == [
        ("cli:rescore", "assessment.rescore_preview", None)
    ]
    assert audits[0].detail is not None and "compared 4" in audits[0].detail
    assert "MRN-" not in audits[0].detail


def test_the_dry_run_as_json_is_the_preview(
    rig: Rig, stored: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rescore", "--all", "--dry-run", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(preview_rescore(rig.sessions, rig.ruleset).as_dict()))
    assert (printed["compared"], printed["changed"], printed["up"], printed["down"]) == (4, 2, 1, 1)
    assert [c["assessment_id"] for c in printed["changes"]] == [
        stored["doms_down"],
        stored["stroke_up"],
    ]
    assert printed["matrix"]["consultation_24"]["self_care"] == 1

    unknown = new_id()
    assert main(["rescore", "--id", unknown, "--dry-run", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == [unknown]
    assert main(["rescore", "--all", "--json"]) == 2  # --json is for the dry run
    assert "--json goes with --dry-run" in capsys.readouterr().err


def test_a_real_rescore_changes_exactly_what_the_preview_listed(
    rig: Rig, stored: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    preview = preview_rescore(rig.sessions, rig.ruleset)
    before = _current_levels(rig, stored)

    assert main(["rescore", "--all"]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith(
        "level changed for 2 (1 up, more urgent; 1 down, less urgent)"
    )
    after = _current_levels(rig, stored)
    changed = {stored_id for name, stored_id in stored.items() if before[name] != after[name]}
    assert changed == {change.assessment_id for change in preview.changes}
    by_id = {stored_id: name for name, stored_id in stored.items()}
    for change in preview.changes:
        assert before[by_id[change.assessment_id]] == change.from_level
        assert after[by_id[change.assessment_id]] == change.to_level
    # What the preview said a re-score leaves, it left.
    assert after["stale"] == before["stale"] and after["rolled_back"] == before["rolled_back"]

    # Everything compared now has a current result under this version: nothing left to change.
    again = preview_rescore(rig.sessions, rig.ruleset)
    assert (again.compared, again.changed, again.already_scored) == (0, 0, 7)

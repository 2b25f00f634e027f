"""Re-scoring stored assessments under the current rule set: an explicit admin action.

The new result becomes current and the old one is kept, so a clinician can see what changed
and under which version each decision was made.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared import repository
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.models import Assessment


def rescore(assessment_ids: list[str] | None, *, all_assessments: bool = False) -> int:
    """Re-score the given (or all scored) assessments; print a summary; return an exit code."""
    sessions = make_session_factory(make_engine(Settings.from_env().database_url))
    ruleset = load_ruleset()
    if all_assessments:
        with sessions() as session:
            assessment_ids = list(
                session.scalars(select(Assessment.id).where(Assessment.status == "scored"))
            )
    outcomes: Counter[str] = Counter()
    changed = 0
    for assessment_id in assessment_ids or []:
        with sessions() as session:
            before = repository.current_result(session, assessment_id)
            before_level = before.triage_level if before else None
        outcome = score_assessment(sessions, ruleset, assessment_id, rescore=True)
        outcomes[outcome.outcome] += 1
        if outcome.outcome == "scored" and before_level and before_level != outcome.triage_level:
            changed += 1
            print(f"{assessment_id}: {before_level} -> {outcome.triage_level}")
        with transaction(sessions) as session:
            repository.record_audit(
                session,
                actor="cli:rescore",
                action="assessment.rescore",
                assessment_id=assessment_id,
                detail=f"ruleset {ruleset.version}: {outcome.outcome}",
            )
    print(
        f"ruleset {ruleset.version}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        + f"; level changed for {changed}"
    )
    return 1 if outcomes.get("missing") else 0

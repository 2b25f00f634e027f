"""Re-scoring stored assessments under the current rule set: an explicit admin action.

The new result becomes current and the old one is kept, so a clinician can see what changed
and under which version each decision was made.

A dry run (`preview_rescore`) scores the same stored reports in memory, the way a re-score
would, and says what it would change without writing a result: a clinical safety officer can
approve a rule-set change with its effect in front of them. It speaks in ids, levels and rule
ids only, never report contents.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from sqlalchemy.orm import Session, sessionmaker

from services.rules.engine import RuleSet, load_ruleset
from services.rules.scoring import score_assessment, score_stored_report
from shared import repository
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.vocabulary import LEVEL_RANK, TRIAGE_LEVELS

ACTOR: Final = "cli:rescore"
# Assessments read per query: bounds memory and the length of the `IN (...)` lists.
PREVIEW_BATCH: Final = 500
# Level changes the text output lists one by one; `--json` lists them all.
LISTED_CHANGES: Final = 50

Direction = Literal["up", "down", "same"]


def direction(before: str, after: str) -> Direction:
    """`up` when `after` is more urgent than `before`, `down` when less urgent, else `same`."""
    if LEVEL_RANK[after] > LEVEL_RANK[before]:
        return "up"
    if LEVEL_RANK[after] < LEVEL_RANK[before]:
        return "down"
    return "same"


@dataclass(frozen=True)
class LevelChange:
    """One assessment whose triage level a re-score would change."""

    assessment_id: str
    from_level: str
    to_level: str
    from_version: str
    direction: Direction
    red_flags_added: tuple[str, ...]
    red_flags_removed: tuple[str, ...]


@dataclass(frozen=True)
class RescorePreview:
    """What a re-score under `ruleset_version` would change, in counts, levels and ids."""

    ruleset_version: str
    # Assessments a re-score would give a new current result, scored here and compared with
    # the current one; the matrix, the versions and the changes are about these.
    compared: int
    changed: int
    up: int  # more urgent
    down: int  # less urgent
    # from level -> to level -> how many; the diagonal is the unchanged ones.
    matrix: dict[str, dict[str, int]]
    # The rule-set versions the compared current results were scored under -> how many.
    from_versions: dict[str, int]
    # Less urgent first, then the largest moves, then by id.
    changes: tuple[LevelChange, ...]
    # Same level, different red flags.
    red_flags_changed: int
    # Already have a result under `ruleset_version`: a re-score leaves them as they are.
    already_scored: int
    # Of those, current results under `ruleset_version` that it no longer gives (the rule files
    # changed without a version bump, so a re-score would not apply the change).
    stale_under_same_version: tuple[str, ...]
    # No current result (only by --id: queued or failed): a re-score gives them their first.
    first_results: dict[str, str]
    missing: tuple[str, ...]  # requested ids that match no assessment
    engine_failed: tuple[str, ...]  # the engine raised on these reports

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for `--json` and an admin API)."""
        return asdict(self)


def preview_rescore(
    sessions: sessionmaker[Session],
    ruleset: RuleSet,
    assessment_ids: Sequence[str] | None = None,
) -> RescorePreview:
    """Score the given assessments (default: every scored one) under `ruleset` in memory and
    compare each with what `rescore` would change; read-only, it writes nothing.

    It follows `score_assessment(..., rescore=True)`: an assessment that already has a result
    under this version is left as it is; any other gets the engine's result for its stored
    report (`score_stored_report`, the very call scoring makes) as its new current result.
    """
    if assessment_ids is None:
        with sessions() as session:
            assessment_ids = repository.scored_assessment_ids(session)
    ids = list(dict.fromkeys(assessment_ids))
    matrix: Counter[tuple[str, str]] = Counter()
    from_versions: Counter[str] = Counter()
    changes: list[LevelChange] = []
    red_flags_changed = already_scored = 0
    stale: list[str] = []
    first_results: dict[str, str] = {}
    missing: list[str] = []
    engine_failed: list[str] = []
    for start in range(0, len(ids), PREVIEW_BATCH):
        batch = ids[start : start + PREVIEW_BATCH]
        with sessions() as session:
            rows = repository.assessments_with_current_result(session, batch)
            done = repository.assessment_ids_with_result_for_version(
                session, batch, ruleset.version
            )
        found = {assessment.id for assessment, _ in rows}
        missing.extend(assessment_id for assessment_id in batch if assessment_id not in found)
        for assessment, current in rows:
            same_version = current is not None and current.ruleset_version == ruleset.version
            if assessment.id in done and not same_version:
                already_scored += 1
                continue
            try:
                result = score_stored_report(ruleset, assessment)
            except Exception:
                # A re-score would stop on this report; say which, and go on with the others.
                engine_failed.append(assessment.id)
                continue
            if assessment.id in done:
                assert current is not None  # same_version
                already_scored += 1
                same_flags = _red_flag_ids(current.result) == _red_flag_ids(result)
                if current.triage_level != result["triage"] or not same_flags:
                    stale.append(assessment.id)
                continue
            if current is None:
                first_results[assessment.id] = result["triage"]
                continue
            before, after = current.triage_level, result["triage"]
            matrix[before, after] += 1
            from_versions[current.ruleset_version] += 1
            old_flags, new_flags = _red_flag_ids(current.result), _red_flag_ids(result)
            if before == after:
                red_flags_changed += old_flags != new_flags
                continue
            changes.append(
                LevelChange(
                    assessment_id=assessment.id,
                    from_level=before,
                    to_level=after,
                    from_version=current.ruleset_version,
                    direction=direction(before, after),
                    red_flags_added=tuple(sorted(new_flags - old_flags)),
                    red_flags_removed=tuple(sorted(old_flags - new_flags)),
                )
            )
    changes.sort(
        key=lambda c: (
            c.direction != "down",
            -abs(LEVEL_RANK[c.to_level] - LEVEL_RANK[c.from_level]),
            c.assessment_id,
        )
    )
    levels = _levels(level for pair in matrix for level in pair)
    return RescorePreview(
        ruleset_version=ruleset.version,
        compared=sum(matrix.values()),
        changed=len(changes),
        up=sum(1 for c in changes if c.direction == "up"),
        down=sum(1 for c in changes if c.direction == "down"),
        matrix={before: {after: matrix[before, after] for after in levels} for before in levels},
        from_versions=dict(sorted(from_versions.items())),
        changes=tuple(changes),
        red_flags_changed=red_flags_changed,
        already_scored=already_scored,
        stale_under_same_version=tuple(stale),
        first_results=first_results,
        missing=tuple(missing),
        engine_failed=tuple(engine_failed),
    )


def _red_flag_ids(result: dict[str, Any]) -> set[str]:
    return {flag["id"] for flag in result.get("red_flags", [])}


def _levels(seen: Iterable[str]) -> list[str]:
    """The five levels, most urgent first, and any other level a stored result holds."""
    return list(TRIAGE_LEVELS) + sorted(set(seen) - set(TRIAGE_LEVELS))


def describe_preview(preview: RescorePreview, listed: int = LISTED_CHANGES) -> str:
    """The dry run's text output: counts, the from -> to matrix and the first `listed` changes."""
    new = preview.ruleset_version
    versions = ", ".join(f"{v} ({n})" for v, n in preview.from_versions.items()) or "-"
    lines = [
        f"dry run: nothing was written; rule set {new} compared with the current results",
        f"compared: {preview.compared} (current results scored under: {versions}; new: {new})",
        f"level would change: {preview.changed} "
        f"({preview.up} up, more urgent; {preview.down} down, less urgent); "
        f"unchanged: {preview.compared - preview.changed}",
        f"same level, different red flags: {preview.red_flags_changed}",
        f"already scored under {new} (a re-score leaves them as they are): "
        f"{preview.already_scored}",
    ]
    if preview.stale_under_same_version:
        lines += [
            f"warning: {len(preview.stale_under_same_version)} result(s) stored under {new} "
            f"differ from what {new} gives now",
            "  (the rule files changed without a version bump; a re-score will not apply it):",
            *(f"  {assessment_id}" for assessment_id in preview.stale_under_same_version),
        ]
    if preview.first_results:
        lines.append(
            f"no current result, a re-score gives the first: {len(preview.first_results)}: "
            + " ".join(f"{i} -> {level}" for i, level in preview.first_results.items())
        )
    if preview.missing:
        lines.append(f"no such assessment: {' '.join(preview.missing)}")
    if preview.engine_failed:
        lines.append(
            f"the engine failed on {len(preview.engine_failed)} report(s): "
            + " ".join(preview.engine_failed)
        )
    lines += ["", "level changes (rows: current level, columns: level after a re-score):"]
    lines += _matrix_lines(preview.matrix)
    if preview.changes:
        shown = preview.changes[:listed] if listed > 0 else preview.changes
        lines += [
            "",
            f"changes, less urgent first ({len(shown)} of {len(preview.changes)}"
            + ("; --json lists all" if len(shown) < len(preview.changes) else "")
            + "):",
        ]
        lines += [_change_line(change) for change in shown]
    return "\n".join(lines)


def _matrix_lines(matrix: dict[str, dict[str, int]]) -> list[str]:
    levels = list(matrix)
    first = max(len("from \\ to"), *(len(level) for level in levels))
    header = "from \\ to".ljust(first) + "".join(f"  {level}" for level in levels)
    rows = [
        level.ljust(first)
        + "".join(
            f"  {str(count or '.').rjust(len(after))}" for after, count in matrix[level].items()
        )
        for level in levels
    ]
    return [header, *rows]


def _change_line(change: LevelChange) -> str:
    flags = [f"+{flag}" for flag in change.red_flags_added]
    flags += [f"-{flag}" for flag in change.red_flags_removed]
    return (
        f"{change.assessment_id}  {change.from_level} -> {change.to_level}  {change.direction}"
        f"  (was {change.from_version})  red flags: {' '.join(flags) or 'same'}"
    )


def rescore(
    assessment_ids: list[str] | None,
    *,
    all_assessments: bool = False,
    dry_run: bool = False,
    as_json: bool = False,
) -> int:
    """Re-score the given (or all scored) assessments, or with `dry_run` only say what that
    would change; print a summary; return an exit code."""
    sessions = make_session_factory(make_engine(Settings.from_env().database_url))
    ruleset = load_ruleset()
    if dry_run:
        return _dry_run(
            sessions, ruleset, None if all_assessments else assessment_ids or [], as_json
        )
    if all_assessments:
        with sessions() as session:
            assessment_ids = repository.scored_assessment_ids(session)
    outcomes: Counter[str] = Counter()
    directions: Counter[Direction] = Counter()
    for assessment_id in assessment_ids or []:
        with sessions() as session:
            before = repository.current_result(session, assessment_id)
            before_level = before.triage_level if before else None
        outcome = score_assessment(sessions, ruleset, assessment_id, rescore=True)
        outcomes[outcome.outcome] += 1
        if (
            outcome.outcome == "scored"
            and before_level
            and outcome.triage_level
            and before_level != outcome.triage_level
        ):
            directions[direction(before_level, outcome.triage_level)] += 1
            print(f"{assessment_id}: {before_level} -> {outcome.triage_level}")
        with transaction(sessions) as session:
            assessment = repository.get_assessment_for_work(session, assessment_id)
            repository.record_audit(
                session,
                # In the log of the tenant whose assessment it is.
                tenant_id=assessment.tenant_id if assessment is not None else None,
                actor=ACTOR,
                action="assessment.rescore",
                assessment_id=assessment_id,
                detail=f"ruleset {ruleset.version}: {outcome.outcome}",
            )
    print(
        f"ruleset {ruleset.version}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        + f"; level changed for {directions['up'] + directions['down']}"
        + f" ({directions['up']} up, more urgent; {directions['down']} down, less urgent)"
    )
    return 1 if outcomes.get("missing") else 0


def _dry_run(
    sessions: sessionmaker[Session],
    ruleset: RuleSet,
    assessment_ids: list[str] | None,
    as_json: bool,
) -> int:
    preview = preview_rescore(sessions, ruleset, assessment_ids)
    with transaction(sessions) as session:
        # One row for the whole run, counts only: it read reports but changed nothing.
        repository.record_audit(
            session,
            tenant_id=None,  # one row for a run across every tenant
            actor=ACTOR,
            action="assessment.rescore_preview",
            detail=(
                f"ruleset {ruleset.version} (dry run): compared {preview.compared}, "
                f"level changes {preview.changed} (up {preview.up}, down {preview.down}), "
                f"already scored {preview.already_scored}, missing {len(preview.missing)}"
            ),
        )
    print(json.dumps(preview.as_dict(), indent=2) if as_json else describe_preview(preview))
    return 1 if preview.missing or preview.engine_failed else 0

"""The rule engine's scoring as it was before it was optimised: a slow, plain oracle for the tests.

`reference_score(ruleset, report)` follows the straightforward code of commit 5118b02 step by
step (with rule set 2026.12.1's per-pattern safety screens and medicine changes written out as
plainly as CLINICAL.md rule 7 words them) - the careful report reader, class mapping without
caches, `condition.evaluate` (the tree
interpreter) for every condition, a renderer call per `because` token, sorting the red flags by
key - reading only the rule set's data (rules, tokens, tables, bands, advice), never its compiled
closures, generated renderers or caches. The optimised `RuleSet.score` must return the same dict,
key order included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from services.rules.engine.because import Because
from services.rules.engine.condition import evaluate
from services.rules.engine.facts import _careful_facts
from services.rules.engine.ruleset import Rule, RuleSet
from services.rules.engine.synonyms import SynonymTable
from shared.vocabulary import LEVEL_RANK, SAFETY_QUESTIONS

Facts = dict[str, Any]
Classes = dict[str, Mapping[str, tuple[str, ...]]]


def _frozen(mapping: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {key: tuple(mapping[key]) for key in sorted(mapping)}


def _by_kind(table: SynonymTable, entries: tuple[Any, ...]) -> tuple[Any, ...]:
    by_class, unknown = table.classify(entries)
    tags: dict[str, list[str]] = {}
    implied: dict[str, list[str]] = {}
    for cls, texts in by_class.items():
        entry = table.classes[cls]
        for tag in entry.tags:
            tags.setdefault(tag, []).extend(texts)
        for implied_class in entry.implies:
            implied.setdefault(implied_class, []).extend(texts)
    return _frozen(by_class), tuple(unknown), _frozen(tags), _frozen(implied)


def _entries(values: list[Any] | None) -> tuple[Any, ...]:
    if not values:
        return ()
    return tuple(v if isinstance(v, str) else str(v) for v in values)


def reference_facts(ruleset: RuleSet, report: dict[str, Any]) -> tuple[Facts, Classes, Any]:
    """All facts (derived ones by the tree interpreter), the class sources and the reading."""
    facts, reading = _careful_facts(report)
    medications = report.get("medications")
    conditions = report.get("conditions")
    if medications is not None and type(medications) is not list:
        reading.fields.append("medications")
        medications = None
    if conditions is not None and type(conditions) is not list:
        reading.fields.append("conditions")
        conditions = None
    taken = list(_entries(medications))
    recent: list[str] = []
    changes = report.get("medication_changes")
    if changes is not None and type(changes) is not list:
        reading.fields.append("medication_changes")
    for index, change in enumerate(changes if type(changes) is list else []):
        ok = type(change) is dict
        name = change.get("name") if ok else None
        kind = change.get("change") if ok else None
        days = change.get("days_ago") if ok else None
        if (
            not isinstance(name, str)
            or kind not in ("started", "dose_increased", "stopped")
            or type(days) not in (int, float)
            or days != days
            or days < 0
        ):
            reading.fields.append(f"medication_changes.{index}")
            continue
        if kind != "stopped":
            if name not in taken:
                taken.append(name)
            if days <= ruleset.recent_medicine_change_days and name not in recent:
                recent.append(name)
    by_medication, unknown_medications, medication_tags, implied = _by_kind(
        ruleset.medications, tuple(taken)
    )
    recent_classes, _, recent_tags, _ = _by_kind(ruleset.medications, tuple(recent))
    by_condition, unknown_conditions, condition_tags, _ = _by_kind(
        ruleset.conditions, _entries(conditions)
    )
    conditions_all = {cls: list(entries) for cls, entries in by_condition.items()}
    tags = {tag: list(entries) for tag, entries in medication_tags.items()}
    for cls, entries in implied.items():
        known = conditions_all.setdefault(cls, [])
        known.extend(e for e in entries if e not in known)
        for tag in ruleset.conditions.classes[cls].tags:
            tags.setdefault(tag, []).extend(entries)
    for tag, entries in condition_tags.items():
        tags.setdefault(tag, []).extend(entries)
    sources: Classes = {
        "medications": by_medication,
        "conditions": _frozen(conditions_all),
        "tags": _frozen(tags),
    }
    facts["medication_classes"] = list(by_medication)
    facts["condition_classes"] = sorted(conditions_all)
    facts["risk_tags"] = sorted(tags)
    facts["recently_started_classes"] = list(recent_classes)
    facts["recently_started_tags"] = list(recent_tags)
    for derived in ruleset.derived:
        facts[derived.id] = bool(evaluate(derived.condition, facts))
    unknown = {"medications": unknown_medications, "conditions": unknown_conditions}
    return facts, sources, (reading, unknown)


def _number_text(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _render_one(item: Because, facts: Facts, sources: Classes) -> str | None:
    name = item.name
    if item.kind == "flag":
        return name if facts[name] is True else None
    if item.kind in ("medication", "condition", "risk"):
        entries = sources[{"risk": "tags"}.get(item.kind, item.kind + "s")].get(name)
        return f"{item.kind}:{name} ({', '.join(entries)})" if entries else None
    if item.kind == "complaint":
        return item.token if name in facts["complaints"] else None
    value = facts[name]
    if item.kind == "tristate":
        return None if value is None else f"{name}={str(value).lower()}"
    if item.kind == "number":
        return None if value is None else f"{name}={_number_text(value)}"
    if item.kind == "enum":
        return None if value in (None, "none", "unknown") else f"{name}={value}"
    return f"{name}={','.join(value)}" if value else None


def _render(items: tuple[Because, ...], facts: Facts, sources: Classes) -> list[str]:
    rendered: list[str] = []
    for item in items:
        text = _render_one(item, facts, sources)
        if item.kind == "flag":
            if text is not None:
                rendered.append(text)
        elif text is not None and text not in rendered:
            rendered.append(text)
    return rendered


Fired = tuple[Rule, str, list[str], list[str]]  # rule, final level, because, escalation sources


def _fire(ruleset: RuleSet, facts: Facts, sources: Classes) -> list[Fired]:
    fired = []
    for rule in ruleset.rules:
        if facts["resolved"] and not rule.reads_resolved_episode:
            continue
        if not evaluate(rule.condition, facts):
            continue
        level = rule.level
        because = _render(rule.because, facts, sources)
        escalation_sources: list[str] = []
        for escalation in rule.escalations:
            if evaluate(escalation.condition, facts):
                if LEVEL_RANK[escalation.level] > LEVEL_RANK[level]:
                    level = escalation.level
                for reason in _render(escalation.because, facts, sources):
                    if reason not in because:
                        because.append(reason)
                if escalation.source and escalation.source not in escalation_sources:
                    escalation_sources.append(escalation.source)
        fired.append((rule, level, because, escalation_sources))
    return fired


def reference_score(ruleset: RuleSet, report: dict[str, Any]) -> dict[str, Any]:
    """What `ruleset.score(report)` returned before the optimisation."""
    facts, sources, (reading, unknown) = reference_facts(ruleset, report)
    fired = _fire(ruleset, facts, sources)
    screen = ruleset.general_screen
    assert set(screen) == set(SAFETY_QUESTIONS)
    unanswered = [q for q in screen if facts[q] is None]
    patterns = []
    screened: dict[str, str] = {}
    if fired:
        level = max((level for _, level, _, _ in fired), key=LEVEL_RANK.__getitem__)
    else:
        matched = [p for p in ruleset.benign_patterns if evaluate(p.condition, facts)]
        # Rule 7: no "yes" to the general screen or to a matching pattern's key questions, and
        # a pattern whose key questions, or the whole general screen, are all answered "no".
        asked = list(screen) + [q for p in matched for q in p.key_questions]
        any_yes = any(facts[q] is True for q in asked)
        general_no = all(facts[q] is False for q in screen)
        for p in matched:
            if all(facts[q] is False for q in p.key_questions):
                screened[p.id] = "key_questions"
            elif general_no and not any(facts[q] is True for q in p.key_questions):
                screened[p.id] = "general_screen"
        if any_yes:
            screened = {}
        patterns = [p for p in matched if p.id in screened]
        level = "self_care" if screened else "consultation"
        if level == "self_care":
            unanswered = []
        else:
            unanswered = []
            for q in [*(k for p in matched for k in p.key_questions), *screen]:
                if facts[q] is None and q not in unanswered:
                    unanswered.append(q)
    risks = [m for m in ruleset.risk_modifiers if evaluate(m.condition, facts)]

    low, high = ruleset.priority_bands[level]
    score = float(sum(m.weight for m in risks))
    for rule, rule_level, _, _ in fired:
        score += rule.weight if rule_level == level else rule.weight * 0.25
    priority = int(
        low + math.floor((high - low) * (1.0 - math.exp(-score / ruleset.priority_scale)))
    )

    flags = []
    for rule, rule_level, because, escalation_sources in sorted(
        fired, key=lambda f: (-LEVEL_RANK[f[1]], -f[0].weight, f[0].id)
    ):
        source = rule.source
        if escalation_sources:
            source = f"{source}; escalation: {'; '.join(escalation_sources)}"
        flag: dict[str, Any] = {
            "id": rule.id,
            "title": rule.title,
            "level": rule_level,
            "kind": rule.kind,
            "because": because,
            "source": source,
        }
        if rule.note:
            flag["note"] = rule.note
        if rule.aliases:
            flag["aliases"] = list(rule.aliases)
        flags.append(flag)

    advice = list(ruleset.level_advice[level])
    if level == "self_care":
        for pattern in patterns:
            advice.extend(a for a in pattern.advice if a not in advice)
        advice.extend(a for a in ruleset.self_care_general if a not in advice)
        advice.extend(ruleset.safety_net)

    return {
        "triage": level,
        "priority": priority,
        "red_flags": flags,
        "unanswered_safety_questions": unanswered,
        "considerations": [c.text for c in ruleset.considerations if evaluate(c.condition, facts)],
        "advice": advice,
        "ruleset_version": ruleset.version,
        "benign_patterns": [p.id for p in patterns],
        "safety_screen": screened,
        "risk_modifiers": [m.id for m in risks],
        "medication_classes": {k: list(v) for k, v in sources["medications"].items()},
        "condition_classes": {k: list(v) for k, v in sources["conditions"].items()},
        "not_understood": {
            "medications": list(unknown["medications"]),
            "conditions": list(unknown["conditions"]),
            "findings": reading.findings,
            "fields": reading.fields,
        },
    }

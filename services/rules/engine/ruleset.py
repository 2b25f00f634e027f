"""The loaded rule set and how it scores a report (CLINICAL.md "How rules combine").

Pure: no I/O after loading, deterministic, JSON-serialisable output. The same `RuleSet` can be
re-bound to a JsonLogic interpreter (`with_interpreter`) so the benchmark and tests can compare the
compiled closures with published interpreters on identical data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple

from services.rules.engine.condition import Facts, Test, evaluate, unmet_parts
from services.rules.engine.facts import FactType, ReportReading, base_facts
from services.rules.engine.synonyms import SynonymTable
from shared.vocabulary import LEVEL_RANK, SAFETY_QUESTIONS

DEFAULT_LEVEL: Final = "consultation"  # CLINICAL.md rule 5
SELF_CARE: Final = "self_care"
_LOWER_LEVEL_SHARE: Final = 0.25  # lower-level rules still order patients, at a quarter weight


@dataclass(frozen=True)
class Because:
    """One fact a rule explains itself with, rendered only when it is present.

    `flag` names a yes/no fact rendered as its bare name when true (the common case, handled
    without a call); anything else goes through `render`.
    """

    token: str
    render: Callable[[Facts, Sources], str | None]
    flag: str | None = None


@dataclass(frozen=True)
class Escalation:
    """A raised level inside a rule (the table's "(emergency_ambulance if ...)")."""

    level: str
    condition: Any
    test: Test
    because: tuple[Because, ...]
    source: str | None


@dataclass(frozen=True)
class Rule:
    """One red flag or combination, as read from a rule file."""

    id: str
    title: str
    level: str
    weight: int
    condition: Any
    test: Test
    because: tuple[Because, ...]
    source: str
    kind: str = "red_flag"
    note: str | None = None
    escalations: tuple[Escalation, ...] = ()
    reads_resolved_episode: bool = False
    no_downgrade: bool = False
    aliases: tuple[str, ...] = ()
    file: str = ""


@dataclass(frozen=True)
class NamedCondition:
    """A derived fact, benign pattern, risk modifier or consideration."""

    id: str
    condition: Any
    test: Test
    title: str = ""
    weight: int = 0
    source: str = ""
    text: str = ""
    advice: tuple[str, ...] = ()


class Sources(NamedTuple):
    """Which free-text entries produced each class, and what was not understood.

    The mappings are shared through a cache: read them, never change them.
    """

    medications: Mapping[str, tuple[str, ...]]
    unknown_medications: tuple[str, ...]
    conditions: Mapping[str, tuple[str, ...]]
    tags: Mapping[str, tuple[str, ...]]
    unknown_conditions: tuple[str, ...]
    reading: ReportReading


_Classes = tuple[
    Mapping[str, tuple[str, ...]],
    tuple[str, ...],
    Mapping[str, tuple[str, ...]],
    Mapping[str, tuple[str, ...]],
    tuple[str, ...],
    tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
]


# One kind's classes: {class: entries}, unknown entries, {tag: entries}, {implied class: entries}.
_KindClasses = tuple[
    Mapping[str, tuple[str, ...]],
    tuple[str, ...],
    Mapping[str, tuple[str, ...]],
    Mapping[str, tuple[str, ...]],
]


def _by_kind(table: SynonymTable, entries: tuple[Any, ...]) -> _KindClasses:
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


def _frozen(mapping: dict[str, list[str]]) -> Mapping[str, tuple[str, ...]]:
    # Sorted for deterministic output; tuples because the cache shares them between reports.
    return {key: tuple(mapping[key]) for key in sorted(mapping)}


def _entries(values: list[Any] | None) -> tuple[Any, ...]:
    # Hashable for the cache; unhashable junk (a dict in the list) becomes its text.
    if not values:
        return ()
    return tuple(v if isinstance(v, str) else str(v) for v in values)


class Fired(NamedTuple):
    """A rule that fired: its final level (after escalations) and rendered reasons."""

    rule: Rule
    level: str
    because: list[str]
    escalation_sources: list[str]


@dataclass(frozen=True)
class RuleSet:
    """A validated, compiled rule set. Build it with `load_ruleset()`."""

    version: str
    derived: tuple[NamedCondition, ...]
    derive: Callable[[Facts], None]
    rules: tuple[Rule, ...]
    select_rules: Callable[[Facts], list[int]]
    benign_patterns: tuple[NamedCondition, ...]
    risk_modifiers: tuple[NamedCondition, ...]
    considerations: tuple[NamedCondition, ...]
    select_considerations: Callable[[Facts], list[int]]
    medications: SynonymTable
    conditions: SynonymTable
    catalogue: dict[str, FactType]
    priority_bands: dict[str, tuple[int, int]]
    priority_scale: float
    level_advice: dict[str, tuple[str, ...]]
    self_care_general: tuple[str, ...]
    safety_net: tuple[str, ...]
    red_flag_findings: frozenset[str]
    interpreter: str = "compiled"

    # -- facts ------------------------------------------------------------------------------

    def facts(self, report: dict[str, Any]) -> tuple[Facts, Sources]:
        """All facts a condition may read (report, classes, derived) and their provenance."""
        facts, reading = base_facts(report)
        medications = report.get("medications")
        conditions = report.get("conditions")
        if medications is not None and type(medications) is not list:
            reading.fields.append("medications")
            medications = None
        if conditions is not None and type(conditions) is not list:
            reading.fields.append("conditions")
            conditions = None
        classes = self._classes(_entries(medications), _entries(conditions))
        sources = Sources(*classes[:5], reading=reading)
        # Fresh lists per report: the cached ones are shared (and JsonLogic's `in` wants lists).
        medication_classes, condition_classes, risk_tags = classes[5]
        facts["medication_classes"] = list(medication_classes)
        facts["condition_classes"] = list(condition_classes)
        facts["risk_tags"] = list(risk_tags)
        self.derive(facts)
        return facts, sources

    @functools.cached_property
    def _classes(self) -> Callable[[tuple[Any, ...], tuple[Any, ...]], _Classes]:
        # Per rule set, cached on the exact lists: the same medicine lists recur across reports.
        return functools.lru_cache(maxsize=65536)(self._classify)

    @functools.cached_property
    def _medication_classes(self) -> Callable[[tuple[Any, ...]], _KindClasses]:
        # Medicines and conditions are also cached apart: far fewer distinct lists than pairs.
        return functools.lru_cache(maxsize=65536)(
            lambda entries: _by_kind(self.medications, entries)
        )

    @functools.cached_property
    def _condition_classes(self) -> Callable[[tuple[Any, ...]], _KindClasses]:
        return functools.lru_cache(maxsize=65536)(
            lambda entries: _by_kind(self.conditions, entries)
        )

    def _classify(self, medications: tuple[Any, ...], conditions: tuple[Any, ...]) -> _Classes:
        by_medication, unknown_medications, medication_tags, implied = self._medication_classes(
            medications
        )
        by_condition, unknown_conditions, condition_tags, _ = self._condition_classes(conditions)
        conditions_all = {cls: list(entries) for cls, entries in by_condition.items()}
        tags = {tag: list(entries) for tag, entries in medication_tags.items()}
        for cls, entries in implied.items():
            known = conditions_all.setdefault(cls, [])
            known.extend(e for e in entries if e not in known)
            for tag in self.conditions.classes[cls].tags:
                tags.setdefault(tag, []).extend(entries)
        for tag, entries in condition_tags.items():
            tags.setdefault(tag, []).extend(entries)
        return (
            by_medication,
            unknown_medications,
            _frozen(conditions_all),
            _frozen(tags),
            unknown_conditions,
            (tuple(by_medication), tuple(sorted(conditions_all)), tuple(sorted(tags))),
        )

    # -- scoring ----------------------------------------------------------------------------

    def _fire(self, facts: Facts, sources: Sources) -> list[Fired]:
        fired: list[Fired] = []
        rules = self.rules
        for index in self.select_rules(facts):
            rule = rules[index]
            level = rule.level
            because = _render(rule.because, facts, sources)
            escalation_sources: list[str] = []
            for escalation in rule.escalations:
                if escalation.test(facts):
                    if LEVEL_RANK[escalation.level] > LEVEL_RANK[level]:
                        level = escalation.level
                    for reason in _render(escalation.because, facts, sources):
                        if reason not in because:
                            because.append(reason)
                    if escalation.source and escalation.source not in escalation_sources:
                        escalation_sources.append(escalation.source)
            fired.append(Fired(rule, level, because, escalation_sources))
        return fired

    def score(self, report: dict[str, Any]) -> dict[str, Any]:
        """Triage one v1 symptom report: pure and deterministic (result keys: docs/RULES.md)."""
        facts, sources = self.facts(report)
        fired = self._fire(facts, sources)
        unanswered = [q for q in SAFETY_QUESTIONS if facts[q] is None]
        matched_patterns: list[NamedCondition] = []
        if fired:
            level = max((f.level for f in fired), key=LEVEL_RANK.__getitem__)
        else:
            matched_patterns = [p for p in self.benign_patterns if p.test(facts)]
            # CLINICAL.md rule 7: self_care only with a benign pattern and every safety answer "no".
            all_no = all(facts[q] is False for q in SAFETY_QUESTIONS)
            level = SELF_CARE if matched_patterns and all_no else DEFAULT_LEVEL
        risks = [m for m in self.risk_modifiers if m.test(facts)]
        return {
            "triage": level,
            "priority": self._priority(level, fired, risks),
            "red_flags": _red_flags(fired),
            "unanswered_safety_questions": unanswered,
            "considerations": [
                self.considerations[i].text for i in self.select_considerations(facts)
            ],
            "advice": self._advice(level, matched_patterns),
            "ruleset_version": self.version,
            "benign_patterns": [p.id for p in matched_patterns] if level == SELF_CARE else [],
            "risk_modifiers": [m.id for m in risks],
            "medication_classes": {k: list(v) for k, v in sources.medications.items()},
            "condition_classes": {k: list(v) for k, v in sources.conditions.items()},
            "not_understood": {
                "medications": list(sources.unknown_medications),
                "conditions": list(sources.unknown_conditions),
                "findings": sources.reading.findings,
                "fields": sources.reading.fields,
            },
        }

    def _priority(self, level: str, fired: list[Fired], risks: list[NamedCondition]) -> int:
        low, high = self.priority_bands[level]
        score = float(sum(m.weight for m in risks))
        for f in fired:
            score += f.rule.weight if f.level == level else f.rule.weight * _LOWER_LEVEL_SHARE
        # Saturating: more weight always orders higher, and never leaves the level's band.
        return int(low + math.floor((high - low) * (1.0 - math.exp(-score / self.priority_scale))))

    def _advice(self, level: str, patterns: list[NamedCondition]) -> list[str]:
        advice = list(self.level_advice[level])
        if level == SELF_CARE:
            for pattern in patterns:
                advice.extend(a for a in pattern.advice if a not in advice)
            advice.extend(a for a in self.self_care_general if a not in advice)
            advice.extend(self.safety_net)
        return advice

    # -- other evaluators -------------------------------------------------------------------

    def with_interpreter(self, name: str) -> RuleSet:
        """The same rules evaluated by an interpreter instead of compiled closures.

        `name`: "tree" (this package's un-compiled interpreter), "qubit" (json-logic-qubit) or
        "panzi" (panzi-json-logic). Used by the benchmark and the agreement tests.
        """
        interpret = _interpreter(name)

        def bind(item: Any) -> Any:
            return replace(item, test=interpret(item.condition))

        rules = tuple(
            replace(bind(rule), escalations=tuple(bind(e) for e in rule.escalations))
            for rule in self.rules
        )
        derived = tuple(bind(d) for d in self.derived)
        considerations = tuple(bind(c) for c in self.considerations)

        def derive(facts: Facts) -> None:
            for item in derived:
                facts[item.id] = bool(item.test(facts))

        def select_rules(facts: Facts) -> list[int]:
            # CLINICAL.md rule 4: a resolved episode is read only by rules that say so.
            resolved = facts["resolved"]
            return [
                i
                for i, rule in enumerate(rules)
                if (rule.reads_resolved_episode or not resolved) and rule.test(facts)
            ]

        def select_considerations(facts: Facts) -> list[int]:
            return [i for i, c in enumerate(considerations) if c.test(facts)]

        return replace(
            self,
            derived=derived,
            derive=derive,
            rules=rules,
            select_rules=select_rules,
            select_considerations=select_considerations,
            benign_patterns=tuple(bind(p) for p in self.benign_patterns),
            risk_modifiers=tuple(bind(m) for m in self.risk_modifiers),
            considerations=considerations,
            interpreter=name,
        )

    # -- explain ----------------------------------------------------------------------------

    def explain(self, report: dict[str, Any]) -> list[str]:
        """The level and why, rule by rule, for clinicians reviewing the logic."""
        result = self.score(report)
        facts, sources = self.facts(report)
        lines = [
            f"Triage: {result['triage']} (priority {result['priority']}) - rule set {self.version}",
            "",
            "Facts derived from the report:",
        ]
        lines.extend(f"  {d.id} = {str(facts[d.id]).lower()}" for d in self.derived if facts[d.id])
        for kind, entries in (
            ("medication", sources.medications),
            ("condition", sources.conditions),
        ):
            for cls, texts in sorted(entries.items()):
                lines.append(f"  {kind}:{cls} <- {', '.join(texts)}")
        understood = result["not_understood"]
        for key in ("medications", "conditions", "findings", "fields"):
            if understood[key]:
                lines.append(f"  NOT UNDERSTOOD {key}: {', '.join(understood[key])}")
        if facts["resolved"]:
            lines.append(
                f"  resolved {facts['resolved_hours_ago']} h ago: "
                "only stroke/TIA and low-blood-sugar rules read it"
            )
        lines += ["", "Rules:"]
        fired = {f.rule.id: f for f in self._fire(facts, sources)}
        for rule in self.rules:
            head = f"  {rule.id} [{rule.level}, weight {rule.weight}]"
            if rule.id in fired:
                f = fired[rule.id]
                raised = f" -> escalated to {f.level}" if f.level != rule.level else ""
                lines.append(f"{head} FIRED{raised}: {rule.title}")
                lines.append(f"      because: {', '.join(f.because) or '(condition met)'}")
                lines.append(f"      source: {rule.source}")
            elif facts["resolved"] and not rule.reads_resolved_episode:
                lines.append(f"{head} not read: the episode has resolved")
            else:
                unmet = "; ".join(unmet_parts(rule.condition, facts))
                lines.append(f"{head} not fired: unmet {unmet}")
        lines += ["", "Outcome:"]
        if fired:
            lines.append(
                f"  most urgent fired rule sets the level: {result['triage']} (CLINICAL.md rule 1)"
            )
        else:
            lines.append("  no rule fired")
            for pattern in self.benign_patterns:
                if evaluate(pattern.condition, facts):
                    lines.append(f"  benign pattern {pattern.id} matches: {pattern.title}")
            answered_no = [q for q in SAFETY_QUESTIONS if facts[q] is False]
            if result["triage"] == SELF_CARE:
                lines.append("  all safety questions answered no -> self_care (CLINICAL.md rule 7)")
            else:
                lines.append(
                    f"  default consultation (CLINICAL.md rules 5 and 7): "
                    f"{len(answered_no)}/{len(SAFETY_QUESTIONS)} safety questions answered no"
                )
        if result["unanswered_safety_questions"]:
            lines.append(f"  ask next: {', '.join(result['unanswered_safety_questions'])}")
        if result["risk_modifiers"]:
            lines.append(f"  risk modifiers (priority only): {', '.join(result['risk_modifiers'])}")
        return lines


def _render(because: tuple[Because, ...], facts: Facts, sources: Sources) -> list[str]:
    rendered: list[str] = []
    for item in because:
        if item.flag is not None:
            if facts[item.flag] is True:
                rendered.append(item.flag)
            continue
        text = item.render(facts, sources)
        if text is not None and text not in rendered:
            rendered.append(text)
    return rendered


def _red_flags(fired: list[Fired]) -> list[dict[str, Any]]:
    ordered = sorted(fired, key=lambda f: (-LEVEL_RANK[f.level], -f.rule.weight, f.rule.id))
    flags: list[dict[str, Any]] = []
    for f in ordered:
        source = f.rule.source
        if f.escalation_sources:
            source = f"{source}; escalation: {'; '.join(f.escalation_sources)}"
        flag: dict[str, Any] = {
            "id": f.rule.id,
            "title": f.rule.title,
            "level": f.level,
            "kind": f.rule.kind,
            "because": f.because,
            "source": source,
        }
        if f.rule.note:
            flag["note"] = f.rule.note
        if f.rule.aliases:
            flag["aliases"] = list(f.rule.aliases)
        flags.append(flag)
    return flags


def _interpreter(name: str) -> Callable[[Any], Test]:
    if name == "tree":
        return lambda condition: lambda facts: evaluate(condition, facts)
    if name == "qubit":
        # json-logic-qubit and panzi-json-logic both install a `json_logic` package: qubit owns
        # `json_logic/__init__`, panzi's evaluator lives in `json_logic.apply`.
        from json_logic import jsonLogic

        return lambda condition: lambda facts: jsonLogic(condition, facts)
    if name == "panzi":
        from json_logic.apply import apply

        return lambda condition: lambda facts: apply(condition, facts)
    raise ValueError(f"unknown interpreter {name!r} (tree, qubit, panzi)")

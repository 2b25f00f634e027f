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

from services.rules.engine.because import Because, RedFlag, Renderer
from services.rules.engine.condition import Facts, Test, evaluate, unmet_parts
from services.rules.engine.facts import FactType, ReportReading, base_facts
from services.rules.engine.synonyms import SynonymTable
from shared.vocabulary import LEVEL_RANK, SAFETY_QUESTIONS

DEFAULT_LEVEL: Final = "consultation"  # CLINICAL.md rule 5
SELF_CARE: Final = "self_care"
_LOWER_LEVEL_SHARE: Final = 0.25  # lower-level rules still order patients, at a quarter weight
_LEVEL_BY_RANK: Final = {rank: level for level, rank in LEVEL_RANK.items()}
_TEXT: Final = frozenset({str})


@dataclass(frozen=True)
class Escalation:
    """A raised level inside a rule (the table's "(emergency_ambulance if ...)")."""

    level: str
    condition: Any
    test: Test
    because: tuple[Because, ...]
    render_because: Renderer
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
    # The rule's red-flag entry for a report, `because` rendered; before escalations.
    red_flag: RedFlag
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
    # Benign patterns only: the pattern's own safety questions, most dangerous first (rule 7 a).
    key_questions: tuple[str, ...] = ()


class Sources(NamedTuple):
    """Which free-text entries produced each class or tag, and which entries matched nothing.

    Cached per pair of medication and condition lists and shared between reports: read it,
    never change it.
    """

    medications: Mapping[str, tuple[str, ...]]
    unknown_medications: tuple[str, ...]
    conditions: Mapping[str, tuple[str, ...]]
    tags: Mapping[str, tuple[str, ...]]
    unknown_conditions: tuple[str, ...]
    # The values of the facts medication_classes, condition_classes and risk_tags (sorted).
    class_facts: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


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
    # A plain loop: measured faster than a comprehension for these one- to three-key mappings.
    frozen: dict[str, tuple[str, ...]] = {}
    for key in sorted(mapping):
        frozen[key] = tuple(mapping[key])
    return frozen


def _entries(values: list[Any] | None) -> tuple[Any, ...]:
    # Hashable for the cache; unhashable junk (a dict in the list) becomes its text.
    if not values:
        return ()
    entries = tuple(values)
    if _TEXT.issuperset(map(type, entries)):  # the contract's shape: only texts
        return entries
    return tuple(v if isinstance(v, str) else str(v) for v in entries)


# A fired rule: its red-flag sort key (-rank of its final level, -weight, id) and its entry.
_Fired = tuple[tuple[int, int, str], dict[str, Any]]


@dataclass(frozen=True)
class RuleSet:
    """A validated, compiled rule set. Build it with `load_ruleset()`."""

    version: str
    derived: tuple[NamedCondition, ...]
    derive: Callable[[Facts], None]
    # derive, then (select_rules, select_risk_modifiers, select_considerations), in one call;
    # it sets in the dict only the derived facts read afterwards (`because`, escalations, benign
    # patterns): `facts()` is the way to get them all
    evaluate: Callable[[Facts], tuple[list[int], ...]]
    rules: tuple[Rule, ...]
    select_rules: Callable[[Facts], list[int]]
    benign_patterns: tuple[NamedCondition, ...]
    select_benign_patterns: Callable[[Facts], list[int]]
    risk_modifiers: tuple[NamedCondition, ...]
    select_risk_modifiers: Callable[[Facts], list[int]]
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
    # CLINICAL.md rule 7 (b): the ten general safety questions, most dangerous first.
    general_screen: tuple[str, ...] = SAFETY_QUESTIONS
    # How many days a medicine started or raised (medication_changes) counts as recent.
    recent_medicine_change_days: int = 90
    interpreter: str = "compiled"

    # -- facts ------------------------------------------------------------------------------

    def facts(self, report: dict[str, Any]) -> tuple[Facts, Sources]:
        """All facts a condition may read (report, classes, derived) and their provenance."""
        facts, sources, _ = self._read(report)
        self.derive(facts)
        return facts, sources

    def _read(self, report: dict[str, Any]) -> tuple[Facts, Sources, ReportReading]:
        """The report's facts and classes (not the derived facts), and what was not read."""
        facts, reading = base_facts(report)
        medications = report.get("medications")
        conditions = report.get("conditions")
        if medications is not None and type(medications) is not list:
            reading.fields.append("medications")
            medications = None
        if conditions is not None and type(conditions) is not list:
            reading.fields.append("conditions")
            conditions = None
        changes = report.get("medication_changes")
        recent: tuple[str, ...] = ()
        taken = _entries(medications)
        if changes:  # most reports have none: keep the common path free of this work
            started, recent = _started_medicines(changes, self.recent_medicine_change_days, reading)
            # A medicine started or raised is taken now, even when the medicines list (or an
            # older copy of it) does not name it yet.
            taken = taken + tuple(name for name in started if name not in taken)
        elif changes is not None and type(changes) is not list:
            reading.fields.append("medication_changes")
        sources = self._classes(taken, _entries(conditions))
        # Fresh lists per report: the cached ones are shared (and JsonLogic's `in` wants lists).
        medication_classes, condition_classes, risk_tags = sources.class_facts
        facts["medication_classes"] = list(medication_classes)
        facts["condition_classes"] = list(condition_classes)
        facts["risk_tags"] = list(risk_tags)
        if recent:
            recent_classes, _, recent_tags, _ = self._medication_classes(recent)
            facts["recently_started_classes"] = list(recent_classes)
            facts["recently_started_tags"] = list(recent_tags)
        else:
            facts["recently_started_classes"] = []
            facts["recently_started_tags"] = []
        return facts, sources, reading

    @functools.cached_property
    def _classes(self) -> Callable[[tuple[Any, ...], tuple[Any, ...]], Sources]:
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

    def _classify(self, medications: tuple[Any, ...], conditions: tuple[Any, ...]) -> Sources:
        by_medication, unknown_medications, medication_tags, implied = self._medication_classes(
            medications
        )
        by_condition, unknown_conditions, condition_tags, _ = self._condition_classes(conditions)
        if implied or (medication_tags and condition_tags):
            merged = {cls: list(entries) for cls, entries in by_condition.items()}
            merged_tags = {tag: list(entries) for tag, entries in medication_tags.items()}
            for cls, entries in implied.items():
                known = merged.setdefault(cls, [])
                known.extend(e for e in entries if e not in known)
                for tag in self.conditions.classes[cls].tags:
                    merged_tags.setdefault(tag, []).extend(entries)
            for tag, entries in condition_tags.items():
                merged_tags.setdefault(tag, []).extend(entries)
            conditions_all, tags = _frozen(merged), _frozen(merged_tags)
        else:
            # Nothing to merge (the common case): the per-kind mappings are the answer as they
            # are, already sorted.
            conditions_all, tags = by_condition, medication_tags or condition_tags
        return Sources(
            by_medication,
            unknown_medications,
            conditions_all,
            tags,
            unknown_conditions,
            (tuple(by_medication), tuple(conditions_all), tuple(tags)),
        )

    # -- scoring ----------------------------------------------------------------------------

    def _fire(self, facts: Facts, sources: Sources, selected: list[int]) -> list[_Fired]:
        """The selected rules' red-flag entries (escalations applied), most urgent first."""
        fired: list[_Fired] = []
        rules = self.rules
        for index in selected:
            rule = rules[index]
            order, flag = rule.red_flag(facts, sources)
            if rule.escalations:
                order = _escalate(rule, flag, facts, sources)
            fired.append((order, flag))
        # Most urgent first, then weight, then id (docs/RULES.md "The result"); ids are unique,
        # so the entries themselves are never compared.
        fired.sort()
        return fired

    def score(self, report: dict[str, Any]) -> dict[str, Any]:
        """Triage one v1 symptom report: pure and deterministic (result keys: docs/RULES.md)."""
        facts, sources, reading = self._read(report)
        selected_rules, selected_risks, selected_considerations = self.evaluate(facts)
        fired = self._fire(facts, sources, selected_rules)
        screened: dict[str, str] = {}
        if fired:
            (negative_rank, _, _), _ = fired[0]
            level = _LEVEL_BY_RANK[-negative_rank]
            unanswered = [q for q in self.general_screen if facts[q] is None]
        else:
            patterns = self.benign_patterns
            matched = [patterns[i] for i in self.select_benign_patterns(facts)]
            screened, unanswered = self.safety_screen(facts, matched)
            level = SELF_CARE if screened else DEFAULT_LEVEL
        qualified = [p for p in self.benign_patterns if p.id in screened]
        modifiers = self.risk_modifiers
        risks = [modifiers[i] for i in selected_risks]
        considerations = self.considerations
        return {
            "triage": level,
            "priority": self._priority(level, fired, risks),
            "red_flags": [flag for _, flag in fired],
            "unanswered_safety_questions": unanswered,
            "considerations": [considerations[i].text for i in selected_considerations],
            "advice": self._advice(level, qualified),
            "ruleset_version": self.version,
            "benign_patterns": [p.id for p in qualified],
            "safety_screen": screened,
            "risk_modifiers": [m.id for m in risks],
            "medication_classes": _lists(sources.medications),
            "condition_classes": _lists(sources.conditions),
            "not_understood": {
                "medications": list(sources.unknown_medications),
                "conditions": list(sources.unknown_conditions),
                "findings": reading.findings,
                "fields": reading.fields,
            },
        }

    def safety_screen(
        self, facts: Facts, matched: list[NamedCondition]
    ) -> tuple[dict[str, str], list[str]]:
        """CLINICAL.md rule 7, for a report no rule fired on and the benign patterns it matches.

        Returns ({pattern id: "key_questions" | "general_screen"} for the patterns that allow
        self_care, empty when none does; the unanswered safety questions, the nurse's next
        questions: the matching patterns' missing key questions first, then the general
        screen's, each most dangerous first; empty when self_care is allowed).
        A "yes" to a general-screen question, or to a key question of any matching pattern,
        allows no self_care at all.
        """
        screen = self.general_screen
        general_all_no = True
        blocked = False
        for question in screen:
            answer = facts[question]
            if answer is not False:
                general_all_no = False
                if answer is True:
                    blocked = True
        screened: dict[str, str] = {}
        for pattern in matched:
            answers = [facts[q] for q in pattern.key_questions]
            if True in answers:
                blocked = True
            elif all(answer is False for answer in answers):
                screened[pattern.id] = "key_questions"
            elif general_all_no:
                screened[pattern.id] = "general_screen"
        if screened and not blocked:
            return screened, []
        unanswered: list[str] = []
        for pattern in matched:
            unanswered.extend(
                q for q in pattern.key_questions if facts[q] is None and q not in unanswered
            )
        unanswered.extend(q for q in screen if facts[q] is None and q not in unanswered)
        return {}, unanswered

    def _priority(self, level: str, fired: list[_Fired], risks: list[NamedCondition]) -> int:
        low, high = self.priority_bands[level]
        rank = LEVEL_RANK[level]
        score = 0.0
        for modifier in risks:
            score += modifier.weight
        for (negative_rank, negative_weight, _), _ in fired:
            weight = -negative_weight
            score += weight if -negative_rank == rank else weight * _LOWER_LEVEL_SHARE
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

        benign_patterns = tuple(bind(p) for p in self.benign_patterns)
        risk_modifiers = tuple(bind(m) for m in self.risk_modifiers)

        def select_benign_patterns(facts: Facts) -> list[int]:
            return [i for i, p in enumerate(benign_patterns) if p.test(facts)]

        def select_risk_modifiers(facts: Facts) -> list[int]:
            return [i for i, m in enumerate(risk_modifiers) if m.test(facts)]

        def evaluate(facts: Facts) -> tuple[list[int], ...]:
            derive(facts)
            return select_rules(facts), select_risk_modifiers(facts), select_considerations(facts)

        return replace(
            self,
            derived=derived,
            derive=derive,
            evaluate=evaluate,
            rules=rules,
            select_rules=select_rules,
            select_considerations=select_considerations,
            benign_patterns=benign_patterns,
            select_benign_patterns=select_benign_patterns,
            risk_modifiers=risk_modifiers,
            select_risk_modifiers=select_risk_modifiers,
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
        fired = {flag["id"]: flag for flag in result["red_flags"]}
        for rule in self.rules:
            head = f"  {rule.id} [{rule.level}, weight {rule.weight}]"
            if rule.id in fired:
                flag = fired[rule.id]
                raised = f" -> escalated to {flag['level']}" if flag["level"] != rule.level else ""
                lines.append(f"{head} FIRED{raised}: {rule.title}")
                lines.append(f"      because: {', '.join(flag['because']) or '(condition met)'}")
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
            lines.extend(self._explain_screen(facts, result))
        if result["unanswered_safety_questions"]:
            lines.append(f"  ask next: {', '.join(result['unanswered_safety_questions'])}")
        if result["risk_modifiers"]:
            lines.append(f"  risk modifiers (priority only): {', '.join(result['risk_modifiers'])}")
        return lines

    def _explain_screen(self, facts: Facts, result: dict[str, Any]) -> list[str]:
        """The benign patterns and the safety screen (CLINICAL.md rule 7), for `explain`."""
        lines = []
        screened = result["safety_screen"]
        matched = [p for p in self.benign_patterns if evaluate(p.condition, facts)]
        if not matched:
            lines.append("  no benign pattern matches")
        for pattern in matched:
            answers = ", ".join(f"{q}={_answer(facts[q])}" for q in pattern.key_questions)
            lines.append(f"  benign pattern {pattern.id} matches: {pattern.title}")
            lines.append(f"      key questions: {answers}")
            if screened.get(pattern.id) == "key_questions":
                lines.append("      qualifies by its key questions (all answered no)")
            elif screened.get(pattern.id) == "general_screen":
                lines.append("      qualifies by the general screen (all ten answered no)")
            else:
                lines.append("      does not qualify for self_care")
        general = ", ".join(f"{q}={_answer(facts[q])}" for q in self.general_screen)
        lines.append(f"  general screen: {general}")
        if result["triage"] == SELF_CARE:
            lines.append(
                "  no rule fired, a benign pattern qualified and no screen question was answered"
                " yes -> self_care (CLINICAL.md rule 7)"
            )
        else:
            yes = [
                q
                for q in (*self.general_screen, *(k for p in matched for k in p.key_questions))
                if facts[q] is True
            ]
            why = (
                f"screen question(s) answered yes: {', '.join(dict.fromkeys(yes))}"
                if yes
                else "no benign pattern matches"
                if not matched
                else "neither a pattern's key questions nor the general screen all answered no"
            )
            lines.append(f"  default consultation (CLINICAL.md rules 5 and 7): {why}")
        return lines


def _answer(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _started_medicines(
    changes: Any, window_days: int, reading: ReportReading
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """From `medication_changes` (contract v1.1): the names of medicines started or raised (taken
    now), and of those started or raised within `window_days`. Malformed entries are skipped and
    reported in `reading.fields`, never guessed."""
    if type(changes) is not list:
        reading.fields.append("medication_changes")
        return (), ()
    started: list[str] = []
    recent: list[str] = []
    for index, change in enumerate(changes):
        name = change.get("name") if type(change) is dict else None
        kind = change.get("change") if type(change) is dict else None
        days = change.get("days_ago") if type(change) is dict else None
        days_number = days if type(days) in (int, float) and days == days else None
        if (
            type(name) is not str
            or kind not in ("started", "dose_increased", "stopped")
            or days_number is None
            or days_number < 0
        ):
            reading.fields.append(f"medication_changes.{index}")
            continue
        if kind == "stopped":
            continue
        if name not in started:
            started.append(name)
        if days_number <= window_days and name not in recent:
            recent.append(name)
    return tuple(started), tuple(recent)


def _escalate(
    rule: Rule, flag: dict[str, Any], facts: Facts, sources: Sources
) -> tuple[int, int, str]:
    """Apply a fired rule's escalations to its red-flag entry; return the entry's sort key."""
    level = rule.level
    because = flag["because"]
    escalation_sources: list[str] = []
    for escalation in rule.escalations:
        if escalation.test(facts):
            if LEVEL_RANK[escalation.level] > LEVEL_RANK[level]:
                level = escalation.level
            for reason in escalation.render_because(facts, sources):
                if reason not in because:
                    because.append(reason)
            if escalation.source and escalation.source not in escalation_sources:
                escalation_sources.append(escalation.source)
    flag["level"] = level
    if escalation_sources:
        flag["source"] = f"{rule.source}; escalation: {'; '.join(escalation_sources)}"
    return -LEVEL_RANK[level], -rule.weight, rule.id


def _lists(mapping: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    # Fresh lists for the caller; most reports name no medicine or condition at all.
    return {key: list(value) for key, value in mapping.items()} if mapping else {}


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

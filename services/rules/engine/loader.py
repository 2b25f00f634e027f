"""Loading and validating the rule files at start-up.

Every problem stops the load with a `RuleSetError` whose message names the rule (or pattern, or
file) and the problem - an unknown field, an unknown finding code, a malformed or ill-typed
condition - so that the worker refuses to start instead of mis-triaging at run time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import yaml

from services.rules.engine.because import Because, BecauseKind, build_red_flag, build_renderer
from services.rules.engine.condition import (
    Compiled,
    Compiler,
    ConditionError,
    build_evaluator,
    build_selector,
    build_sequence,
)
from services.rules.engine.facts import REPORT_FACTS, FactType
from services.rules.engine.ruleset import Escalation, NamedCondition, Rule, RuleSet
from services.rules.engine.synonyms import SynonymTable, build_table
from shared.vocabulary import FINDING_CODES, LEVEL_RANK, SAFETY_QUESTIONS, TRIAGE_LEVELS

DEFAULT_DIRECTORY: Final = Path(__file__).resolve().parent.parent / "ruleset"

_RULE_FIELDS: Final = {
    "id",
    "title",
    "level",
    "weight",
    "condition",
    "because",
    "source",
    "note",
    "kind",
    "escalations",
    "reads_resolved_episode",
    "no_downgrade",
    "aliases",
}
_RULE_REQUIRED: Final = ("id", "title", "level", "weight", "condition", "because", "source")
_ESCALATION_FIELDS: Final = {"level", "when", "because", "source"}
_RULE_KINDS: Final = ("red_flag", "combination", "safety_screen")
_RULE_ID: Final = re.compile(r"^(RF|TT)_[A-Z0-9_]+$")
_NAMED_ID: Final = {
    "benign pattern": re.compile(r"^BP_[A-Z0-9_]+$"),
    "risk modifier": re.compile(r"^RM_[A-Z0-9_]+$"),
    "consideration": re.compile(r"^C_[A-Z0-9_]+$"),
}
_DERIVED_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION: Final = re.compile(r"^\d{4}\.\d+\.\d+$")
_POSSIBILITY: Final = re.compile(
    r"\b(may|might|can|could|possible|possibly|one possibility)\b", re.I
)
# A no-downgrade rule (CLINICAL.md rule 6) must not read anything an "improving" answer changes.
_COURSE_FACTS: Final = frozenset({"course", "improves_with_rest", "worsening"})
_RULESET_KEYS: Final = {
    "version",
    "derived_facts",
    "risk_modifiers",
    "benign_patterns",
    "priority_bands",
    "priority_scale",
    "level_advice",
    "self_care_general",
    "safety_net",
    "general_screen",
    "recent_medicine_change_days",
}


class RuleSetError(Exception):
    """A rule file that cannot be loaded; the message names what is wrong: 'rule RF_X: ...'."""


def _read_yaml(path: Path) -> Any:
    name = f"{path.parent.name}/{path.name}" if path.parent.name == "rules" else path.name
    try:
        with path.open(encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise RuleSetError(f"file {name}: missing") from exc
    except yaml.YAMLError as exc:
        raise RuleSetError(f"file {name}: not valid YAML: {exc}") from exc


def _mapping(data: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RuleSetError(f"{where}: expected a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RuleSetError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    return data


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RuleSetError(f"{where}: '{name}' must be a non-empty string")
    return value.strip()


def _texts(value: Any, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RuleSetError(f"{where}: '{name}' must be a non-empty list of strings")
    return tuple(_text(item, where, name) for item in value)


class _Builder:
    """Holds the compiler and synonym tables while the files are read."""

    def __init__(self, medications: SynonymTable, conditions: SynonymTable) -> None:
        self.medications = medications
        self.conditions = conditions
        tags: set[str] = set()
        for table in (medications, conditions):
            for entry in table.classes.values():
                tags |= entry.tags
        for entry in medications.classes.values():
            for implied in entry.implies:
                if implied not in conditions.classes:
                    raise RuleSetError(
                        f"synonyms class {entry.name}: implies unknown condition class {implied!r}"
                    )
        self.tags = frozenset(tags)
        catalogue: dict[str, FactType] = {
            code: FactType("tristate", finding=True) for code in FINDING_CODES
        }
        catalogue.update(REPORT_FACTS)
        catalogue["medication_classes"] = FactType("list", frozenset(medications.classes))
        catalogue["condition_classes"] = FactType("list", frozenset(conditions.classes))
        catalogue["risk_tags"] = FactType("list", self.tags)
        # From the report's medication_changes: medicines started or raised recently.
        catalogue["recently_started_classes"] = FactType("list", frozenset(medications.classes))
        catalogue["recently_started_tags"] = FactType("list", self.tags)
        self.compiler = Compiler(catalogue)
        self.derived_reads: dict[str, frozenset[str]] = {}
        # Facts that scoring reads from the facts dict after the conditions are evaluated:
        # `because` tokens, escalations, benign patterns (see build_evaluator).
        self.read_after_evaluation: set[str] = set()

    def compile(self, node: Any, where: str) -> Compiled:
        try:
            return self.compiler.compile(node)
        except ConditionError as exc:
            raise RuleSetError(f"{where}: condition: {exc}") from exc

    def reads_transitively(self, compiled: Compiled) -> frozenset[str]:
        reads = set(compiled.reads)
        for name in compiled.reads:
            reads |= self.derived_reads.get(name, frozenset())
        return frozenset(reads)

    # -- because tokens ------------------------------------------------------------------------

    def because(self, tokens: Any, where: str) -> tuple[Because, ...]:
        if not isinstance(tokens, list):
            raise RuleSetError(f"{where}: 'because' must be a list of facts")
        items = tuple(self._because(token, where) for token in tokens)
        self.read_after_evaluation.update(item.token for item in items if ":" not in item.token)
        return items

    def _because(self, token: Any, where: str) -> Because:
        if not isinstance(token, str):
            raise RuleSetError(f"{where}: because entry {token!r} must be a string")
        prefix, _, name = token.partition(":")
        if name:
            if prefix == "medication" and name in self.medications.classes:
                return Because(token, "medication", name)
            if prefix == "condition" and name in self.conditions.classes:
                return Because(token, "condition", name)
            if prefix == "risk" and name in self.tags:
                return Because(token, "risk", name)
            if prefix == "complaint" and name in REPORT_FACTS["complaints"].values:
                return Because(token, "complaint", name)
            raise RuleSetError(
                f"{where}: because entry {token!r} names an unknown class, tag or complaint"
            )
        fact = self.compiler.catalogue.get(token)
        if fact is None:
            raise RuleSetError(f"{where}: because entry {token!r} is not a known fact")
        return Because(token, _because_kind(fact), token)


def _because_kind(fact: FactType) -> BecauseKind:
    """How a fact named in `because` is shown (services/rules/engine/because.py)."""
    if fact.kind == "bool" or fact.finding:
        return "flag"
    if fact.kind in ("number", "nullable_number"):
        return "number"
    if fact.kind == "tristate":
        return "tristate"
    return "enum" if fact.kind == "enum" else "list"


def _derived(
    builder: _Builder, data: Any
) -> tuple[tuple[NamedCondition, ...], list[tuple[str, Compiled]]]:
    if not isinstance(data, dict):
        raise RuleSetError("derived_facts: expected a mapping of name -> condition")
    derived = []
    sequence: list[tuple[str, Compiled]] = []
    for name, condition in data.items():
        where = f"derived fact {name}"
        if not isinstance(name, str) or not _DERIVED_NAME.fullmatch(name):
            raise RuleSetError(f"{where}: names are lower_snake_case")
        if name in builder.compiler.catalogue:
            raise RuleSetError(f"{where}: already a fact of the report")
        compiled = builder.compile(condition, where)
        builder.derived_reads[name] = builder.reads_transitively(compiled)
        builder.compiler.add_derived(name, compiled)
        derived.append(NamedCondition(name, condition, compiled.test))
        sequence.append((name, compiled))
    return tuple(derived), sequence


def _rule(
    builder: _Builder, data: Any, file: str, seen: set[str]
) -> tuple[Rule, Compiled, frozenset[tuple[str, int]]]:
    rule_id = data.get("id") if isinstance(data, dict) else None
    where = f"rule {rule_id}" if isinstance(rule_id, str) else f"file {file}: a rule without an id"
    data = _mapping(data, _RULE_FIELDS, where)
    missing = [name for name in _RULE_REQUIRED if name not in data]
    if missing:
        raise RuleSetError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        raise RuleSetError(f"{where}: id must look like RF_NAME or TT_NAME")
    aliases = data.get("aliases", []) or []
    if not isinstance(aliases, list) or not all(
        isinstance(a, str) and _RULE_ID.fullmatch(a) for a in aliases
    ):
        raise RuleSetError(f"{where}: 'aliases' must be a list of rule ids")
    for name in [rule_id, *aliases]:
        if name in seen:
            raise RuleSetError(f"{where}: id or alias {name} is used twice")
        seen.add(name)
    level = data["level"]
    if level not in TRIAGE_LEVELS or level == "self_care":
        raise RuleSetError(
            f"{where}: level {level!r} is not one of {', '.join(TRIAGE_LEVELS[:-1])}"
        )
    weight = data["weight"]
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise RuleSetError(f"{where}: weight must be an integer 0-100")
    kind = data.get("kind", "red_flag")
    if kind not in _RULE_KINDS:
        raise RuleSetError(f"{where}: kind {kind!r} is not one of {', '.join(_RULE_KINDS)}")
    flags = {}
    for name in ("reads_resolved_episode", "no_downgrade"):
        value = data.get(name, False)
        if not isinstance(value, bool):
            raise RuleSetError(f"{where}: '{name}' must be true or false")
        flags[name] = value
    compiled = builder.compile(data["condition"], where)
    polarity = set(compiled.polarity)
    reads = builder.reads_transitively(compiled)
    escalations = []
    raw_escalations = data.get("escalations", []) or []
    if not isinstance(raw_escalations, list):
        raise RuleSetError(f"{where}: 'escalations' must be a list")
    for index, raw in enumerate(raw_escalations, 1):
        e_where = f"{where}: escalation {index}"
        raw = _mapping(raw, _ESCALATION_FIELDS, e_where)
        e_level = raw.get("level")
        if e_level not in LEVEL_RANK or LEVEL_RANK[e_level] <= LEVEL_RANK[level]:
            raise RuleSetError(f"{e_where}: level must be more urgent than the rule's {level}")
        if "when" not in raw:
            raise RuleSetError(f"{e_where}: missing field 'when'")
        e_compiled = builder.compile(raw["when"], e_where)
        builder.read_after_evaluation |= e_compiled.reads
        polarity |= e_compiled.polarity
        reads |= builder.reads_transitively(e_compiled)
        source = raw.get("source")
        e_because = builder.because(raw.get("because", []), e_where)
        escalations.append(
            Escalation(
                e_level,
                raw["when"],
                e_compiled.test,
                e_because,
                build_renderer(e_because),
                _text(source, e_where, "source") if source is not None else None,
            )
        )
    if flags["no_downgrade"] and reads & _COURSE_FACTS:
        raise RuleSetError(
            f"{where}: no_downgrade rules must not read {', '.join(sorted(reads & _COURSE_FACTS))} "
            f"(an 'improving' answer must never lower it)"
        )
    note = _text(data["note"], where, "note") if data.get("note") is not None else None
    title = _text(data["title"], where, "title")
    source = _text(data["source"], where, "source")
    because = builder.because(data["because"], where)
    # The red-flag entry's fixed fields, in result order (docs/RULES.md "The result").
    entry: dict[str, Any] = {
        "id": rule_id,
        "title": title,
        "level": level,
        "kind": kind,
        "because": [],
        "source": source,
    }
    if note:
        entry["note"] = note
    if aliases:
        entry["aliases"] = list(aliases)
    rule = Rule(
        id=rule_id,
        title=title,
        level=level,
        weight=weight,
        condition=data["condition"],
        test=compiled.test,
        because=because,
        red_flag=build_red_flag(entry, (-LEVEL_RANK[level], -weight, rule_id), because),
        source=source,
        kind=kind,
        note=note,
        escalations=tuple(escalations),
        reads_resolved_episode=flags["reads_resolved_episode"],
        no_downgrade=flags["no_downgrade"],
        aliases=tuple(aliases),
        file=file,
    )
    return rule, compiled, frozenset(polarity)


def _named(
    builder: _Builder, items: Any, kind: str, fields: dict[str, bool]
) -> list[tuple[NamedCondition, Compiled]]:
    """Benign patterns, risk modifiers, considerations: `fields` maps name -> required."""
    if not isinstance(items, list):
        raise RuleSetError(f"{kind}s: expected a list")
    condition_key = "when" if kind == "consideration" else "condition"
    out = []
    seen: set[str] = set()
    for data in items:
        item_id = data.get("id") if isinstance(data, dict) else None
        where = f"{kind} {item_id}"
        data = _mapping(data, set(fields) | {"id", condition_key}, where)
        if (
            not isinstance(item_id, str)
            or not _NAMED_ID[kind].fullmatch(item_id)
            or item_id in seen
        ):
            raise RuleSetError(f"{where}: missing, malformed or duplicate id")
        seen.add(item_id)
        for name, required in fields.items():
            if required and name not in data:
                raise RuleSetError(f"{where}: missing field '{name}'")
        if condition_key not in data:
            raise RuleSetError(f"{where}: missing field '{condition_key}'")
        compiled = builder.compile(data[condition_key], where)
        weight = data.get("weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise RuleSetError(f"{where}: weight must be an integer 0-100")
        key_questions = (
            _finding_list(data["key_questions"], where, "key_questions")
            if "key_questions" in data
            else ()
        )
        text = _text(data["text"], where, "text") if "text" in data else ""
        if kind == "consideration" and not _POSSIBILITY.search(text):
            raise RuleSetError(
                f"{where}: text must be worded as a possibility (may, can, could, possible)"
            )
        out.append(
            (
                NamedCondition(
                    id=item_id,
                    condition=data[condition_key],
                    test=compiled.test,
                    title=_text(data["title"], where, "title") if "title" in data else "",
                    weight=weight,
                    source=_text(data["source"], where, "source") if "source" in data else "",
                    text=text,
                    advice=_texts(data["advice"], where, "advice") if "advice" in data else (),
                    key_questions=key_questions,
                ),
                compiled,
            )
        )
    return out


def _finding_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    """A non-empty list of distinct finding codes (a pattern's key questions, the screen)."""
    if not isinstance(value, list) or not value:
        raise RuleSetError(f"{where}: '{name}' must be a non-empty list of finding codes")
    unknown = [code for code in value if code not in FINDING_CODES]
    if unknown:
        raise RuleSetError(f"{where}: '{name}' names unknown finding code(s) {unknown!r}")
    if len(set(value)) != len(value):
        raise RuleSetError(f"{where}: '{name}' lists a finding twice")
    return tuple(value)


def _changelog_version(directory: Path) -> str | None:
    path = directory / "CHANGELOG.md"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^##\s+(\d{4}\.\d+\.\d+)", line)
        if match:
            return match.group(1)
    return None


def load_ruleset(directory: str | Path | None = None) -> RuleSet:
    """Load, validate and compile the rule set in `directory` (default: services/rules/ruleset).

    Raises RuleSetError("rule RF_X: <problem>") - or "benign pattern BP_X: ...", "file X: ..." -
    on any problem, so a bad rule file stops the worker at start-up.
    """
    root = Path(directory) if directory is not None else DEFAULT_DIRECTORY
    synonyms = _mapping(
        _read_yaml(root / "synonyms.yaml"),
        {"medication_classes", "condition_classes"},
        "file synonyms.yaml",
    )
    try:
        medications = build_table(
            "medications", synonyms.get("medication_classes"), "synonyms medication_classes"
        )
        conditions = build_table(
            "conditions", synonyms.get("condition_classes"), "synonyms condition_classes"
        )
    except ValueError as exc:
        raise RuleSetError(str(exc)) from exc
    builder = _Builder(medications, conditions)

    main = _mapping(_read_yaml(root / "ruleset.yaml"), _RULESET_KEYS, "file ruleset.yaml")
    version = main.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise RuleSetError("file ruleset.yaml: version must look like 2026.11.1")
    logged = _changelog_version(root)
    if logged != version:
        raise RuleSetError(
            f"file CHANGELOG.md: latest entry is {logged!r} but the rule set is {version!r}; "
            f"add a '## {version}' entry"
        )
    derived, derived_sequence = _derived(builder, main.get("derived_facts", {}))

    rule_files = sorted((root / "rules").glob("*.yaml"))
    if not rule_files:
        raise RuleSetError("directory rules/: no rule files")
    rules: list[tuple[Rule, Compiled]] = []
    rule_polarity: set[tuple[str, int]] = set()
    seen: set[str] = set()
    for path in rule_files:
        content = _mapping(_read_yaml(path), {"rules"}, f"file rules/{path.name}")
        items = content.get("rules")
        if not isinstance(items, list) or not items:
            raise RuleSetError(f"file rules/{path.name}: 'rules' must be a non-empty list")
        for item in items:
            rule, compiled, polarity = _rule(builder, item, path.name, seen)
            rules.append((rule, compiled))
            rule_polarity |= polarity
    # Most urgent first, so that rule order in files never changes a result.
    rules.sort(key=lambda pair: (-LEVEL_RANK[pair[0].level], pair[0].id))
    # CLINICAL.md rule 4: a resolved episode is read only by rules that say so.
    not_resolved = builder.compile({"!": {"var": "resolved"}}, "the resolved-episode gate")
    rule_items = [(c, None if r.reads_resolved_episode else not_resolved) for r, c in rules]

    benign = _named(
        builder,
        main.get("benign_patterns"),
        "benign pattern",
        {"title": True, "source": True, "advice": True, "key_questions": True},
    )
    # CLINICAL.md rule 7 (b): the general screen is exactly the contract's ten safety questions.
    general_screen = _finding_list(main.get("general_screen"), "ruleset.yaml", "general_screen")
    if set(general_screen) != set(SAFETY_QUESTIONS):
        raise RuleSetError(
            "file ruleset.yaml: general_screen must list exactly the ten safety questions "
            f"({', '.join(SAFETY_QUESTIONS)})"
        )
    change_days = main.get("recent_medicine_change_days")
    if isinstance(change_days, bool) or not isinstance(change_days, int) or change_days <= 0:
        raise RuleSetError(
            "file ruleset.yaml: recent_medicine_change_days must be a positive whole number"
        )
    risks = _named(
        builder,
        main.get("risk_modifiers"),
        "risk modifier",
        {"title": True, "source": True, "weight": True},
    )
    considerations_file = _mapping(
        _read_yaml(root / "considerations.yaml"), {"considerations"}, "file considerations.yaml"
    )
    considerations = _named(
        builder, considerations_file.get("considerations"), "consideration", {"text": True}
    )

    bands = main.get("priority_bands")
    if not isinstance(bands, dict) or set(bands) != set(TRIAGE_LEVELS):
        raise RuleSetError(
            "file ruleset.yaml: priority_bands needs a [low, high] band for every level"
        )
    priority_bands: dict[str, tuple[int, int]] = {}
    previous_low = 101
    for level in TRIAGE_LEVELS:
        band = bands[level]
        if not (
            isinstance(band, list)
            and len(band) == 2
            and all(isinstance(b, int) for b in band)
            and 0 <= band[0] <= band[1] <= 100
            and band[1] < previous_low
        ):
            raise RuleSetError(
                f"file ruleset.yaml: priority band for {level} must be [low, high] "
                f"below the more urgent level's band"
            )
        previous_low = band[0]
        priority_bands[level] = (band[0], band[1])
    scale = main.get("priority_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise RuleSetError("file ruleset.yaml: priority_scale must be a positive number")
    level_advice_raw = main.get("level_advice")
    if not isinstance(level_advice_raw, dict) or set(level_advice_raw) != set(TRIAGE_LEVELS):
        raise RuleSetError("file ruleset.yaml: level_advice needs advice for every level")
    level_advice = {
        level: _texts(level_advice_raw[level], "level_advice", level) for level in TRIAGE_LEVELS
    }

    # Findings that can only push towards more urgency: used positively by some rule, never
    # negatively by any rule, and never positively by a benign pattern (which could allow
    # self_care). The property tests check "adding one never lowers the level" on exactly these.
    benign_positive = {fact for _, c in benign for fact, sign in c.polarity if sign > 0}
    negative = {fact for fact, sign in rule_polarity if sign < 0}
    red_flag_findings = frozenset(
        fact
        for fact, sign in rule_polarity
        if sign > 0
        and fact in FINDING_CODES
        and fact not in negative
        and fact not in benign_positive
    )
    for _, compiled in benign:  # evaluated after the rules, and only when none fired
        builder.read_after_evaluation |= compiled.reads
    risk_items = [(c, None) for _, c in risks]
    consideration_items = [(c, None) for _, c in considerations]
    return RuleSet(
        version=version,
        derived=derived,
        # One closure per sequence or selection: a call per condition would dominate scoring.
        derive=build_sequence(derived_sequence),
        evaluate=build_evaluator(
            derived_sequence,
            [rule_items, risk_items, consideration_items],
            stored=builder.read_after_evaluation & {name for name, _ in derived_sequence},
        ),
        rules=tuple(r for r, _ in rules),
        select_rules=build_selector(rule_items, "select_rules"),
        benign_patterns=tuple(p for p, _ in benign),
        select_benign_patterns=build_selector(
            [(c, None) for _, c in benign], "select_benign_patterns"
        ),
        risk_modifiers=tuple(m for m, _ in risks),
        select_risk_modifiers=build_selector(risk_items, "select_risk_modifiers"),
        considerations=tuple(c for c, _ in considerations),
        select_considerations=build_selector(consideration_items, "select_considerations"),
        medications=medications,
        conditions=conditions,
        catalogue=dict(builder.compiler.catalogue),
        priority_bands=priority_bands,
        priority_scale=float(scale),
        level_advice=level_advice,
        self_care_general=_texts(
            main.get("self_care_general"), "ruleset.yaml", "self_care_general"
        ),
        safety_net=_texts(main.get("safety_net"), "ruleset.yaml", "safety_net"),
        red_flag_findings=red_flag_findings,
        general_screen=general_screen,
        recent_medicine_change_days=change_days,
    )

"""The condition language: a checked subset of JsonLogic, compiled to Python closures.

Rule conditions are JsonLogic (https://jsonlogic.com) so that clinicians can read them and any
published JsonLogic interpreter can evaluate them. The subset is small on purpose:

- boolean positions: ``{"var": <yes/no fact>}``, ``and``, ``or``, ``!``, ``!!``, ``true``,
  ``false``;
- ``===`` / ``!==`` between a fact and a literal of that fact's type (``null`` means "not asked");
- ``<``, ``<=``, ``>``, ``>=`` between numeric facts and numbers (``<``/``<=`` also take three
  operands: ``between``);
- ``in``: a literal code in a list fact (``{"in": ["statin", {"var": "medication_classes"}]}``) or
  an enum fact in a list of literals.

Loose ``==`` / ``!=`` are rejected: common interpreters hold ``null == false`` true, which would
read an unasked safety question as a "no". A comparison on a number that may be null must be
guarded (an earlier ``and`` operand ``{"!==": [{"var": X}, null]}`` or X's guard fact), because
interpreters disagree on ``null < 4``. With these checks the compiled closures, the interpreter
below and the published interpreters give the same answers on every report.

Compilation turns each checked condition into one Python expression over local variables, one per
fact (`local`), and wraps it in a closure that first copies the facts it reads from the facts dict
(literal sets are closure variables). For scoring, the derived facts and every rule, risk modifier
and consideration compile into one function (`build_evaluator`) that reads each fact once and
keeps the derived facts in locals: the conditions of a report then cost one call. The text is
generated only from the checked tree - fact names from the catalogue (identifiers, checked),
literals through repr() of validated str, int, float, bool or None - so nothing from a rule file
reaches the code unchecked.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.rules.engine.facts import FactType

Facts = dict[str, Any]
Test = Callable[[Facts], Any]

BOOLEAN_OPS: Final = frozenset({"and", "or", "!", "!!"})
EQUALITY_OPS: Final = frozenset({"===", "!=="})
ORDER_OPS: Final = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
SUPPORTED_OPS: Final = BOOLEAN_OPS | EQUALITY_OPS | frozenset(ORDER_OPS) | {"in", "var"}
_NUMERIC: Final = (int, float)
_CONSTANT_NAMES: Final = itertools.count()


class ConditionError(ValueError):
    """A condition that is malformed, unsupported or ill-typed; the loader names the rule."""


@dataclass(frozen=True)
class Compiled:
    """A compiled condition: the closure, its expression, the facts it reads, their polarity.

    `polarity` holds (fact, +1) where the fact being true can only help the condition hold and
    (fact, -1) where it can only hurt; the property "adding a red-flag finding never lowers the
    level" is derived from it.
    """

    test: Test
    reads: frozenset[str]
    polarity: frozenset[tuple[str, int]]
    expression: str
    constants: dict[str, Any]


def _describe(node: Any) -> str:
    return json.dumps(node, sort_keys=True)


def _operator(node: Any) -> tuple[str, list[Any]]:
    if not isinstance(node, dict) or len(node) != 1:
        raise ConditionError(f"expected one JsonLogic operation, got {_describe(node)}")
    op, args = next(iter(node.items()))
    if op not in SUPPORTED_OPS:
        hint = " (use === / !==: loose equality treats null as false)" if op in ("==", "!=") else ""
        raise ConditionError(f"operator {op!r} is not supported{hint}")
    if op == "var":
        return op, [args]
    if not isinstance(args, list):
        args = [args]
    return op, args


@dataclass
class _State:
    """What one compilation collects: facts read, polarity, closure constants."""

    reads: set[str] = field(default_factory=set)
    polarity: set[tuple[str, int]] = field(default_factory=set)
    constants: dict[str, Any] = field(default_factory=dict)

    def constant(self, value: Any) -> str:
        # Globally unique names, so that several conditions can share one closure.
        name = f"k{next(_CONSTANT_NAMES)}"
        self.constants[name] = value
        return name


def build_function(
    body: str, constants: Mapping[str, Any], name: str = "test", parameters: str = "f"
) -> Any:
    """A closure `name(<parameters>)` running `body` with `constants` as its free variables.

    `body` is compiler output (possibly several lines) and is executed as Python: never pass
    anything else.
    """
    params = ", ".join(constants)
    indented = "\n".join(f"        {line}" for line in body.splitlines())
    source = (
        f"def factory({params}):\n    def {name}({parameters}):\n{indented}\n    return {name}\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<compiled {name}>", "exec"), namespace)
    return namespace["factory"](**constants)


def local(name: str) -> str:
    """The local variable that compiled code reads fact `name` from.

    Compiled code copies the facts it reads from the facts dict into locals once, up front, then
    reads the locals (one bytecode instead of a dict lookup). The underscore keeps fact names
    clear of Python keywords and of the closure's own names (`f`, `out<n>`, constants `k<n>`).
    """
    return f"_{name}"


def _check_name(name: str) -> None:
    # Fact names become parts of local variable names in generated code.
    if not name.isidentifier():
        raise ConditionError(f"fact name {name!r} is not an identifier")


def _bind(names: Iterable[str]) -> list[str]:
    # One line per fact: measured faster than one operator.itemgetter call and an unpacking.
    return [f"{local(name)} = f[{name!r}]" for name in sorted(names)]


# Conditions to select from, each with an optional gate (see `_evaluator_body`).
Selection = Sequence[tuple[Compiled, "Compiled | None"]]


def _evaluator_body(
    derived: list[tuple[str, Compiled]],
    selections: list[Selection],
    stored: Collection[str] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Code that derives facts in order, then collects each selection's holding indices.

    Derived facts are kept in locals and also set in the facts dict: all of them, or only those
    in `stored`. A selection item may carry a gate (a compiled condition, e.g. the resolved-
    episode gate); items sharing a gate are tested inside one `if gate:` block. Indices come back
    in a fixed order for a given rule set, so results stay deterministic.
    """
    constants: dict[str, Any] = {}
    reads: set[str] = set()
    body: list[str] = []
    for name, compiled in derived:
        constants.update(compiled.constants)
        reads |= compiled.reads
        store = f"f[{name!r}] = " if stored is None or name in stored else ""
        body.append(f"{store}{local(name)} = True if {compiled.expression} else False")
    for number, items in enumerate(selections):
        body.append(f"out{number} = []")
        gates: dict[str | None, list[str]] = {}
        for index, (compiled, gate) in enumerate(items):
            constants.update(compiled.constants)
            reads |= compiled.reads
            if gate is not None:
                constants.update(gate.constants)
                reads |= gate.reads
            gates.setdefault(gate.expression if gate else None, []).append(
                f"if {compiled.expression}: out{number}.append({index})"
            )
        for gate_expression, tests in gates.items():
            if gate_expression is None:
                body.extend(tests)
            else:
                body.append(f"if {gate_expression}:")
                body.extend(f"    {test}" for test in tests)
    # Facts derived above are locals already; every other fact read is bound once, up front.
    return _bind(reads - {name for name, _ in derived}) + body, constants


def build_sequence(assignments: list[tuple[str, Compiled]]) -> Callable[[Facts], None]:
    """One closure that sets each derived fact in order: f[name] = bool(expression)."""
    lines, constants = _evaluator_body(assignments, [])
    return build_function("\n".join(lines) or "pass", constants, "derive")


def build_selector(items: Selection, name: str) -> Callable[[Facts], list[int]]:
    """One closure returning the indices of the items whose condition holds (`_evaluator_body`)."""
    lines, constants = _evaluator_body([], [items])
    return build_function("\n".join([*lines, "return out0"]), constants, name)


def build_evaluator(
    derived: list[tuple[str, Compiled]],
    selections: list[Selection],
    stored: Collection[str],
    name: str = "evaluate",
) -> Callable[[Facts], tuple[list[int], ...]]:
    """One closure that derives the facts, then returns the holding indices of each selection.

    Scoring evaluates every condition of the rule set on each report: as one function, each
    fact is read from the dict once and the derived facts stay in locals for the rules. Only the
    derived facts in `stored` (those read from the dict afterwards) are also set in the dict:
    setting the others measurably cost time and served nothing.
    """
    lines, constants = _evaluator_body(derived, selections, stored)
    outputs = ", ".join(f"out{number}" for number in range(len(selections)))
    return build_function("\n".join([*lines, f"return ({outputs},)"]), constants, name)


class Compiler:
    """Checks and compiles conditions against a catalogue of typed facts.

    `derived_polarity` maps the names of derived facts to their polarity sets, so that polarity
    flows through them to the findings they read.
    """

    def __init__(self, catalogue: Mapping[str, FactType]) -> None:
        for name in catalogue:
            _check_name(name)
        self.catalogue = dict(catalogue)
        self.derived_polarity: dict[str, frozenset[tuple[str, int]]] = {}

    def add_derived(self, name: str, compiled: Compiled) -> None:
        """Register a derived boolean fact so that later conditions may read it."""
        _check_name(name)
        self.catalogue[name] = FactType("bool")
        self.derived_polarity[name] = compiled.polarity

    # -- entry point -----------------------------------------------------------------------

    def compile(self, node: Any) -> Compiled:
        """Check `node` and return its closure; raise ConditionError naming the problem."""
        state = _State()
        expression = self._boolean(node, frozenset(), state, 1)
        body = "\n".join([*_bind(state.reads), f"return {expression}"])
        return Compiled(
            build_function(body, state.constants),
            frozenset(state.reads),
            frozenset(state.polarity),
            expression,
            dict(state.constants),
        )

    # -- boolean positions -------------------------------------------------------------------

    def _note(self, name: str, sign: int, state: _State) -> None:
        state.reads.add(name)
        if name in self.derived_polarity:
            for fact, inner in self.derived_polarity[name]:
                state.polarity.add((fact, inner * sign))
        else:
            state.polarity.add((name, sign))

    def _fact(self, name: Any) -> FactType:
        if not isinstance(name, str):
            raise ConditionError(f"var needs a fact name, got {_describe(name)}")
        fact = self.catalogue.get(name)
        if fact is None:
            raise ConditionError(
                f"unknown fact {name!r} (not a finding code, report field or derived fact)"
            )
        return fact

    def _boolean(self, node: Any, guarded: frozenset[str], state: _State, sign: int) -> str:
        if node is True or node is False:
            return repr(node)
        op, args = _operator(node)
        if op == "var":
            name = args[0]
            fact = self._fact(name)
            if fact.kind not in ("bool", "tristate"):
                raise ConditionError(
                    f"fact {name!r} is a {fact.kind}, not a yes/no fact: compare it explicitly"
                )
            self._note(name, sign, state)
            # Values are True, False or None: truthiness is the same in JsonLogic and Python.
            return local(name)
        if op in ("and", "or"):
            if not args:
                raise ConditionError(f"{op!r} needs at least one operand")
            parts: list[str] = []
            inner_guarded = set(guarded)
            for arg in args:
                parts.append(self._boolean(arg, frozenset(inner_guarded), state, sign))
                if op == "and":
                    guard = self._guard_established(arg)
                    if guard:
                        inner_guarded.add(guard)
            return "(" + f" {op} ".join(parts) + ")"
        if op in ("!", "!!"):
            if len(args) != 1:
                raise ConditionError(f"{op!r} takes exactly one operand")
            inner = self._boolean(args[0], guarded, state, -sign if op == "!" else sign)
            return f"(not {inner})" if op == "!" else f"(not not {inner})"
        if op in EQUALITY_OPS:
            return self._equality(op, args, state, sign)
        if op in ORDER_OPS:
            return self._order(op, args, guarded, state)
        return self._membership(args, state, sign)

    def _guard_established(self, node: Any) -> str | None:
        """The nullable number that `node` proves is set, if it is a guard."""
        if not isinstance(node, dict) or len(node) != 1:
            return None
        op, args = next(iter(node.items()))
        if op == "var" and isinstance(args, str):
            for name, fact in self.catalogue.items():
                if fact.guard == args:
                    return name
            return None
        if op == "!==" and isinstance(args, list) and len(args) == 2:
            for var, literal in (args, args[::-1]):
                if literal is None and isinstance(var, dict) and set(var) == {"var"}:
                    name = var["var"]
                    return name if isinstance(name, str) else None
        return None

    # -- typed comparisons -------------------------------------------------------------------

    def _operand(self, node: Any) -> tuple[str | None, Any]:
        """(fact name, None) for a var, (None, literal) for a literal."""
        if isinstance(node, dict):
            op, args = _operator(node)
            if op != "var":
                raise ConditionError(f"operands must be a var or a literal, got {_describe(node)}")
            self._fact(args[0])
            return args[0], None
        if isinstance(node, (str, bool, int, float, list)) or node is None:
            return None, node
        raise ConditionError(f"unsupported literal {_describe(node)}")

    def _check_literal(self, name: str, fact: FactType, literal: Any) -> None:
        number = isinstance(literal, _NUMERIC) and not isinstance(literal, bool)
        ok = {
            "bool": literal is True or literal is False,
            "tristate": literal is None or literal is True or literal is False,
            "number": number,
            "nullable_number": literal is None or number,
            "enum": isinstance(literal, str) and literal in fact.values,
        }.get(fact.kind, False)
        if not ok:
            allowed = (
                ", ".join(sorted(fact.values)) if fact.kind == "enum" else f"a {fact.kind} value"
            )
            raise ConditionError(
                f"{_describe(literal)} is not a valid value of {name!r} ({allowed})"
            )

    def _equality(self, op: str, args: list[Any], state: _State, sign: int) -> str:
        if len(args) != 2:
            raise ConditionError(f"{op!r} takes two operands")
        (left_name, left), (right_name, right) = self._operand(args[0]), self._operand(args[1])
        if (left_name is None) == (right_name is None):
            raise ConditionError(f"{op!r} compares one fact with one literal: {_describe(args)}")
        name = left_name if left_name is not None else right_name
        literal = right if left_name is not None else left
        assert name is not None
        fact = self.catalogue[name]
        if fact.kind == "list":
            raise ConditionError(f"{name!r} is a list: use 'in'")
        self._check_literal(name, fact, literal)
        state.reads.add(name)
        negate = op == "!=="
        if fact.kind in ("bool", "tristate"):
            # === true helps when the fact is true; === false / null help when it is not.
            helps = 1 if literal is True else -1
            self._note(name, sign * helps * (-1 if negate else 1), state)
        if literal is None or isinstance(literal, bool):
            # Identity keeps True distinct from 1, as JsonLogic's strict equality does.
            return f"({local(name)} {'is not' if negate else 'is'} {literal!r})"
        return f"({local(name)} {'!=' if negate else '=='} {literal!r})"

    def _order(self, op: str, args: list[Any], guarded: frozenset[str], state: _State) -> str:
        three = len(args) == 3
        if len(args) != 2 and not (three and op in ("<", "<=")):
            raise ConditionError(f"{op!r} takes two operands (three for a range with < or <=)")
        operands = [self._operand(arg) for arg in args]
        names = [name for name, _ in operands if name is not None]
        if len(names) != 1:
            raise ConditionError(
                f"{op!r} compares exactly one fact with numbers: {_describe(args)}"
            )
        name = names[0]
        fact = self.catalogue[name]
        if fact.kind not in ("number", "nullable_number"):
            raise ConditionError(f"{op!r} needs a number, but {name!r} is a {fact.kind}")
        if fact.kind == "nullable_number" and name not in guarded:
            guard = f"{fact.guard!r} or " if fact.guard else ""
            raise ConditionError(
                f"{name!r} may be null: put {guard}{{'!==': [{{'var': '{name}'}}, null]}} "
                f"before the comparison in an 'and'"
            )
        for literal_name, literal in operands:
            if literal_name is None and (
                not isinstance(literal, _NUMERIC) or isinstance(literal, bool)
            ):
                raise ConditionError(f"{op!r} compares numbers, got {_describe(literal)}")
        if three and operands[1][0] is None:
            raise ConditionError(f"a range puts the fact in the middle: {_describe(args)}")
        state.reads.add(name)
        terms = [local(n) if n is not None else repr(v) for n, v in operands]
        # Python chains a < b < c exactly like JsonLogic's three-operand range.
        return "(" + f" {op} ".join(terms) + ")"

    def _membership(self, args: list[Any], state: _State, sign: int) -> str:
        if len(args) != 2:
            raise ConditionError("'in' takes two operands")
        (needle_name, needle), (hay_name, hay) = self._operand(args[0]), self._operand(args[1])
        if needle_name is None and hay_name is not None:
            fact = self.catalogue[hay_name]
            if fact.kind != "list":
                raise ConditionError(f"'in' needs a list fact, but {hay_name!r} is a {fact.kind}")
            if not isinstance(needle, str) or needle not in fact.values:
                raise ConditionError(f"{_describe(needle)} is not a known value of {hay_name!r}")
            state.reads.add(hay_name)
            state.polarity.add((f"{hay_name}:{needle}", sign))
            return f"({needle!r} in {local(hay_name)})"
        if needle_name is not None and hay_name is None:
            fact = self.catalogue[needle_name]
            if fact.kind != "enum":
                raise ConditionError(
                    f"'in' with a literal list needs an enum fact, not {needle_name!r}"
                )
            if not isinstance(hay, list) or not hay:
                raise ConditionError(f"'in' needs a non-empty list of values for {needle_name!r}")
            for value in hay:
                self._check_literal(needle_name, fact, value)
            state.reads.add(needle_name)
            return f"({local(needle_name)} in {state.constant(frozenset(hay))})"
        raise ConditionError(
            f"'in' takes a code and a list fact, or an enum fact and a list: {_describe(args)}"
        )


# -- the un-compiled path: a tree-walking interpreter of the same subset --------------------


def evaluate(node: Any, facts: Facts) -> Any:
    """Interpret an already-checked condition (used by explain and as a benchmark baseline)."""
    if not isinstance(node, dict):
        return node
    op, args = next(iter(node.items()))
    if op == "var":
        return facts[args]
    if not isinstance(args, list):
        args = [args]
    if op == "and":
        return all(evaluate(arg, facts) for arg in args)
    if op == "or":
        return any(evaluate(arg, facts) for arg in args)
    if op == "!":
        return not evaluate(args[0], facts)
    if op == "!!":
        return bool(evaluate(args[0], facts))
    values = [evaluate(arg, facts) for arg in args]
    if op in EQUALITY_OPS:
        left, right = values
        same = (
            left is right
            if (left is None or right is None or isinstance(left, bool) or isinstance(right, bool))
            else left == right
        )
        return same if op == "===" else not same
    if op in ORDER_OPS:
        compare = ORDER_OPS[op]
        if len(values) == 3:
            return compare(values[0], values[1]) and compare(values[1], values[2])
        return compare(values[0], values[1])
    if op == "in":
        return values[0] in values[1]
    raise ConditionError(f"operator {op!r} is not supported")


def unmet_parts(node: Any, facts: Facts) -> list[str]:
    """The innermost parts of a false condition that made it false, as JSON text (for explain)."""
    if evaluate(node, facts):
        return []
    if isinstance(node, dict):
        op, args = next(iter(node.items()))
        if op == "and":
            for arg in args:
                if not evaluate(arg, facts):
                    return unmet_parts(arg, facts)
        if op == "or":
            parts: list[str] = []
            for arg in args:
                parts.extend(unmet_parts(arg, facts))
            return parts
    return [_describe(node)]

"""A rule's `because` facts and red-flag entry: what a fired rule shows, compiled to a function.

Only facts that are present are shown (docs/RULES.md "A rule"):

| kind                     | shown as                                  | when                     |
|--------------------------|-------------------------------------------|--------------------------|
| flag (yes/no, finding)   | `twitching`                               | the fact is true         |
| tristate                 | `improves_with_rest=false`                | answered                 |
| number                   | `onset_days=120`, `glucose_mmol_l=3.1`    | set                      |
| enum                     | `weakness_distribution=distal`            | not none / unknown       |
| list                     | `complaints=cramps,weakness`              | not empty                |
| medication / condition / | `medication:statin (Lipitor 20mg)` - the  | the patient has the      |
| risk                     | patient's own words                       | class or tag             |
| complaint                | `complaint:cramps`                        | the complaint is listed  |

Flags are appended as they come; every other text only once. A fired rule renders its list on
every report it fires for, so each list is compiled at load into one function of straight-line
code (one `if` per token) instead of a loop calling a renderer per token; `build_red_flag` adds
the rule's whole red-flag entry to the same function. As in condition.py, the code is generated
only from checked data: the loader resolves every token against the fact catalogue, the synonym
tables and the complaint vocabulary first, and every name reaches the code through repr(); the
rule's own texts (title, source, note) are closure constants, never code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from services.rules.engine.condition import build_function

if TYPE_CHECKING:
    from services.rules.engine.ruleset import Sources

BecauseKind = Literal[
    "flag",
    "tristate",
    "number",
    "enum",
    "list",
    "medication",
    "condition",
    "risk",
    "complaint",
]
Renderer = Callable[[dict[str, Any], "Sources"], list[str]]
RedFlag = Callable[[dict[str, Any], "Sources"], tuple[tuple[int, int, str], dict[str, Any]]]

_FLOAT_MAX: Final = sys.float_info.max
# Which `Sources` mapping holds the patient's entries for each class kind.
_SOURCE_FIELD: Final = {"medication": "medications", "condition": "conditions", "risk": "tags"}


@dataclass(frozen=True)
class Because:
    """One resolved `because` token: its kind and the fact, class, tag or complaint it names."""

    token: str
    kind: BecauseKind
    name: str


def number_text(value: float | int) -> str:
    """A number as a clinician reads it: 120 rather than 120.0, 3.1 rather than 3.1000000001."""
    # Exact types first (the common cases, without the conversions); an int too large for a
    # float still goes the general way, which raises OverflowError as it always has.
    if type(value) is float:
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if type(value) is int and -_FLOAT_MAX < value < _FLOAT_MAX:
        return str(value)
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _lines(item: Because, constants: dict[str, Any]) -> list[str]:
    """Code that appends `item`'s text to `out` when the fact is present."""
    name = item.name
    if item.kind == "flag":
        return [f"if f[{name!r}] is True: out.append({name!r})"]
    if item.kind == "complaint":
        test, text = f"{name!r} in f['complaints']", repr(item.token)
    elif item.kind in _SOURCE_FIELD:
        # "medication:statin (" + the patient's entries + ")"
        prefix = f"p{len(constants)}"
        constants[prefix] = f"{item.kind}:{name} ("
        lines = [f"v = s.{_SOURCE_FIELD[item.kind]}.get({name!r})"]
        test, text = "v", f"{prefix} + ', '.join(v) + ')'"
        return [*lines, *_append_once(test, text)]
    else:
        prefix = f"p{len(constants)}"
        constants[prefix] = f"{name}="
        lines = [f"v = f[{name!r}]"]
        if item.kind == "tristate":
            test, text = "v is not None", f"{prefix} + str(v).lower()"
        elif item.kind == "number":
            test, text = "v is not None", f"{prefix} + number_text(v)"
        elif item.kind == "enum":
            test, text = "v not in (None, 'none', 'unknown')", f"f'{{{prefix}}}{{v}}'"
        else:  # list
            test, text = "v", f"{prefix} + ','.join(v)"
        return [*lines, *_append_once(test, text)]
    return _append_once(test, text)


def _append_once(test: str, text: str) -> list[str]:
    return [f"if {test}:", f"    t = {text}", "    if t not in out: out.append(t)"]


def _render_lines(items: tuple[Because, ...], constants: dict[str, Any]) -> list[str]:
    constants["number_text"] = number_text
    lines = ["out = []"]
    for item in items:
        lines.extend(_lines(item, constants))
    return lines


def build_renderer(items: tuple[Because, ...], name: str = "because") -> Renderer:
    """One function `(facts, sources) -> [texts]` rendering `items` in order (see the table)."""
    constants: dict[str, Any] = {}
    lines = [*_render_lines(items, constants), "return out"]
    renderer: Renderer = build_function("\n".join(lines), constants, name, parameters="f, s")
    return renderer


def build_red_flag(
    entry: Mapping[str, Any], order: tuple[int, int, str], items: tuple[Because, ...]
) -> RedFlag:
    """One function `(facts, sources) -> (order, red-flag entry)` for a fired rule.

    `entry` is the rule's entry in a result's `red_flags`, keys in result order, with any value
    under "because" (it becomes the rendered `items`). List values are copied on each call, so
    that every result owns its lists. `order` is returned as given: the entry's sort key.
    """
    constants: dict[str, Any] = {"order": order}
    lines = _render_lines(items, constants)
    fields = []
    for number, (key, value) in enumerate(entry.items()):
        if key == "because":
            fields.append(f"{key!r}: out")
            continue
        constants[f"e{number}"] = value
        fields.append(
            f"{key!r}: list(e{number})" if isinstance(value, list) else f"{key!r}: e{number}"
        )
    lines.append(f"return order, {{{', '.join(fields)}}}")
    red_flag: RedFlag = build_function("\n".join(lines), constants, "red_flag", parameters="f, s")
    return red_flag

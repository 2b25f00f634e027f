"""Strict JSON fields: the contract's types exactly, no silent coercion.

marshmallow's own Boolean accepts "yes" and 1, and Float accepts "5"; a clinical contract must
not guess what a caller meant, so these accept only the JSON type the contract names.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from marshmallow import ValidationError, fields, validate

_LARGEST = sys.float_info.max

# What no string in a report may hold: C0 and C1 control characters other than tab, line feed
# and carriage return, and the bidirectional embedding, override and isolate controls, which make
# text display in another order than it is stored ("Trojan Source"). Written so that Python and
# ECMA-262 (JSON Schema's regex dialect) read it alike: the JSON Schema fast path and the
# published schema use the same pattern.
_CONTROL_OR_BIDI = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
PLAIN_TEXT_PATTERN = f"^[^{_CONTROL_OR_BIDI}]*$"
_NOT_PLAIN_TEXT = re.compile(f"[{_CONTROL_OR_BIDI}]")
# A field's metadata key for JSON Schema it enforces that apispec cannot read from its type and
# validators (shared/openapi.py puts it in the OpenAPI documents, over what apispec derived).
JSON_SCHEMA_METADATA = "json_schema"


class FullMatch(validate.Regexp):
    """validate.Regexp on the whole value. Regexp uses re.match, where `$` also matches before a
    trailing newline, so `^[A-Z]+$` would pass "MRN\\n"; fullmatch does not."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class StrictBoolean(fields.Boolean):
    """Only JSON true or false."""

    default_error_messages = {"invalid": "Not a boolean: use true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictInteger(fields.Integer):
    """Only a JSON integer (no strings, booleans or fractions). `42.0` is the integer 42, as in
    JSON Schema's "integer" (and so in the OpenAPI and the published schema): clients whose JSON
    has one number type may write whole numbers so. It loads as 42."""

    default_error_messages = {"invalid": "Not a whole number."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():  # never NaN or an infinity
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictNumber(fields.Float):
    """Only a finite JSON number that fits in a double (integers are fine, strings and booleans
    are not). An integer literal with hundreds of digits is not a number anyone means here, and
    it would overflow wherever it meets a float."""

    default_error_messages = {"invalid": "Not a number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if not -_LARGEST <= value <= _LARGEST:  # NaN, the infinities, huge integers
            raise self.make_error("invalid")
        return float(value) if isinstance(value, float) else value


class StrictString(fields.String):
    """Only a JSON string, and one without control or bidirectional formatting characters
    (PLAIN_TEXT_PATTERN)."""

    default_error_messages = {
        "invalid": "Not a string.",
        "not_plain_text": "Holds a control character or a bidirectional formatting character.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if _NOT_PLAIN_TEXT.search(text):
            raise self.make_error("not_plain_text")
        return text

"""Strict JSON fields: the contract's types exactly, no silent coercion.

marshmallow's own Boolean accepts "yes" and 1, and Float accepts "5"; a clinical contract must
not guess what a caller meant, so these accept only the JSON type the contract names.
"""

from __future__ import annotations

import sys
from typing import Any

from marshmallow import fields

_LARGEST = sys.float_info.max


class StrictBoolean(fields.Boolean):
    """Only JSON true or false."""

    default_error_messages = {"invalid": "Not a boolean: use true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictInteger(fields.Integer):
    """Only a JSON integer (no strings, booleans or fractions)."""

    default_error_messages = {"invalid": "Not a whole number."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
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
    """Only a JSON string."""

    default_error_messages = {"invalid": "Not a string."}

"""The bounded JSON reader: depth measured on the text agrees with the parsed value's depth,
whatever brackets, quotes and escapes the strings hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.request_input import JsonBodyRefused, exceeds_depth, loads

# Strings full of what could confuse a scanner that does not skip strings properly.
_tricky_text = st.text(alphabet='[]{}"\\,:ab \n\u2028', max_size=8)
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _tricky_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_tricky_text, inner, max_size=3)
    ),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(_values, st.integers(min_value=0, max_value=8), st.booleans())
def test_depth_on_the_text_is_the_depth_of_the_value(
    value: Any, limit: int, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert exceeds_depth(text, limit) == (depth(value) > limit)


@given(_values)
def test_what_json_writes_within_the_bounds_reads_back_the_same(value: Any) -> None:
    assert loads(json.dumps(value).encode(), max_depth=64) == value


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 33 + b"]" * 33, "too_deep"),
        (b"[" * 100_000, "too_deep"),
        (b'{"a": 1, "a": 2}', "duplicate_key"),
        (b"[NaN]", "not_a_json_number"),
        (b"-Infinity", "not_a_json_number"),
        (b"1" * 5000, "number_too_long"),
        (b'"\xff"', "not_utf8"),
        (b'["\\u0000"]', "bad_string"),
        (b'{"\\udc00": 1}', "bad_string"),
    ],
)
def test_what_the_bounds_refuse(body: bytes, reason: str) -> None:
    with pytest.raises(JsonBodyRefused) as refused:
        loads(body)
    assert refused.value.reason == reason


def test_escaped_text_that_only_looks_risky_is_read() -> None:
    # A backslash followed by "u0000", and a surrogate pair (an emoji): both fine.
    assert loads(b'["\\\\u0000", "\\ud83d\\udcaa"]') == ["\\u0000", "\U0001f4aa"]
    assert loads(b"\xef\xbb\xbf[1]") == [1]  # a UTF-8 byte order mark, as json.loads allows
    assert loads(b"[" * 32 + b"]" * 32) is not None

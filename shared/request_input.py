"""What a request brings in, read with bounds: JSON bodies and the headers parsed from text.

Every JSON body in both services is parsed here (the views' own parsing, `request.get_json()`
and `flask.json.loads` through the app's JSON provider, flask-smorest's `@arguments` through
`BoundedArgumentsParser`). Refused with a 400, never a 500:

- nesting deeper than `max_json_depth` (32 by default; a report nests 3 deep, a FHIR
  QuestionnaireResponse about 10). Python's decoder recurses once per level, so a few thousand
  `[` raise RecursionError, which is no ValueError and escapes every `except ValueError`. The
  depth is measured on the text before parsing, skipping strings;
- bytes that are not UTF-8 (RFC 8259 §8.1);
- the NaN and Infinity literals, which are not JSON;
- an object naming a key twice: parsers disagree on which value wins, so the EHR and we could
  read different reports from the same signed bytes;
- a string holding U+0000 (PostgreSQL cannot store it in text or jsonb) or an unpaired surrogate
  (it cannot be encoded as UTF-8 again, for a hash, a log line or the database).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from flask import Flask, Request, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from shared.problems import Problem, problem_response, unexpected_error_response

DEFAULT_MAX_JSON_DEPTH: Final = 32
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255  # the idempotency_records.key column
# A listing's `offset`: past the end of any listing, and within the database's integers (a
# larger one overflowed SQLite's and PostgreSQL's, a 500).
MAX_LIST_OFFSET: Final = 2**31 - 1

# A JSON string token, escapes included; unrolled so it never backtracks on an unclosed string.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET: Final = re.compile(r"[\[\]{}]")
# Escapes that decode to U+0000 or to a surrogate. Only bodies holding one (almost none) have
# their parsed strings checked one by one.
_RISKY_ESCAPE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


class JsonBodyRefused(ValueError):
    """A body that is not JSON we read. `reason` is a short code for logs; `detail` is for the
    caller. A ValueError, so code that catches malformed JSON catches this too."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def exceeds_depth(text: str, limit: int) -> bool:
    """Whether arrays and objects in `text` nest more than `limit` deep (brackets inside strings
    do not count). Linear, and it stops at the first level past the limit."""
    if text.count("[") + text.count("{") <= limit:
        return False  # it cannot nest deeper than it has brackets: every ordinary body
    depth = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


def loads(data: str | bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """Parse a JSON body with the bounds in the module docstring.

    Raises JsonBodyRefused for what those bounds refuse, json.JSONDecodeError for text that is
    not JSON at all (both are ValueErrors). `kwargs` go to `json.loads`."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8-sig")  # a leading BOM is tolerated, as json does
        except UnicodeDecodeError:
            raise JsonBodyRefused("not_utf8", "The body is not UTF-8.") from None
    else:
        text = data
    if exceeds_depth(text, max_depth):
        raise _too_deep(max_depth)
    try:
        value = json.loads(text, **{**_DECODER_OPTIONS, **kwargs}) if kwargs else _decode(text)
    except RecursionError:  # only if max_depth is set beyond what the interpreter allows
        raise _too_deep(max_depth) from None
    except (JsonBodyRefused, json.JSONDecodeError):
        raise
    except ValueError:  # an integer literal of thousands of digits (int's conversion limit)
        raise JsonBodyRefused("number_too_long", "A number in the body is too long.") from None
    if _RISKY_ESCAPE.search(text):
        _check_strings(value)
    return value


def _too_deep(max_depth: int) -> JsonBodyRefused:
    return JsonBodyRefused(
        "too_deep", f"Arrays and objects in the body nest more than {max_depth} levels deep."
    )


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonBodyRefused(
                    "duplicate_key", f"An object in the body names the key '{key[:64]}' twice."
                )
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    raise JsonBodyRefused("not_a_json_number", f"{name} is not a JSON number.")


_DECODER_OPTIONS: Final[dict[str, Any]] = {
    "object_pairs_hook": _object_without_duplicate_keys,
    "parse_constant": _refuse_constant,
}
# One decoder for every body: json.loads with options builds a new one per call (~2 µs).
_decode: Final = json.JSONDecoder(**_DECODER_OPTIONS).decode


def _check_strings(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and ("\x00" in item or not _encodable(item)):
            raise JsonBodyRefused(
                "bad_string",
                "A string in the body holds U+0000 or an unpaired surrogate (U+D800 to U+DFFF).",
            )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---- In Flask -------------------------------------------------------------------------------


def max_json_depth() -> int:
    """The current app's limit (its JSON provider's), or the default outside one of ours."""
    return getattr(current_app.json, "max_depth", DEFAULT_MAX_JSON_DEPTH)  # type: ignore[no-any-return]


def json_problem(exc: ValueError) -> Problem:
    """The 400 for a body that `loads` refused or could not parse."""
    if isinstance(exc, JsonBodyRefused):
        detail = exc.detail
    elif isinstance(exc, json.JSONDecodeError):
        detail = f"The body is not valid JSON: {exc}."
    else:
        detail = "The body is not valid JSON."
    return Problem(400, "Malformed JSON", detail, problem_type="malformed-json")


def json_body(raw: bytes) -> Any:
    """`raw` parsed with the app's bounds, or a 400 Problem saying what is wrong with it."""
    try:
        return loads(raw, max_depth=max_json_depth())
    except ValueError as exc:
        raise json_problem(exc) from None


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading with `loads` above: `request.get_json()` and `flask.json.loads`
    inside a request get the same bounds as the views' own parsing."""

    def __init__(self, app: Flask, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> None:
        super().__init__(app)
        self.max_depth = max_depth

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, max_depth=self.max_depth, **kwargs)


class BoundedArgumentsParser(FlaskParser):
    """webargs' Flask parser (what flask-smorest's `@arguments` runs) reading JSON bodies with
    `loads` above; webargs' own parser calls `json.loads` with no bounds at all."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        try:
            return loads(req.get_data(cache=True), max_depth=max_json_depth())
        except JsonBodyRefused as refused:
            raise json_problem(refused) from None
        # A json.JSONDecodeError goes on to webargs: an empty body is "missing", the rest 400.


def install_json_bounds(app: Flask, max_depth: int) -> None:
    """Make `app` read JSON with these bounds and answer what escapes them with a 400."""
    app.json = BoundedJSONProvider(app, max_depth)

    @app.errorhandler(JsonBodyRefused)
    def _refused(exc: JsonBodyRefused) -> Response:
        # A view that parsed with flask.json.loads and did not catch the refusal.
        return problem_response(json_problem(exc))

    @app.errorhandler(RecursionError)
    def _recursion(exc: RecursionError) -> Response:
        # Last line of defence: a parser that bypassed the bounds (a library's own json.loads)
        # on a body that breaks them is still the caller's 400, not our 500. Any other
        # RecursionError is a bug of ours and stays a 500.
        text = request.get_data(cache=True).decode("utf-8", "replace")
        if exceeds_depth(text, max_json_depth()):
            return problem_response(json_problem(_too_deep(max_json_depth())))
        return unexpected_error_response(exc)

    @app.before_request
    def _refuse_nul_in_url() -> None:
        # U+0000 in a path or query value would reach a database query; PostgreSQL refuses it
        # with an error of its own (a 500). Nothing legitimate carries one.
        query = request.args.items(multi=True)
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in query):
            raise Problem(400, "Bad Request", "The URL holds a NUL character.")


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header: None if absent, else 1 to 255 printable ASCII
    characters (what the IETF draft's sf-string allows), or a 400."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise Problem(
            400,
            "Bad Idempotency-Key",
            f"The key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters.",
        )
    return key

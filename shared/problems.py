"""RFC 9457 problem details: the one place exceptions become error responses.

Every error a service returns is `application/problem+json` with `type`, `title`, `status`,
`detail`, `request_id` and, for bad input, `errors`: one entry per bad field, all of them.
A 500 reveals nothing internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from flask import Flask, Response, g, json
from marshmallow import Schema, ValidationError, fields, validate
from werkzeug.exceptions import HTTPException

from shared.secrets_at_rest import secret_keys_problem

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://myotriage.example/problems/"
# Errors listed in one validation problem (every one, up to this many).
MAX_LISTED_ERRORS = 100
# Longer field names (only unknown ones can be) are cut short where an error names them.
MAX_FIELD_NAME_LENGTH = 200
log = structlog.get_logger("myotriage.problems")


class Problem(Exception):
    """An error to send as problem+json. Raise it anywhere in a request."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        problem_type: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.problem_type = problem_type
        self.errors = errors
        self.headers = dict(headers or {})


class ProblemErrorSchema(Schema):
    """One bad field of a problem (documentation only: `field_errors` writes them)."""

    field = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The field's dotted path; null for the body as a whole."},
    )
    pointer = fields.String(
        required=True,
        metadata={"description": "JSON Pointer (RFC 6901) to the field; empty for the body."},
    )
    message = fields.String(required=True)


class ProblemSchema(Schema):
    """An RFC 9457 problem as `problem_response` writes it: the body of every error (the
    OpenAPI documents list it for each error an operation can answer; shared/openapi.py)."""

    type = fields.String(
        required=True,
        metadata={"format": "uri", "description": "Names the kind of problem."},
    )
    title = fields.String(required=True)
    status = fields.Integer(required=True, validate=validate.Range(min=400, max=599))
    detail = fields.String(metadata={"description": "What went wrong here, for people."})
    errors = fields.List(
        fields.Nested(ProblemErrorSchema),
        metadata={"description": "Invalid input: every bad field (up to 100)."},
    )
    request_id = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Quote it to support: the logs know the request by it."},
    )


def field_errors(messages: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Flatten marshmallow's nested messages to [{field, pointer, message}], every one of them."""
    out: list[dict[str, Any]] = []
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = str(key) if key != "_schema" else ""
            path = f"{prefix}.{name}" if prefix and name else (prefix or name)
            out.extend(field_errors(value, path))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        for message in messages:
            out.append(_one_error(prefix, message))
    elif isinstance(messages, list):
        for item in messages:
            out.extend(field_errors(item, prefix))
    else:
        out.append(_one_error(prefix, str(messages)))
    return out


def _one_error(path: str, message: str) -> dict[str, Any]:
    if len(path) > MAX_FIELD_NAME_LENGTH:  # an unknown field named with 60 KB of text
        path = path[:MAX_FIELD_NAME_LENGTH] + "…"
    pointer = "/" + path.replace(".", "/") if path else ""
    return {"field": path or None, "pointer": pointer, "message": message}


def validation_problem(messages: Any, title: str = "Invalid symptom report") -> Problem:
    errors = field_errors(messages)
    names = sorted({e["field"] for e in errors if e["field"]})
    detail = (
        f"{len(names)} field(s) are invalid: {', '.join(names[:MAX_LISTED_ERRORS])}."
        if names
        else "The request body is invalid."
    )
    if len(errors) > MAX_LISTED_ERRORS or len(names) > MAX_LISTED_ERRORS:
        # No real report has this many bad fields; a 64 KB body of made-up finding codes would
        # otherwise get a response a hundred times its size.
        detail += f" Only the first {MAX_LISTED_ERRORS} are listed."
        errors = errors[:MAX_LISTED_ERRORS]
    return Problem(422, title, detail, problem_type="validation-error", errors=errors)


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (problem.problem_type or _slug(problem.title)),
        "title": problem.title,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if problem.errors is not None:
        body["errors"] = problem.errors
    body["request_id"] = getattr(g, "request_id", None)
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def _slug(title: str) -> str:
    return "-".join(title.lower().split())


def register_problem_handlers(app: Flask) -> None:
    """Map every exception a request can raise to problem+json."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        return problem_response(validation_problem(exc.messages))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        # webargs (through flask-smorest) raises 422 with the schema's messages attached.
        messages = (getattr(exc, "data", None) or {}).get("messages")
        if status == 422 and messages is not None:
            # webargs nests messages under the location ("json"); the fields are below it.
            if isinstance(messages, Mapping) and set(messages) <= {"json", "query", "headers"}:
                merged: dict[str, Any] = {}
                for part in messages.values():
                    if isinstance(part, Mapping):
                        merged.update(part)
                messages = merged
            return problem_response(validation_problem(messages))
        detail = exc.description if status < 500 else None
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return problem_response(
            Problem(status, exc.name, detail, problem_type=_slug(exc.name), headers=headers)
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        keys_problem = secret_keys_problem(exc)
        if keys_problem is not None:
            return _secrets_unavailable(keys_problem)
        return unexpected_error_response(exc)


def _secrets_unavailable(exc: Exception) -> Response:
    """503 when signing secrets cannot be encrypted or decrypted: MYOTRIAGE_SECRET_KEYS is the
    operator's to fix (the log says how); the caller learns only that it should wait."""
    log.error("secrets.unavailable", error_class=type(exc).__name__, detail=str(exc))
    return problem_response(
        Problem(
            503,
            "Service Unavailable",
            "Signing secrets cannot be stored or read on this service now (a configuration "
            "problem, logged for its operators). Try again later.",
            problem_type="secrets-unavailable",
        )
    )


def unexpected_error_response(exc: BaseException) -> Response:
    """The 500 for an error nobody expected: logged by class, nothing internal revealed."""
    # Log the class only: messages of unexpected errors may quote patient data.
    log.error("request.unhandled_error", error_class=type(exc).__name__, exc_info=False)
    return problem_response(
        Problem(500, "Internal Server Error", "The error was logged with this request_id.")
    )

"""What the OpenAPI documents say beyond what flask-smorest derives: every operation's errors,
with the body each has, and the rules the API enforces that apispec cannot read from a schema
(`enforced_rules`, the header, URL and secret patterns below). Clients, and schemathesis in
tests/integration/test_openapi_fuzz.py, may rely on the documents: a request they call valid is
accepted, and every answer is one they list.

Errors are RFC 9457 problem+json (`ProblemSchema`), except on the FHIR routes (`/fhir/…`),
which answer an `OperationOutcome` as application/fhir+json; a rate limit (429) and an
unexpected error (500), answered by the app before or beyond any route, are problem+json
everywhere. `ErrorResponses`, an apispec plugin, adds to every operation the errors that
apply to it by its shape:

- every operation: 400 (a malformed request: a NUL in the URL, a bad header value), 500; and
  429 unless the route is exempt from rate limits;
- an operation that needs an API key (`security`): 401 and 403;
- a path with parameters: 404 (an unknown id, and another tenant's);
- a request body: 413 and 422 (400 for a body that is not JSON we read is already there).

The errors a view declares itself (`@blp.alt_response(409, description=…)`, flask-smorest's
422 for `@arguments`) get the same body; a response a view gives content of its own is kept
as it is (the webhooks', which may be either format). flask-smorest's catch-all `default`
error (a JSON body we never send) is dropped.
"""

from __future__ import annotations

from copy import deepcopy
from http import HTTPStatus
from typing import Any, Final

import flask_smorest
from apispec import APISpec, BasePlugin
from flask import Flask
from marshmallow.fields import Field

from shared.fhir_results import FHIR_MEDIA_TYPE
from shared.problems import PROBLEM_MEDIA_TYPE, ProblemSchema
from shared.rate_limits import EXEMPT_ENDPOINTS
from shared.request_input import MAX_IDEMPOTENCY_KEY_LENGTH
from shared.schemas.fields import JSON_SCHEMA_METADATA, PLAIN_TEXT_PATTERN, StrictString

PROBLEM_SCHEMA: Final = "Problem"
OUTCOME_SCHEMA: Final = "OperationOutcome"
FHIR_RESOURCE_SCHEMA: Final = "FhirResource"
FHIR_PATH_PREFIX: Final = "/fhir/"

# FHIR's own error body, as both services write it (documentation only).
OPERATION_OUTCOME: Final[dict[str, Any]] = {
    "type": "object",
    "description": "A FHIR R4 OperationOutcome: one issue per problem.",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "id": {"type": "string", "description": "The request id, for support."},
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {
                        "type": "string",
                        "enum": ["fatal", "error", "warning", "information"],
                    },
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
# Any FHIR resource (Questionnaire, QuestionnaireResponse, Bundle …): FHIR defines the rest.
FHIR_RESOURCE: Final[dict[str, Any]] = {
    "type": "object",
    "description": "A FHIR R4 resource (see hl7.org/fhir/R4).",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}},
}

# The Idempotency-Key header as `shared.request_input.idempotency_key` reads it.
IDEMPOTENCY_KEY_HEADER: Final[dict[str, Any]] = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
        "pattern": "^[ -~]+$",
    },
    "description": f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters. Same key + "
    "same body: the first answer again. Same key + different body: refused.",
}

# A callback URL as the OpenAPI states it: https to a host name, an optional port, no
# credentials or fragment. (The API also takes public address literals, and http where the
# operator allowlists a destination: shared/callback_destinations.py.)
_LABEL: Final = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LABEL: Final = "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # a letter: not an address
_PORT: Final = (
    "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
)
CALLBACK_URL_PATTERN: Final = f'^https://(?:{_LABEL}\\.)*{_TOP_LABEL}{_PORT}(?:[/?][!-"$-~]*)?$'


def whsec_pattern(min_bytes: int, max_bytes: int) -> str:
    """A Standard Webhooks secret as a regex: `whsec_` + padded base64 of `min_bytes` to
    `max_bytes` bytes (what the services' secret checks accept)."""
    b64 = "[A-Za-z0-9+/]"
    endings = {0: "", 1: f"{b64}{{2}}==", 2: f"{b64}{{3}}="}  # bytes past whole groups of 3
    options = []
    for extra, ending in endings.items():
        fewest = max(0, -(-(min_bytes - extra) // 3))
        most = (max_bytes - extra) // 3
        if fewest <= most:
            options.append(f"(?:{b64}{{4}}){{{fewest},{most}}}{ending}")
    return "^whsec_(?:" + "|".join(options) + ")$"


DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Malformed request: a body that is not JSON we read (nested too deep, a key named "
    "twice, NaN, not UTF-8), a NUL in the URL, a bad header value.",
    401: "No API key, or one that is not valid or has been revoked.",
    403: "The API key lacks the scope this operation needs.",
    404: "Not found: no such id (another organisation's is not found either).",
    409: "Conflict with the current state.",
    413: "The body is larger than the service accepts (MYOTRIAGE_MAX_REQUEST_BYTES).",
    415: "The body is not JSON (send 'Content-Type: application/json').",
    422: "Invalid input: `errors` names every bad field.",
    429: "Too many requests (per API key, per address, or failed authentications): wait "
    "`Retry-After` seconds.",
    500: "An unexpected error, logged with the request_id; the answer reveals nothing internal.",
}
# Answered by the app's own handlers whatever the route: problem+json on FHIR routes too.
_APP_WIDE: Final = frozenset({429, 500})
_HEADERS: Final[dict[int, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "How to authenticate (RFC 6750).",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds until the limit's window ends.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def error_response(
    status: int, *media_types: str, description: str | None = None
) -> dict[str, Any]:
    """An error response of `status` whose body is one of `media_types` (problem+json, or an
    OperationOutcome as application/fhir+json): for a view whose error may come in either."""
    content = {
        media_type: {"schema": OUTCOME_SCHEMA if media_type == FHIR_MEDIA_TYPE else PROBLEM_SCHEMA}
        for media_type in media_types or (PROBLEM_MEDIA_TYPE,)
    }
    return {
        "description": description or DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        "content": content,
    }


def fhir_resource_response(description: str) -> dict[str, Any]:
    """A success response whose body is a FHIR resource (application/fhir+json)."""
    return {
        "description": description,
        "content": {FHIR_MEDIA_TYPE: {"schema": FHIR_RESOURCE_SCHEMA}},
    }


class DocumentedApi(flask_smorest.Api):
    """flask-smorest's Api whose OpenAPI lists every operation's errors (`ErrorResponses`),
    without flask-smorest's own error body (`Error`) that these services never send."""

    ERROR_SCHEMA = ProblemSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def __init__(self, app: Flask) -> None:
        super().__init__(app, spec_kwargs={"extra_plugins": [ErrorResponses()]})
        self.ma_plugin.converter.add_attribute_function(enforced_rules)


def enforced_rules(
    converter: Any, field: Field, ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """apispec attribute function: what `field` enforces that apispec cannot read from its type
    and validators, so that a request the OpenAPI calls valid is one the API accepts: the plain
    text rule of StrictString, and the field's `json_schema` metadata (over what apispec
    derived: FindingsField's known codes)."""
    rules: dict[str, Any] = {}
    if isinstance(field, StrictString) and not {"pattern", "enum"} & set(ret):
        rules["pattern"] = PLAIN_TEXT_PATTERN
    rules.update(field.metadata.get(JSON_SCHEMA_METADATA, {}))
    return rules


class ErrorResponses(BasePlugin):
    """Adds the errors each operation can answer, with their bodies (see the module doc)."""

    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        spec.components.schema(PROBLEM_SCHEMA, schema=ProblemSchema)
        spec.components.schema(OUTCOME_SCHEMA, OPERATION_OUTCOME, lazy=True)
        spec.components.schema(FHIR_RESOURCE_SCHEMA, FHIR_RESOURCE, lazy=True)

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        rule = kwargs.get("rule")
        fhir = (path or "").startswith(FHIR_PATH_PREFIX)
        for operation in (operations or {}).values():
            statuses = {400, 500}
            if rule is None or rule.endpoint not in EXEMPT_ENDPOINTS:
                statuses.add(429)
            if operation.get("security"):
                statuses |= {401, 403}
            if rule is not None and rule.arguments:
                statuses.add(404)
            if "requestBody" in operation:
                statuses |= {413, 422}
            operation["responses"] = _with_errors(operation.get("responses", {}), statuses, fhir)


def _with_errors(responses: dict[Any, Any], statuses: set[int], fhir: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, response in responses.items():
        if str(code) == "default":
            continue
        if str(code).isdigit() and int(code) >= 400:
            response = _error_body(int(code), response, fhir)
        out[str(code)] = response
    for status in statuses:
        out.setdefault(str(status), _error_body(status, None, fhir))
    return dict(sorted(out.items()))


def _error_body(status: int, declared: Any, fhir: bool) -> Any:
    """The declared error response with our body, unless it documents content of its own."""
    if isinstance(declared, dict) and "content" in declared:
        return declared
    media_type = FHIR_MEDIA_TYPE if fhir and status not in _APP_WIDE else PROBLEM_MEDIA_TYPE
    response = error_response(status, media_type)
    if status in _HEADERS:
        response["headers"] = deepcopy(_HEADERS[status])
    # A view's own description is kept; a flask-smorest component name (a str) or $ref is not.
    if isinstance(declared, dict) and declared.get("description") and "$ref" not in declared:
        response = {**declared, **response, "description": declared["description"]}
    return response

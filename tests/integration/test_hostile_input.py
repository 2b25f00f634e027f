"""Hostile input, sent the way an attacker would, to every way a report comes in: the API, the
FHIR endpoint and the signed webhook. Every answer is a 4xx that says what is wrong
(problem+json, or an OperationOutcome where the endpoint speaks FHIR), never a 500, never an
answer much bigger than the question, and nothing is stored."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from services.intake.fhir_questionnaire import CODE_SYSTEM_BASE, QUESTIONNAIRE_URL
from services.reporting.app import create_app as create_reporting
from services.reporting.cds_cards import PATIENT_VIEW_SERVICE_ID
from shared.config import Settings
from shared.models import (
    Assessment,
    CallbackSubscription,
    CdsFeedback,
    FhirQuestionnaireResponse,
    IdempotencyRecord,
    OutboxMessage,
)
from tests.factories import report

PROBLEM = "application/problem+json"
FHIR = "application/fhir+json"
JSON = "application/json"
MAX_BODY = 64 * 1024  # MYOTRIAGE_MAX_REQUEST_BYTES in the test settings (the default)
# No answer may be much bigger than the largest question.
MAX_ANSWER = 3 * MAX_BODY

Case = tuple[str, bytes, str | None]  # (name, body, Content-Type)


# ---- Bodies ---------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _raw(text: str) -> bytes:
    """JSON written by hand: literals json.dumps would never produce."""
    return text.encode()


def _report(**changes: Any) -> dict[str, Any]:
    body = report()
    body["patient"] = {**body["patient"], "id": "MRN-HOSTILE-1"}
    body.update(changes)
    return body


def _report_with_patient_id(patient_id: str) -> bytes:
    return _json(_report(patient={"id": patient_id, "age": 58}))


def _report_text(**raw_values: str) -> bytes:
    """The report with fields replaced by raw JSON text (for 1e400, NaN and the like)."""
    text = json.dumps(_report(**{name: "@@" + name for name in raw_values}))
    for name, value in raw_values.items():
        text = text.replace(f'"@@{name}"', value)
    return text.encode()


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _questionnaire_response(
    *extra: dict[str, Any], subject: str = "Patient/MRN-HOSTILE-2"
) -> dict[str, Any]:
    """A completed QuestionnaireResponse that is accepted as it is (see the control test)."""

    def coded(field: str, code: str) -> dict[str, Any]:
        return {"valueCoding": {"system": CODE_SYSTEM_BASE + field, "code": code}}

    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": QUESTIONNAIRE_URL,
        "subject": {"reference": subject},
        "item": [
            {
                "linkId": "patient",
                "item": [{"linkId": "patient.age", "answer": [{"valueInteger": 44}]}],
            },
            {"linkId": "complaints", "answer": [coded("complaints", "cramps")]},
            {"linkId": "onset_days", "answer": [{"valueDecimal": 3}]},
            {"linkId": "course", "answer": [coded("course", "unchanged")]},
            *extra,
        ],
    }


def _qr_text(answer_text: str, link_id: str = "onset_days") -> bytes:
    """The response with one answer's JSON replaced by raw text."""
    resource = _questionnaire_response()
    for item in resource["item"]:
        if item["linkId"] == link_id:
            item["answer"] = "@@answer"
    return json.dumps(resource).replace('"@@answer"', answer_text).encode()


def _nested_groups(depth: int) -> bytes:
    """The response with a free_text answer inside `depth` nested groups (written as text: the
    json module cannot write what it cannot read)."""
    inner = '{"linkId": "free_text", "answer": [{"valueString": "x"}]}'
    groups = '{"linkId": "group", "item": [' * depth + inner + "]}" * depth
    text = json.dumps(_questionnaire_response({"linkId": "@@groups"}))
    return text.replace('{"linkId": "@@groups"}', groups).encode()


def _duplicate_key(body: bytes, key: str) -> bytes:
    """`body` (a JSON object) with `key` given a first, overridden value."""
    return b'{"' + key.encode() + b'": null, ' + body[1:]


def _padded(body: dict[str, Any], size: int) -> bytes:
    """`body` grown past `size` bytes with long free text (valid but for its size)."""
    return _json({**body, "free_text": "x" * size})


def _findings(count: int) -> bytes:
    return _json(_report(findings={f"k{i}": True for i in range(count)}))


_LONG = "x" * 60_000  # every field at once would pass 64 KB: one at a time


def _long_everywhere() -> list[Case]:
    base = _report()
    cases: list[Case] = []
    for path in (
        "patient.id",
        "patient.sex",
        "complaints.0",
        "course",
        "weakness_distribution",
        "medications.0",
        "conditions.0",
        "free_text",
    ):
        body = json.loads(json.dumps(base))
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        if isinstance(target, list):
            target[int(last)] = _LONG
        else:
            target[last] = _LONG
        cases.append((f"long-{path}", _json(body), JSON))
    cases.append(("long-finding-code", _json(_report(findings={_LONG: True})), JSON))
    cases.append(("long-unknown-field", _json({**base, _LONG: 1}), JSON))
    return cases


# Whatever the endpoint: the JSON itself, the envelope around it.
GENERIC_CASES: list[Case] = [
    ("deep-array-33", _raw(_nested(33)), JSON),
    ("deep-array-5000", _raw(_nested(5000)), JSON),
    ("deep-array-30000", _raw(_nested(30_000)), JSON),
    ("deep-object-5000", _raw('{"a":' * 5000 + "1" + "}" * 5000), JSON),
    ("deep-unclosed", _raw("[" * 20_000), JSON),
    ("deep-in-a-string-then-deep", _raw('["' + "[" * 100 + '", ' + _nested(40) + "]"), JSON),
    ("not-utf8", b'{"patient": {"id": "\xff\xfe\xc3\x28", "age": 58}}', JSON),
    ("utf16", json.dumps(_report()).encode("utf-16"), JSON),
    ("lone-surrogate", _raw('{"free_text": "\\ud800"}'), JSON),
    ("nul-escape", _raw('{"free_text": "a\\u0000b"}'), JSON),
    ("raw-control-character", b'{"free_text": "a\x01b"}', JSON),
    ("top-level-array", _raw("[1, 2]"), JSON),
    ("top-level-string", _raw('"report"'), JSON),
    ("top-level-number", _raw("42"), JSON),
    ("top-level-true", _raw("true"), JSON),
    ("top-level-null", _raw("null"), JSON),
    ("nan-literal", _raw("NaN"), JSON),
    ("infinity-literal", _raw("[Infinity, -Infinity]"), JSON),
    ("integer-of-5000-digits", _raw("1" * 5000), JSON),
    ("empty-body", b"", JSON),
    ("whitespace-body", b"   \n\t ", JSON),
    ("truncated", _json(_report())[:-5], JSON),
    ("trailing-garbage", _json(_report()) + b"}", JSON),
    ("two-documents", _json(_report()) + _json(_report()), JSON),
    ("over-64kb", _padded(_report(), 70 * 1024), JSON),
    ("text-plain", _json(_report()), "text/plain"),
    ("form", b"patient=1&age=58", "application/x-www-form-urlencoded"),
    ("multipart", b"--x\r\n\r\n{}\r\n--x--", "multipart/form-data; boundary=x"),
    ("xml", b"<report/>", "application/xml"),
    ("no-content-type", _json(_report()), None),
]

# A v1 report with one hostile part.
REPORT_CASES: list[Case] = [
    *[
        (f"patient-id-{name}", _report_with_patient_id(value), JSON)
        for name, value in [
            ("trailing-newline", "MRN-1\n"),
            ("trailing-crlf", "MRN-1\r\n"),
            ("trailing-cr", "MRN-1\r"),
            ("leading-newline", "\nMRN-1"),
            ("line-separator", "MRN-1\u2028"),
            ("paragraph-separator", "MRN-1\u2029"),
            ("next-line", "MRN-1\u0085"),
            ("tab", "MRN-1\t"),
            ("nul", "MRN-1\x00"),
            ("65-chars", "M" * 65),
            ("spaces", " " * 10),
            ("empty", ""),
            ("fullwidth-digit", "MRN-\uff11"),
            ("bidi-override", "MRN-\u202e1"),
            ("sql", "1' OR '1'='1"),
        ]
    ],
    ("duplicate-key", _duplicate_key(_json(_report()), "patient"), JSON),
    ("duplicate-finding", _raw('{"findings": {"twitching": true, "twitching": false}}'), JSON),
    ("onset-1e400", _report_text(onset_days="1e400"), JSON),
    ("onset-minus-1e400", _report_text(onset_days="-1e400"), JSON),
    ("onset-10-to-400", _report_text(onset_days="1" + "0" * 400), JSON),
    ("onset-nan", _report_text(onset_days="NaN"), JSON),
    ("glucose-infinity", _report_text(glucose_mmol_l="Infinity"), JSON),
    ("pain-1e400", _report_text(pain_level="1e400"), JSON),
    (
        "age-10-to-400",
        _raw(json.dumps(_report()).replace('"age": 58', '"age": 1' + "0" * 400)),
        JSON,
    ),
    ("deep-free-text", _report_text(free_text=_nested(40, '"x"')), JSON),
    ("null-report-fields", _json({key: None for key in _report()}), JSON),
    ("null-patient-fields", _json(_report(patient={"id": None, "age": None, "sex": None})), JSON),
    ("null-complaint", _json(_report(complaints=[None])), JSON),
    ("null-finding", _json(_report(findings={"twitching": None})), JSON),
    ("null-findings", _json(_report(findings=None)), JSON),
    ("findings-10000-keys", _findings(10_000), JSON),
    ("findings-4000-keys", _findings(4_000), JSON),
    ("findings-as-list", _json(_report(findings=[["twitching", True]])), JSON),
    *_long_everywhere(),
    *[
        (f"free-text-{name}", _json(_report(free_text=f"cramps {value} at night")), JSON)
        for name, value in [
            ("nul", "\x00"),
            ("bell", "\x07"),
            ("escape-sequence", "\x1b[2J\x1b[31m"),
            ("delete", "\x7f"),
            ("c1-control", "\x85\x9b"),
            ("rlo", "\u202e"),
            ("lre", "\u202a"),
            ("rli", "\u2067"),
            ("pdi", "\u2069"),
        ]
    ],
    ("medication-rlo", _json(_report(medications=["statin \u202egnirts"])), JSON),
    ("condition-escape", _json(_report(conditions=["diabetes\x1b[0m"])), JSON),
]

# A QuestionnaireResponse with one hostile part.
QR_CASES: list[Case] = [
    ("qr-deep-groups-40", _nested_groups(40), FHIR),
    ("qr-deep-groups-1000", _nested_groups(1000), FHIR),
    ("qr-decimal-1e400", _qr_text('[{"valueDecimal": 1e400}]'), FHIR),
    ("qr-decimal-nan", _qr_text('[{"valueDecimal": NaN}]'), FHIR),
    (
        "qr-age-10-to-400",
        _raw(
            json.dumps(_questionnaire_response()).replace(
                '"valueInteger": 44', '"valueInteger": 1' + "0" * 400
            )
        ),
        FHIR,
    ),
    ("qr-subject-newline", _json(_questionnaire_response(subject="Patient/MRN-1\n")), FHIR),
    ("qr-subject-nul", _json(_questionnaire_response(subject="Patient/MRN-1\x00")), FHIR),
    (
        "qr-patient-id-newline",
        _json(
            _questionnaire_response(
                {"linkId": "patient.id", "answer": [{"valueString": "MRN-1\n"}]}
            )
        ),
        FHIR,
    ),
    (
        "qr-free-text-rlo",
        _json(
            _questionnaire_response(
                {"linkId": "free_text", "answer": [{"valueString": "weak \u202e"}]}
            )
        ),
        FHIR,
    ),
    (
        "qr-free-text-long",
        _json(_questionnaire_response({"linkId": "free_text", "answer": [{"valueString": _LONG}]})),
        FHIR,
    ),
    ("qr-duplicate-key", _duplicate_key(_json(_questionnaire_response()), "status"), FHIR),
    ("qr-null-everything", _json({key: None for key in _questionnaire_response()}), FHIR),
    ("qr-null-items", _json({**_questionnaire_response(), "item": [None]}), FHIR),
    ("qr-null-answer", _qr_text("[null]"), FHIR),
    ("qr-answer-object", _qr_text('{"valueDecimal": 3}'), FHIR),
    (
        "qr-many-unknown-items",
        _json(_questionnaire_response(*({"linkId": f"x{i}"} for i in range(3000)))),
        FHIR,
    ),
    ("qr-other-resource", _json({"resourceType": "Patient", "id": "p1"}), FHIR),
    ("qr-over-64kb", _padded(_questionnaire_response(), 70 * 1024), FHIR),
]


def _ids(cases: list[Case]) -> list[str]:
    return [name for name, _, _ in cases]


# ---- Looking at what came back and what was stored -------------------------------------------


def stored(sessions: Any) -> tuple[int, ...]:
    with sessions() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (
                Assessment,
                OutboxMessage,
                IdempotencyRecord,
                FhirQuestionnaireResponse,
                CallbackSubscription,
                CdsFeedback,
            )
        )


def assert_problem(response: Any) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    assert response.mimetype == PROBLEM, response.mimetype
    problem = json.loads(response.get_data())
    assert problem["status"] == response.status_code and problem["title"]
    assert len(response.get_data()) <= MAX_ANSWER


def assert_operation_outcome(response: Any) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    assert response.mimetype == FHIR, response.mimetype
    outcome = json.loads(response.get_data())
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    assert len(response.get_data()) <= MAX_ANSWER


def assert_expected_status(name: str, response: Any) -> None:
    """Where the status is certain, it is that one; elsewhere any 4xx will do."""
    expected = None
    if "over-64kb" in name or name == "findings-10000-keys":
        expected = 413
    elif name in ("text-plain", "form", "multipart", "xml", "no-content-type"):
        expected = 415
    elif name.startswith(("deep-", "qr-deep-")) or "duplicate-" in name or "nan" in name:
        expected = 400
    elif name.startswith("patient-id-") and name != "patient-id-nul":
        expected = 422
    if expected is not None:
        assert response.status_code == expected, (name, response.get_data()[:300])


def _headers(content_type: str | None, extra: dict[str, str]) -> dict[str, str]:
    return {**extra, **({"Content-Type": content_type} if content_type else {})}


# ---- The API and FHIR -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    GENERIC_CASES + REPORT_CASES,
    ids=_ids(GENERIC_CASES + REPORT_CASES),
)
def test_the_api_refuses_hostile_reports_with_problem_json(
    intake: Any,
    auth: dict[str, str],
    sessions: Any,
    name: str,
    body: bytes,
    content_type: str | None,
) -> None:
    before = stored(sessions)
    response = intake.post("/v1/assessments", data=body, headers=_headers(content_type, auth))
    assert_problem(response)
    assert_expected_status(name, response)
    assert stored(sessions) == before


@pytest.mark.parametrize(
    ("name", "body", "content_type"), GENERIC_CASES + QR_CASES, ids=_ids(GENERIC_CASES + QR_CASES)
)
def test_fhir_refuses_hostile_responses_with_an_operation_outcome(
    intake: Any,
    auth: dict[str, str],
    sessions: Any,
    name: str,
    body: bytes,
    content_type: str | None,
) -> None:
    if content_type == JSON:
        content_type = FHIR
    before = stored(sessions)
    response = intake.post(
        "/fhir/QuestionnaireResponse", data=body, headers=_headers(content_type, auth)
    )
    assert_operation_outcome(response)
    assert_expected_status(name, response)
    assert stored(sessions) == before


def test_the_untouched_bodies_are_accepted(
    intake: Any, auth: dict[str, str], integration: dict[str, Any]
) -> None:
    """The control: each hostile case differs from an accepted body only by its hostile part."""
    api = intake.post("/v1/assessments", json=_report(), headers=auth)
    assert api.status_code == 202, api.get_json()
    fhir = intake.post(
        "/fhir/QuestionnaireResponse",
        data=_json(_questionnaire_response()),
        headers={**auth, "Content-Type": FHIR},
    )
    assert fhir.status_code == 202, fhir.get_json()
    hook = send(intake, integration, _json(_report()), JSON)
    assert hook.status_code == 202, hook.get_json()
    # Brackets inside strings are text, not nesting.
    brackets = intake.post("/v1/assessments", json=_report(free_text="[{" * 1000), headers=auth)
    assert brackets.status_code == 202, brackets.get_json()


# ---- The signed webhook -----------------------------------------------------------------------


@pytest.fixture
def integration(intake: Any, auth: dict[str, str]) -> dict[str, Any]:
    response = intake.post(
        "/v1/admin/integrations", json={"name": f"hostile-{uuid.uuid4().hex[:8]}"}, headers=auth
    )
    assert response.status_code == 201
    return response.get_json()  # type: ignore[no-any-return]


def webhook_headers(secret: str, body: bytes, **overrides: str) -> dict[str, str]:
    """Standard Webhooks headers signing `body`; bodies that are not text get a well-formed
    signature that matches nothing."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    at = datetime.now(UTC)
    try:
        signature = Webhook(secret).sign(webhook_id, at, body.decode("utf-8"))
    except UnicodeDecodeError:
        signature = "v1," + base64.b64encode(bytes(32)).decode()
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
    return {**headers, **overrides}


def send(
    intake: Any, integration: dict[str, Any], body: bytes, content_type: str | None, **headers: str
) -> Any:
    signed = webhook_headers(integration["secret"], body, **headers)
    return intake.post(
        f"/v1/webhooks/ehr/{integration['id']}",
        data=body,
        headers=_headers(content_type, signed),
    )


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    GENERIC_CASES + REPORT_CASES + QR_CASES,
    ids=_ids(GENERIC_CASES + REPORT_CASES + QR_CASES),
)
def test_the_webhook_refuses_hostile_bodies_even_when_signed(
    intake: Any,
    integration: dict[str, Any],
    sessions: Any,
    name: str,
    body: bytes,
    content_type: str | None,
) -> None:
    before = stored(sessions)
    response = send(intake, integration, body, content_type)
    # The envelope's errors are problem+json; a FHIR body's content errors an OperationOutcome.
    if response.mimetype == FHIR:
        assert_operation_outcome(response)
    else:
        assert_problem(response)
    assert_expected_status(name, response)
    assert stored(sessions) == before


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "1" * 400),
        ("webhook-timestamp", "9" * 13),
        ("webhook-timestamp", "1e10"),
        ("webhook-timestamp", "-1"),
        ("webhook-timestamp", "+1700000000"),
        ("webhook-timestamp", "\uff11\uff17\uff10\uff10"),  # fullwidth digits: isdigit() is True
        ("webhook-timestamp", "\u00b2"),
        ("webhook-signature", "v1," + "A" * 5000),
        ("webhook-signature", " ".join(["v1,AAAA"] * 1000)),
        ("webhook-id", "m" * 256),
        ("webhook-id", "msg\x7f1"),
        ("webhook-id", "msg_\u00e9"),
        ("webhook-id", ""),
    ],
)
def test_malformed_webhook_headers_are_a_400_before_anything_else(
    intake: Any, integration: dict[str, Any], sessions: Any, header: str, value: str
) -> None:
    before = stored(sessions)
    response = send(intake, integration, _json(_report()), JSON, **{header: value})
    assert response.status_code == 400
    assert_problem(response)
    assert stored(sessions) == before


def test_an_integration_named_with_control_characters_is_unknown(
    intake: Any, sessions: Any
) -> None:
    body = _json(_report())
    for ref in ("%00abc", "abc%01", "%7f"):
        response = intake.post(
            f"/v1/webhooks/ehr/{ref}",
            data=body,
            headers=_headers(JSON, webhook_headers("whsec_" + "A" * 44, body)),
        )
        assert response.status_code in (400, 401)
        assert_problem(response)


# ---- Headers of the API -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 256, "", "key\x01", "key\x7f", "key\t", "cl\u00e9"])
@pytest.mark.parametrize("path", ["/v1/assessments", "/fhir/QuestionnaireResponse"])
def test_a_bad_idempotency_key_is_a_400(
    intake: Any, auth: dict[str, str], sessions: Any, key: str, path: str
) -> None:
    before = stored(sessions)
    body = _json(_report()) if path == "/v1/assessments" else _json(_questionnaire_response())
    response = intake.post(
        path, data=body, headers={**auth, "Content-Type": JSON, "Idempotency-Key": key}
    )
    assert response.status_code == 400
    if path.startswith("/fhir"):
        assert_operation_outcome(response)
    else:
        assert_problem(response)
    assert stored(sessions) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer " + "x" * 10_000},
        {"Authorization": "Bearer mt_" + "a" * 300},
        {"X-API-Key": "k" * 10_000},
        {"Authorization": "Basic " + "x" * 10_000},
    ],
    ids=["long-bearer", "long-key-shape", "long-x-api-key", "long-basic"],
)
def test_an_oversized_credential_is_a_401(intake: Any, headers: dict[str, str]) -> None:
    response = intake.post("/v1/assessments", json=_report(), headers=headers)
    assert response.status_code == 401
    assert_problem(response)


def test_nul_in_a_url_is_a_400_not_a_database_error(intake: Any, auth: dict[str, str]) -> None:
    for url in (
        "/v1/assessments/%00",
        "/fhir/QuestionnaireResponse/abc%00",
        "/v1/assessments/x?y=%00",
    ):
        response = intake.get(url, headers=auth)
        assert 400 <= response.status_code < 500, url


# ---- Authentication before the body ----------------------------------------------------------


NO_KEY_BODIES: list[Case] = [
    ("invalid-report", _json({"patient": {"age": 3}}), JSON),
    ("deep", _raw(_nested(5000)), JSON),
    ("nan", _raw("NaN"), JSON),
    ("not-json", b"{not json", JSON),
    ("not-utf8", b"\xff\xfe", JSON),
    ("over-64kb", _padded(_report(), 70 * 1024), JSON),
    ("text-plain", b"hello", "text/plain"),
]


@pytest.mark.parametrize(("name", "body", "content_type"), NO_KEY_BODIES, ids=_ids(NO_KEY_BODIES))
@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer mt_00000000_not-a-key"}],
    ids=["no-key", "wrong-key"],
)
def test_without_a_valid_key_the_answer_is_401_whatever_the_body(
    intake: Any,
    reporting: Any,
    sessions: Any,
    name: str,
    body: bytes,
    content_type: str | None,
    credentials: dict[str, str],
) -> None:
    before = stored(sessions)
    headers = _headers(content_type, credentials)
    for client, path in (
        (intake, "/v1/assessments"),
        (intake, "/fhir/QuestionnaireResponse"),
        (intake, "/v1/admin/integrations"),
        (intake, "/v1/admin/integrations/some-id/secrets"),
        (reporting, "/v1/subscriptions"),
        (reporting, "/v1/subscriptions/some-id/disable"),
    ):
        response = client.post(path, data=body, headers=headers)
        assert response.status_code == 401, (path, response.status_code)
        if path.startswith("/fhir"):
            assert_operation_outcome(response)
        else:
            assert_problem(response)
    queue = reporting.get("/v1/reports/queue?limit=nope&level=" + "x" * 1000, headers=headers)
    assert queue.status_code == 401
    assert stored(sessions) == before


# ---- Reporting: bodies read by flask-smorest and by CDS Hooks ---------------------------------


_CALLBACK = '{"callback_url": "https://ehr.example/cb", '


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_raw(_nested(5000)), id="deep-5000"),
        pytest.param(_raw('{"callback_url": ' + _nested(5000, '"x"') + "}"), id="deep-object"),
        pytest.param(
            _raw(_CALLBACK + '"description": ' + _nested(100, '"x"') + "}"),
            id="deep-in-description",
        ),
        pytest.param(_raw(_CALLBACK + '"description": NaN}'), id="nan"),
        pytest.param(b'{"callback_url": "\xff"}', id="not-utf8"),
        pytest.param(
            _raw(_CALLBACK + '"callback_url": "https://b.example/"}'),
            id="duplicate-key",
        ),
        pytest.param(_raw("null"), id="null"),
        pytest.param(_raw("[]"), id="array"),
        pytest.param(b"", id="empty"),
        pytest.param(_json({"callback_url": "https://ehr.example/cb", "x": _LONG * 2}), id="70kb"),
    ],
)
def test_subscriptions_refuse_hostile_bodies(
    reporting: Any, make_key: Callable[..., str], sessions: Any, body: bytes
) -> None:
    before = stored(sessions)
    headers = {"Authorization": f"Bearer {make_key('callbacks:manage')}", "Content-Type": JSON}
    response = reporting.post("/v1/subscriptions", data=body, headers=headers)
    assert_problem(response)
    assert stored(sessions) == before


ISSUER = "https://hostile-ehr.example"
BASE = "http://reporting.test"  # the reporting_base_url of the test settings


@pytest.fixture(scope="module")
def cds_key() -> tuple[Any, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return key, {**jwk, "kid": "hostile-1", "use": "sig", "alg": "ES384"}


@pytest.fixture(scope="module")
def cds(settings: Settings, cds_key: tuple[Any, dict[str, Any]]) -> Iterator[Any]:
    issuers = [{"iss": ISSUER, "jwks": {"keys": [cds_key[1]]}}]
    app = create_reporting(settings.with_overrides(cds_issuers=json.dumps(issuers)))
    app.config["TESTING"] = True
    yield app.test_client()


def _cds_auth(key: Any, url: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    token = jwt.encode(claims, key, algorithm="ES384", headers={"kid": "hostile-1"})
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("deep-5000", _raw(_nested(5000))),
        (
            "deep-prefetch",
            _raw('{"hook": "patient-view", "prefetch": ' + _nested(5000, "{}") + "}"),
        ),
        ("nan", _raw('{"hook": "patient-view", "hookInstance": NaN}')),
        ("duplicate-key", _raw('{"hook": "x", "hook": "patient-view"}')),
        ("not-utf8", b'{"hook": "\xff"}'),
        ("array", _raw("[]")),
        (
            "patient-id-newline",
            _json(
                {"hook": "patient-view", "hookInstance": "h", "context": {"patientId": "p\n" * 40}}
            ),
        ),
    ],
)
@pytest.mark.parametrize("path", ["", "/feedback"])
def test_cds_hooks_refuse_hostile_bodies(
    cds: Any, cds_key: tuple[Any, dict[str, Any]], sessions: Any, name: str, body: bytes, path: str
) -> None:
    url = f"/cds-services/{PATIENT_VIEW_SERVICE_ID}{path}"
    before = stored(sessions)
    headers = {**_cds_auth(cds_key[0], BASE + url), "Content-Type": JSON}
    response = cds.post(url, data=body, headers=headers)
    assert_problem(response)
    assert stored(sessions) == before


def test_cds_hooks_without_a_token_is_a_bare_401_whatever_the_body(cds: Any) -> None:
    url = f"/cds-services/{PATIENT_VIEW_SERVICE_ID}"
    response = cds.post(url, data=_raw(_nested(5000)), headers={"Content-Type": JSON})
    assert response.status_code == 401 and response.get_data() == b""

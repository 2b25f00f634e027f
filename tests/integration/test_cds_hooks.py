"""The CDS Hooks service, called the way an EHR calls it: JWTs made by PyJWT with real ES384 and
RS384 keys, one issuer's JWKS served by a real HTTP server on loopback, the other inline."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import func, select, update

from services.reporting.app import create_app as create_reporting
from services.reporting.cds_cards import PATIENT_VIEW_SERVICE_ID
from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared.config import Settings
from shared.db import transaction
from shared.models import DEFAULT_TENANT_ID, Assessment, AuditEvent, CdsFeedback, utcnow
from tests.factories import DOMS, STROKE, report

BASE = "http://reporting.test"  # the reporting_base_url of the test settings
SERVICE_URL = f"{BASE}/cds-services/{PATIENT_VIEW_SERVICE_ID}"
EHR = "https://ehr.example"  # keys from a JWKS URL
OTHER_EHR = "https://other-ehr.example"  # keys inline


class JwksServer:
    """The EHR's published JWKS on loopback; counts fetches to show we cache."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.fetches = 0
        body = json.dumps(document).encode()
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server_self.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Ehr:
    """An EHR with a key pair: mints CDS Hooks JWTs the way the spec describes."""

    def __init__(self, issuer: str, algorithm: str, kid: str) -> None:
        self.issuer, self.algorithm, self.kid = issuer, algorithm, kid
        if algorithm == "ES384":
            self.key: Any = ec.generate_private_key(ec.SECP384R1())
            jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": kid, "use": "sig", "alg": algorithm}

    def token(self, aud: str = SERVICE_URL, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "client-42",
            "aud": aud,
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": overrides.pop("kid", self.kid), "typ": "JWT"}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)

    def auth(self, aud: str = SERVICE_URL, **overrides: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(aud, **overrides)}"}


@pytest.fixture(scope="module")
def ehr() -> Ehr:
    return Ehr(EHR, "ES384", "ehr-es384-1")


@pytest.fixture(scope="module")
def other_ehr() -> Ehr:
    return Ehr(OTHER_EHR, "RS384", "other-rs384-1")


@pytest.fixture(scope="module")
def jwks(ehr: Ehr) -> Iterator[JwksServer]:
    server = JwksServer({"keys": [ehr.jwk]})
    yield server
    server.close()


@pytest.fixture(scope="module")
def cds(settings: Settings, jwks: JwksServer, other_ehr: Ehr) -> Any:
    issuers = [
        {"iss": EHR, "jwks_url": jwks.url},
        {"iss": OTHER_EHR, "jwks": {"keys": [other_ehr.jwk]}},
    ]
    app = create_reporting(settings.with_overrides(cds_issuers=json.dumps(issuers)))
    app.config["TESTING"] = True
    return app.test_client()


@functools.cache
def _ruleset() -> Any:
    return load_ruleset()


def scored(sessions: Any, body: dict[str, Any], patient_id: str, days_ago: float = 0) -> str:
    """An assessment for `patient_id`, scored in this process by the real engine."""
    body = {**body, "patient": {**body["patient"], "id": patient_id}}
    with transaction(sessions) as session:
        assessment = Assessment(
            tenant_id=DEFAULT_TENANT_ID,
            report=body,
            patient_ref=patient_id,
            source="api",
            status="queued",
        )
        session.add(assessment)
    assert score_assessment(sessions, _ruleset(), assessment.id).outcome == "scored"
    if days_ago:
        with transaction(sessions) as session:
            session.execute(
                update(Assessment)
                .where(Assessment.id == assessment.id)
                .values(created_at=utcnow() - timedelta(days=days_ago))
            )
    return assessment.id


def hook_call(patient_id: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/7", "patientId": patient_id},
    }


def new_patient() -> str:
    return f"PT-{uuid.uuid4().hex[:12]}"


# ---- Discovery and cards ----------------------------------------------------------------------


def test_discovery_lists_patient_view(cds: Any, ehr: Ehr) -> None:
    response = cds.get("/cds-services", headers=ehr.auth(aud=f"{BASE}/cds-services"))
    assert response.status_code == 200
    [service] = response.get_json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == PATIENT_VIEW_SERVICE_ID


def test_patient_view_shows_the_latest_result_as_a_critical_card(
    cds: Any, ehr: Ehr, sessions: Any
) -> None:
    patient = new_patient()
    assessment_id = scored(sessions, report(STROKE), patient)
    response = cds.post(SERVICE_URL.removeprefix(BASE), json=hook_call(patient), headers=ehr.auth())
    assert response.status_code == 200
    [card] = response.get_json()["cards"]
    assert card["indicator"] == "critical"
    assert len(card["summary"]) < 140 and "ambulance" in card["summary"].lower()
    assert uuid.UUID(card["uuid"])
    assert "Stroke" in card["detail"] and "Source:" in card["detail"]
    assert card["source"]["label"] == "MyoTriage" and card["source"]["url"].startswith("http")
    [link] = card["links"]
    assert link["type"] == "absolute"
    assert link["url"] == f"{BASE}/v1/reports/assessments/{assessment_id}"
    with sessions() as session:
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.assessment_id == assessment_id)
        ).all()
        assert [(a.action, a.actor) for a in audit] == [("cds.patient_view", f"cds:{EHR}")]


def test_the_most_recent_assessment_wins(cds: Any, ehr: Ehr, sessions: Any) -> None:
    patient = new_patient()
    scored(sessions, report(STROKE), patient, days_ago=3)
    scored(sessions, report(DOMS), patient)
    [card] = cds.post(
        SERVICE_URL.removeprefix(BASE), json=hook_call(patient), headers=ehr.auth()
    ).get_json()["cards"]
    assert card["indicator"] == "info" and "Self-care" in card["summary"]


def test_no_recent_result_means_no_cards(cds: Any, ehr: Ehr, sessions: Any) -> None:
    never_seen = new_patient()
    path = SERVICE_URL.removeprefix(BASE)
    assert cds.post(path, json=hook_call(never_seen), headers=ehr.auth()).get_json() == {
        "cards": []
    }
    old = new_patient()
    scored(sessions, report(STROKE), old, days_ago=31)  # outside the 30-day window
    assert cds.post(path, json=hook_call(old), headers=ehr.auth()).get_json() == {"cards": []}


def test_inline_jwks_issuer_with_rs384_is_accepted(cds: Any, other_ehr: Ehr, sessions: Any) -> None:
    patient = new_patient()
    scored(sessions, report(), patient)
    response = cds.post(
        SERVICE_URL.removeprefix(BASE), json=hook_call(patient), headers=other_ehr.auth()
    )
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] in ("info", "warning")


def test_the_jwks_is_fetched_once_and_cached(cds: Any, ehr: Ehr, jwks: JwksServer) -> None:
    path = SERVICE_URL.removeprefix(BASE)
    for _ in range(5):
        assert cds.post(path, json=hook_call(new_patient()), headers=ehr.auth()).status_code == 200
    assert jwks.fetches == 1


def test_bad_requests_after_authentication(cds: Any, ehr: Ehr) -> None:
    unknown = f"{BASE}/cds-services/no-such-service"
    response = cds.post(unknown.removeprefix(BASE), json=hook_call("x"), headers=ehr.auth(unknown))
    assert response.status_code == 404
    no_patient = {"hook": "patient-view", "hookInstance": "1", "context": {}}
    path = SERVICE_URL.removeprefix(BASE)
    assert cds.post(path, json=no_patient, headers=ehr.auth()).status_code == 400


# ---- Authentication ---------------------------------------------------------------------------


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def _rejections(ehr: Ehr, other_ehr: Ehr) -> dict[str, dict[str, str]]:
    now = int(time.time())
    stranger = Ehr(EHR, "ES384", ehr.kid)  # right issuer and kid, wrong private key
    claims = {"iss": EHR, "aud": SERVICE_URL, "iat": now, "exp": now + 60, "jti": "j"}
    hs256 = jwt.encode(claims, "shared-secret-" * 3, algorithm="HS256", headers={"kid": ehr.kid})
    return {
        "no header": {},
        "not bearer": {"Authorization": f"Basic {ehr.token()}"},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "alg none": {
            "Authorization": "Bearer " + _unsigned(claims, {"alg": "none", "kid": ehr.kid})
        },
        "HMAC": {"Authorization": f"Bearer {hs256}"},
        "wrong audience": ehr.auth(aud=f"{BASE}/cds-services"),
        "https audience for an http endpoint": ehr.auth(aud=SERVICE_URL.replace("http", "https")),
        "expired": ehr.auth(iat=now - 600, exp=now - 300),
        "exp too far ahead": ehr.auth(exp=now + 3600),
        "no exp": ehr.auth(exp=None),
        "no jti": ehr.auth(jti=None),
        "issued in the future": ehr.auth(iat=now + 600, exp=now + 660),
        "unknown issuer": ehr.auth(iss="https://evil.example"),
        "unknown kid": ehr.auth(kid="rotated-away"),
        "wrong key": stranger.auth(),
        "other issuer's key": other_ehr.auth(iss=EHR),
    }


REJECTIONS = list(_rejections(Ehr(EHR, "ES384", "x"), Ehr(OTHER_EHR, "RS384", "y")))


@pytest.mark.parametrize("case", REJECTIONS)
def test_any_authentication_failure_is_a_bare_401(
    cds: Any, ehr: Ehr, other_ehr: Ehr, case: str
) -> None:
    headers = _rejections(ehr, other_ehr)[case]
    response = cds.post(SERVICE_URL.removeprefix(BASE), json=hook_call("x"), headers=headers)
    assert response.status_code == 401, case
    assert response.data == b""


def test_a_replayed_token_is_refused(cds: Any, ehr: Ehr) -> None:
    headers = ehr.auth()
    path = SERVICE_URL.removeprefix(BASE)
    assert cds.post(path, json=hook_call("x"), headers=headers).status_code == 200
    again = cds.post(path, json=hook_call("x"), headers=headers)
    assert again.status_code == 401 and again.data == b""


def test_the_jwt_is_never_logged(cds: Any, ehr: Ehr, capsys: Any) -> None:
    good, bad = ehr.token(), ehr.token(aud="https://elsewhere.example/")
    path = SERVICE_URL.removeprefix(BASE)
    for token in (good, bad):
        cds.post(path, json=hook_call("x"), headers={"Authorization": f"Bearer {token}"})
    logs = capsys.readouterr().out
    assert "cds.auth_rejected" in logs
    for token in (good, bad):
        assert token not in logs and token.split(".")[2] not in logs


# ---- CORS -------------------------------------------------------------------------------------


def test_preflight_allows_authorization_and_content_type(cds: Any) -> None:
    response = cds.options(
        SERVICE_URL.removeprefix(BASE),
        headers={
            "Origin": "https://ehr.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://ehr.example")
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_headers_are_on_answers_and_refusals(cds: Any, ehr: Ehr) -> None:
    origin = {"Origin": "https://ehr.example"}
    path = SERVICE_URL.removeprefix(BASE)
    ok = cds.post(path, json=hook_call("x"), headers={**origin, **ehr.auth()})
    refused = cds.post(path, json=hook_call("x"), headers=origin)
    discovery = cds.get("/cds-services", headers=origin)
    for response in (ok, refused, discovery):
        assert response.headers.get("Access-Control-Allow-Origin"), response.status_code


# ---- Feedback ---------------------------------------------------------------------------------


def test_feedback_is_stored_once_however_often_it_is_sent(
    cds: Any, ehr: Ehr, sessions: Any
) -> None:
    patient = new_patient()
    scored(sessions, report(STROKE), patient)
    [card] = cds.post(
        SERVICE_URL.removeprefix(BASE), json=hook_call(patient), headers=ehr.auth()
    ).get_json()["cards"]
    feedback_url = f"{SERVICE_URL}/feedback"
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "seen-already", "system": "https://ehr.example/reasons"},
                    "userComment": "Seen in clinic today",
                },
                "outcomeTimestamp": "2026-11-21T10:15:00Z",
            }
        ]
    }
    for _ in range(2):
        response = cds.post(
            feedback_url.removeprefix(BASE), json=body, headers=ehr.auth(feedback_url)
        )
        assert response.status_code == 200
    with sessions() as session:
        rows = session.scalars(select(CdsFeedback).where(CdsFeedback.card_uuid == card["uuid"]))
        [row] = rows.all()
        assert (row.outcome, row.issuer) == ("overridden", EHR)
        assert row.override_reason["reason"]["code"] == "seen-already"

    accepted = {"feedback": [{**body["feedback"][0], "outcome": "accepted"}]}
    cds.post(feedback_url.removeprefix(BASE), json=accepted, headers=ehr.auth(feedback_url))
    with sessions() as session:
        count = session.scalar(
            select(func.count())
            .select_from(CdsFeedback)
            .where(CdsFeedback.card_uuid == card["uuid"])
        )
        assert count == 2


def test_invalid_feedback_is_a_400_naming_the_field(cds: Any, ehr: Ehr) -> None:
    feedback_url = f"{SERVICE_URL}/feedback"
    body = {"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "yesterday"}]}
    response = cds.post(feedback_url.removeprefix(BASE), json=body, headers=ehr.auth(feedback_url))
    assert response.status_code == 400
    fields = {e["field"] for e in response.get_json()["errors"]}
    assert fields == {"feedback.0.outcome", "feedback.0.outcomeTimestamp"}
    # The service URL is not the feedback URL: aud must be the exact endpoint called.
    wrong_aud = cds.post(feedback_url.removeprefix(BASE), json=body, headers=ehr.auth())
    assert wrong_aud.status_code == 401

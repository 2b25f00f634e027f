"""CDS Hooks 2.0 service: `GET /cds-services`, `POST /cds-services/<id>`, feedback.

The `patient-view` service answers from results already in the database (one indexed query,
never the worker): the patient's most recently submitted assessment from the last
`cds_lookback_days` (30 by default) that has a result. `context.patientId` is matched against
the v1 report's `patient.id`. Every call needs the EHR's signed JWT (services/reporting/cds_auth);
any authentication failure is a bare 401 with an empty body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, current_app, g, request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.reporting.cds_auth import CdsAuthError, CdsJwtVerifier, JtiReplayGuard, load_issuers
from services.reporting.cds_cards import (
    PATIENT_VIEW_SERVICE_ID,
    discovery_document,
    patient_view_card,
)
from shared import repository
from shared.db import transaction
from shared.models import CdsFeedback, utcnow
from shared.problems import Problem
from shared.request_input import json_body
from shared.web import sessions, settings_of

log = structlog.get_logger("myotriage.cds_hooks")

blp = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")

SERVICE_IDS = frozenset({PATIENT_VIEW_SERVICE_ID})
FEEDBACK_OUTCOMES = frozenset({"accepted", "overridden"})
MAX_FEEDBACK_ITEMS = 100


def register_cds_hooks(app: Flask) -> None:
    """Add the CDS Hooks routes and the JWT verifier to the reporting app."""
    settings = settings_of(app)
    issuers = load_issuers(settings.cds_issuers, settings.cds_jwks_cache_seconds)
    app.extensions["myotriage.cds_auth"] = CdsJwtVerifier(
        issuers, JtiReplayGuard(app.extensions["myotriage.redis"])
    )
    app.register_blueprint(blp)


def cds_authenticated(view: Callable[..., Any]) -> Callable[..., Any]:
    """Run `view` only for a valid EHR JWT whose `aud` is the exact URL being called."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verifier: CdsJwtVerifier = current_app.extensions["myotriage.cds_auth"]
        # The public URL, not the one behind the proxy: that is what the EHR signed.
        audience = settings_of().reporting_base_url.rstrip("/") + request.path
        try:
            g.cds_client = verifier.verify(request.headers.get("Authorization"), audience)
        except CdsAuthError as exc:
            log.warning("cds.auth_rejected", reason=exc.reason, route=request.path)
            return _bare_401()
        g.cds_tenant_id = _tenant_id(g.cds_client.tenant_ref)
        if g.cds_tenant_id is None:
            # The issuer's configured tenant does not exist: a configuration mistake, and
            # nothing this EHR may see.
            log.error("cds.tenant_unknown", issuer=g.cds_client.issuer)
            return _bare_401()
        return view(*args, **kwargs)

    return wrapper


@blp.get("")
@cds_authenticated
def discovery() -> Any:
    """The services we offer (one: patient-view)."""
    return discovery_document(settings_of().cds_lookback_days)


@blp.post("/<string:service_id>")
@cds_authenticated
def call_service(service_id: str) -> Any:
    """Answer a hook call with cards from the patient's latest result (or no cards)."""
    _known_service(service_id)
    body = _json_object()
    if body.get("hook") != "patient-view":
        raise Problem(400, "Bad Request", "This service answers the 'patient-view' hook.")
    if not isinstance(body.get("hookInstance"), str):
        raise Problem(400, "Bad Request", "'hookInstance' is required.")
    context = body.get("context")
    if not isinstance(context, dict):
        raise Problem(400, "Bad Request", "'context' with 'patientId' is required.")
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not 0 < len(patient_id) <= 64:
        raise Problem(400, "Bad Request", "'context.patientId' is required.")
    settings = settings_of()
    since = utcnow() - timedelta(days=settings.cds_lookback_days)
    with sessions()() as session:
        # The patient is looked up in the EHR's own tenant only: an equal MRN elsewhere is
        # another organisation's patient.
        latest = repository.scored_for_patient(
            session, g.cds_tenant_id, patient_id, limit=1, since=since
        )
        if not latest:
            return {"cards": []}
        assessment, result = latest[0]
        assessment_id = assessment.id
        card = patient_view_card(
            assessment_id=assessment_id,
            result_id=result.id,
            result=result.result,
            scored_at=result.created_at,
            reporting_url=settings.reporting_base_url,
        )
        _audit(session, assessment_id, context.get("userId"))
    return {"cards": [card]}


@blp.post("/<string:service_id>/feedback")
@cds_authenticated
def feedback(service_id: str) -> Any:
    """Store what clinicians did with our cards; the same feedback twice is stored once."""
    _known_service(service_id)
    items = _json_object().get("feedback")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_FEEDBACK_ITEMS:
        raise Problem(400, "Bad Request", "'feedback' must be a list of 1 to 100 items.")
    parsed = [_feedback_item(item, index) for index, item in enumerate(items)]
    stored = 0
    for item in parsed:
        stored += _store_feedback(service_id, g.cds_tenant_id, g.cds_client.issuer, item)
    log.info("cds.feedback_received", service_id=service_id, items=len(parsed), stored=stored)
    return {}


# ---- Helpers ----------------------------------------------------------------------------------


def _bare_401() -> Response:
    response = Response(b"", status=401)
    response.headers.pop("Content-Type", None)
    response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
    return response


def _known_service(service_id: str) -> None:
    if service_id not in SERVICE_IDS:
        raise Problem(404, "Not Found", "No CDS service has this id; see GET /cds-services.")


def _json_object() -> dict[str, Any]:
    body = json_body(request.get_data(cache=True) or b"null")
    if not isinstance(body, dict):
        raise Problem(400, "Bad Request", "The body must be a JSON object.")
    return body


def _feedback_item(item: Any, index: int) -> dict[str, Any]:
    errors: list[dict[str, Any]] = []

    def bad(name: str, message: str) -> None:
        errors.append(
            {
                "field": f"feedback.{index}.{name}",
                "pointer": f"/feedback/{index}/{name}",
                "message": message,
            }
        )

    if not isinstance(item, dict):
        item = {}
        bad("", "Must be an object.")
    card = item.get("card")
    if not isinstance(card, str) or not 0 < len(card) <= 64:
        bad("card", "The card's uuid is required.")
    outcome = item.get("outcome")
    if outcome not in FEEDBACK_OUTCOMES:
        bad("outcome", "Must be 'accepted' or 'overridden'.")
    moment = _timestamp(item.get("outcomeTimestamp"))
    if moment is None:
        bad("outcomeTimestamp", "An ISO 8601 date-time with a time zone is required.")
    reason = item.get("overrideReason")
    if reason is not None and not isinstance(reason, dict):
        bad("overrideReason", "Must be an object with 'reason' and/or 'userComment'.")
    accepted = item.get("acceptedSuggestions") or []
    if not isinstance(accepted, list) or not all(
        isinstance(s, dict) and isinstance(s.get("id"), str) for s in accepted
    ):
        bad("acceptedSuggestions", "Must be a list of {id}.")
        accepted = []
    if errors:
        raise Problem(400, "Invalid feedback", "Some feedback items are invalid.", errors=errors)
    return {
        "card": card,
        "outcome": outcome,
        "outcome_timestamp": moment,
        "override_reason": reason,
        "accepted_suggestions": [s["id"] for s in accepted],
    }


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC)


def _store_feedback(service_id: str, tenant_id: str, issuer: str, item: dict[str, Any]) -> int:
    """1 if stored, 0 if this exact feedback was already stored."""
    try:
        with transaction(sessions()) as session:
            if repository.cds_feedback_stored(
                session, service_id, item["card"], item["outcome"], item["outcome_timestamp"]
            ):
                return 0
            session.add(
                CdsFeedback(
                    tenant_id=tenant_id,
                    service_id=service_id,
                    card_uuid=item["card"],
                    outcome=item["outcome"],
                    outcome_timestamp=item["outcome_timestamp"],
                    override_reason=item["override_reason"],
                    accepted_suggestions=item["accepted_suggestions"],
                    issuer=issuer[:300],
                )
            )
    except IntegrityError:
        return 0  # the same feedback arriving concurrently: the other copy was stored
    return 1


def _audit(session: Session, assessment_id: str, user_id: Any) -> None:
    # A clinician looked at this patient's result through the EHR: audited like any read.
    repository.record_audit(
        session,
        tenant_id=g.cds_tenant_id,
        actor=f"cds:{g.cds_client.issuer}"[:100],
        action="cds.patient_view",
        assessment_id=assessment_id,
        request_id=g.request_id,
        detail=f"user={user_id}"[:200] if isinstance(user_id, str) else None,
    )
    session.commit()


_TENANTS: dict[str, tuple[float, str | None]] = {}


def _tenant_id(tenant_ref: str) -> str | None:
    """Our tenant's id for an issuer's configured name or id (cached for a minute)."""
    now = time.monotonic()
    hit = _TENANTS.get(tenant_ref)
    if hit is not None and hit[0] > now:
        return hit[1]
    with sessions()() as session:
        tenant = repository.find_tenant(session, tenant_ref)
        tenant_id = tenant.id if tenant is not None else None
    _TENANTS[tenant_ref] = (now + 60.0, tenant_id)
    return tenant_id

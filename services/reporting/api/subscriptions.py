"""`/v1/subscriptions`: EHR endpoints that receive signed result callbacks, and their delivery log.

A subscription belongs to the API key that created it (keys with `admin` see all), which may
own `MYOTRIAGE_CALLBACK_MAX_SUBSCRIPTIONS` active ones. The signing secret is returned once, at
creation, when we generate it; it is never shown again or logged. A callback URL must reach a
public address over https unless the operator allowlists it (shared/callback_destinations.py);
that is checked here and again before every delivery.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import current_app, g, url_for
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates

from shared.auth import require_scope
from shared.callback_destinations import DestinationPolicy, DestinationRefused
from shared.callbacks import (
    EVENT_SCORED,
    EVENT_TYPES,
    deliveries_of,
    delivery_of,
    disable_subscription,
    get_subscription,
    replay_delivery,
    reserve_subscription_slot,
    subscriptions_of,
)
from shared.db import transaction
from shared.models import (
    DELIVERY_DEAD,
    DELIVERY_STATUSES,
    CallbackAttempt,
    CallbackDelivery,
    CallbackSubscription,
)
from shared.openapi import CALLBACK_URL_PATTERN, whsec_pattern
from shared.problems import Problem
from shared.request_input import MAX_LIST_OFFSET
from shared.web import ApiBlueprint, sessions, settings_of

log = structlog.get_logger("myotriage.subscriptions")

blp = ApiBlueprint(
    "subscriptions",
    __name__,
    url_prefix="/v1/subscriptions",
    description="Result callbacks to EHR endpoints (Standard Webhooks signatures), with the "
    "delivery log and replay of dead-lettered deliveries.",
)

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def check_callback_url(url: str, destinations: DestinationPolicy | None = None) -> None:
    """http(s) with a host, no credentials, no fragment; and, given the destination policy, a
    public https address unless allowlisted (a host name is resolved now, and again before
    every delivery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Must be an absolute http:// or https:// URL.")
    if parts.username or parts.password:
        raise ValidationError("Must not carry credentials; the signature authenticates us.")
    if parts.fragment:
        raise ValidationError("Must not have a #fragment.")
    if destinations is not None:
        try:
            destinations.check_subscription_url(url)
        except DestinationRefused as exc:
            raise ValidationError(exc.reason) from None


def callback_destinations() -> DestinationPolicy:
    """This app's destination policy (parsed from the settings when the app was built)."""
    return current_app.extensions["myotriage.callback_destinations"]  # type: ignore[no-any-return]


def check_secret(secret: str) -> None:
    """`whsec_` + base64 of 24 to 64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValidationError("Must start with 'whsec_'.")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("Must be 'whsec_' followed by base64.") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ValidationError(f"Must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes.")


class SubscriptionIn(Schema):
    callback_url = fields.String(
        required=True,
        validate=validate.Length(max=2000),
        metadata={
            "description": "Where to POST events: https, to a public address (http and "
            "internal addresses only where the operator allowlists them). The pattern is the "
            "usual case, a host name; a public address literal is accepted too.",
            "pattern": CALLBACK_URL_PATTERN,
        },
    )
    event_types = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        load_default=lambda: [EVENT_SCORED],
        validate=validate.Length(min=1),
        metadata={"description": "assessment.scored (every result), assessment.emergency."},
    )
    include_fhir = fields.Boolean(
        load_default=False,
        metadata={"description": "Add the RiskAssessment and DetectedIssues as a FHIR Bundle."},
    )
    secret = fields.String(
        load_default=None,
        metadata={
            "description": "Your own whsec_ secret; we generate one when absent.",
            "pattern": whsec_pattern(MIN_SECRET_BYTES, MAX_SECRET_BYTES),
        },
    )
    description = fields.String(load_default=None, validate=validate.Length(max=200))

    @validates("callback_url")
    def _url(self, value: str, **_: Any) -> None:
        check_callback_url(value, callback_destinations())

    @validates("secret")
    def _secret(self, value: str | None, **_: Any) -> None:
        if value is not None:
            check_secret(value)


class SubscriptionOut(Schema):
    id = fields.String(required=True)
    callback_url = fields.String(required=True)
    event_types = fields.List(fields.String())
    include_fhir = fields.Boolean()
    description = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": ["active", "disabled"]})
    created_at = fields.DateTime()
    disabled_at = fields.DateTime(allow_none=True)
    disabled_reason = fields.String(allow_none=True)
    links = fields.Dict(keys=fields.String(), values=fields.String())


class SubscriptionCreatedOut(SubscriptionOut):
    secret = fields.String(
        metadata={"description": "Shown once, only when we generated it. Store it now."}
    )


class SubscriptionListOut(Schema):
    items = fields.List(fields.Nested(SubscriptionOut))


class AttemptOut(Schema):
    attempt = fields.Integer()
    started_at = fields.DateTime()
    duration_ms = fields.Float()
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    outcome = fields.String()


class DeliveryOut(Schema):
    id = fields.String(metadata={"description": "Also the webhook-id header: dedupe on it."})
    subscription_id = fields.String()
    assessment_id = fields.String()
    event_type = fields.String()
    status = fields.String(metadata={"enum": list(DELIVERY_STATUSES)})
    attempts = fields.Integer()
    next_attempt_at = fields.DateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)
    payload = fields.Dict()
    attempt_log = fields.List(fields.Nested(AttemptOut))


class DeliveryListOut(Schema):
    items = fields.List(fields.Nested(DeliveryOut))
    limit = fields.Integer()
    offset = fields.Integer()


class DeliveryArgs(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_LIST_OFFSET))


@blp.route("")
class Subscriptions(MethodView):
    @require_scope("callbacks:manage")
    @blp.arguments(SubscriptionIn)
    @blp.response(201, SubscriptionCreatedOut)
    @blp.alt_response(422, description="Invalid subscription: problem+json naming every field.")
    @blp.alt_response(409, description="The tenant already has the most active subscriptions.")
    def post(self, body: dict[str, Any]) -> Any:
        """Subscribe an endpoint to result events. The generated secret is shown only here."""
        generated = body["secret"] is None
        limit = settings_of().callback_max_subscriptions
        with transaction(sessions()) as session:
            if not reserve_subscription_slot(session, g.caller.tenant_id, limit):
                raise Problem(
                    409,
                    "Too many subscriptions",
                    f"Your organisation already has {limit} active subscriptions, the most "
                    "allowed. Disable one it no longer needs, or ask your MyoTriage "
                    "administrator.",
                    problem_type="subscription-limit",
                )
            subscription = CallbackSubscription(
                tenant_id=g.caller.tenant_id,
                owner_key_id=g.caller.key_id,
                callback_url=body["callback_url"],
                secret=new_secret() if generated else body["secret"],
                event_types=sorted(set(body["event_types"])),
                include_fhir=body["include_fhir"],
                description=body["description"],
            )
            session.add(subscription)
            session.flush()
            out = _subscription_out(subscription)
            if generated:
                out["secret"] = subscription.secret
        log.info("subscription.created", subscription_id=subscription.id)
        location = url_for("subscriptions.Subscription", subscription_id=subscription.id)
        return out, 201, {"Location": location}

    @require_scope("callbacks:manage")
    @blp.response(200, SubscriptionListOut)
    def get(self) -> Any:
        """Your subscriptions (every one of your organisation's for an admin key), newest first."""
        with sessions()() as session:
            owner = None if _is_admin() else g.caller.key_id
            rows = subscriptions_of(session, g.caller.tenant_id, owner)
            return {"items": [_subscription_out(row) for row in rows]}


@blp.route("/<string:subscription_id>")
class Subscription(MethodView):
    @require_scope("callbacks:manage")
    @blp.response(200, SubscriptionOut)
    def get(self, subscription_id: str) -> Any:
        """One subscription (never its secret)."""
        with sessions()() as session:
            return _subscription_out(_owned(session, subscription_id))


@blp.route("/<string:subscription_id>/disable")
class SubscriptionDisable(MethodView):
    @require_scope("callbacks:manage")
    @blp.response(200, SubscriptionOut)
    def post(self, subscription_id: str) -> Any:
        """Stop sending to this endpoint. Deliveries not yet sent become `disabled`."""
        with transaction(sessions()) as session:
            subscription = _owned(session, subscription_id)
            stopped = disable_subscription(session, subscription, "disabled through the API")
            out = _subscription_out(subscription)
        log.info("subscription.disabled", subscription_id=subscription_id, deliveries=stopped)
        return out


@blp.route("/<string:subscription_id>/deliveries")
class Deliveries(MethodView):
    @require_scope("callbacks:manage")
    @blp.arguments(DeliveryArgs, location="query")
    @blp.response(200, DeliveryListOut)
    def get(self, args: dict[str, Any], subscription_id: str) -> Any:
        """The delivery log: each delivery, newest first, with every attempt's status and time."""
        with sessions()() as session:
            _owned(session, subscription_id)
            rows = deliveries_of(
                session,
                subscription_id,
                status=args["status"],
                limit=args["limit"],
                offset=args["offset"],
            )
            return {
                "items": [_delivery_out(d, attempts) for d, attempts in rows],
                "limit": args["limit"],
                "offset": args["offset"],
            }


@blp.route("/<string:subscription_id>/deliveries/<string:delivery_id>/replay")
class DeliveryReplay(MethodView):
    @require_scope("callbacks:manage")
    @blp.response(202, DeliveryOut)
    @blp.alt_response(409, description="Only dead-lettered deliveries can be replayed.")
    def post(self, subscription_id: str, delivery_id: str) -> Any:
        """Send a dead-lettered delivery again now, with a fresh retry budget (same webhook-id)."""
        with transaction(sessions()) as session:
            subscription = _owned(session, subscription_id)
            delivery = delivery_of(session, subscription.id, delivery_id)
            if delivery is None:
                raise Problem(404, "Not Found", "This subscription has no delivery with this id.")
            if subscription.disabled_at is not None:
                raise Problem(409, "Conflict", "The subscription is disabled; nothing is sent.")
            if delivery.status != DELIVERY_DEAD:
                raise Problem(
                    409,
                    "Conflict",
                    f"Only dead-lettered deliveries can be replayed; this one is "
                    f"'{delivery.status}'.",
                )
            replay_delivery(session, delivery)
            session.flush()
            out = _delivery_out(delivery, [])
        log.info("callback.replayed", delivery_id=delivery_id, subscription_id=subscription_id)
        return out


def _is_admin() -> bool:
    return "admin" in g.caller.scopes


def _owned(session: Any, subscription_id: str) -> CallbackSubscription:
    subscription = get_subscription(session, g.caller.tenant_id, subscription_id)
    # Someone else's subscription is "not found": its existence is not ours to reveal. An admin
    # key sees its own tenant's, never another tenant's.
    if subscription is None or (subscription.owner_key_id != g.caller.key_id and not _is_admin()):
        raise Problem(404, "Not Found", "No subscription of yours has this id.")
    return subscription


def _subscription_out(subscription: CallbackSubscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "callback_url": subscription.callback_url,
        "event_types": subscription.event_types,
        "include_fhir": subscription.include_fhir,
        "description": subscription.description,
        "status": "active" if subscription.disabled_at is None else "disabled",
        "created_at": subscription.created_at,
        "disabled_at": subscription.disabled_at,
        "disabled_reason": subscription.disabled_reason,
        "links": {
            "self": url_for("subscriptions.Subscription", subscription_id=subscription.id),
            "deliveries": url_for("subscriptions.Deliveries", subscription_id=subscription.id),
        },
    }


def _delivery_out(delivery: CallbackDelivery, attempts: list[CallbackAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "subscription_id": delivery.subscription_id,
        "assessment_id": delivery.assessment_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "payload": delivery.payload,
        "attempt_log": [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "status_code": a.status_code,
                "error": a.error,
                "outcome": a.outcome,
            }
            for a in attempts
        ],
    }

"""Rate limits for both services (Flask-Limiter, counted in the services' Redis).

Three limits, each a Flask-Limiter application limit (one budget across all routes):

- **per API key** (`MYOTRIAGE_RATE_LIMIT_PER_KEY`): every request that presents a credential
  (`Authorization: Bearer …` or `X-API-Key`, read as `shared.auth` reads it). It is counted
  before authentication, under a digest of the credential: Redis never holds a key, and a
  caller who makes up keys only fills buckets of its own (and the failed-authentication one);
- **per client address** (`MYOTRIAGE_RATE_LIMIT_PER_ADDRESS`): every request; an IPv6 client
  counts by its /64, as it usually holds all of it;
- **failed authentication per address** (`MYOTRIAGE_RATE_LIMIT_FAILED_AUTH`): each 401 answered
  to an address counts; once it has had that many, every request from it gets 429 until the
  window ends. Shared by both services.

Over a limit: `429 application/problem+json` with `Retry-After` and `X-RateLimit-Limit`,
`-Remaining`, `-Reset`. Other responses carry no rate-limit headers: they would cost Redis
round trips.

**Cost.** Taking three limits to Flask-Limiter and Redis on every request costs about as much
CPU as the rest of intake's request path (bench/rate_limit_bench.py). So each process counts
first (`LocalCounts`) and asks Flask-Limiter only when it must: per-key and per-address counts
go to Redis in batches of 1% of the limit (one hit costing the whole batch; under a limit below
200 per window, every request is counted exactly); a bucket refused lately is asked about on
every request until its window ends; the failed-authentication count is checked only for an
address that has failed in this process within the window. So a process may overrun a limit
by 1% of it, and an address refused for its failures elsewhere gets one more attempt in a
process where it has not failed yet (that failure is counted too).

**Fails open.** Intake keeps accepting reports while Redis is down (README, "Architecture"), so
a Redis that is down or slow never refuses or holds a request: short socket timeouts and no
retries, then Flask-Limiter's in-memory fallback keeps the same limits per process until Redis
answers again (it is tried again after 1, 2, 4 … 32 seconds).

Exempt: health and metrics, the OpenAPI document and page, the public JSON Schema and FHIR
Questionnaire, and CORS preflights. `MYOTRIAGE_RATE_LIMIT_ENABLED=false` installs nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits import RateLimitItem, parse_many
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.auth import _presented_key
from shared.config import Settings
from shared.problems import Problem, problem_response

log = structlog.get_logger("myotriage.rate_limits")

RATE_LIMITED = Counter(
    "myotriage_rate_limited_total", "Requests refused by a rate limit", ["service", "limit"]
)

# Endpoints that are never limited: probes, metrics and public documents.
EXEMPT_ENDPOINTS = frozenset(
    {
        "health.livez",
        "health.readyz",
        "health.metrics",
        "api-docs.openapi_json",
        "api-docs.openapi_swagger_ui",
        "swagger_ui_assets.static",
        "schemas.symptom_report_schema",
        "fhir.read_questionnaire",
        "static",
    }
)
# A Redis that does not answer within this long is treated as down (the limits then fall back
# to memory). Loopback or LAN Redis answers in well under a millisecond.
STORAGE_TIMEOUT_SECONDS = 0.25
KEY_PREFIX = "myotriage"
FAILED_AUTH = "failed-auth"
API_KEY = "api-key"
ADDRESS = "address"
# Local counting: a batch is at most 1% of a limit, and at most this many requests.
MAX_BATCH = 50
# Buckets a process tracks before it forgets them all (made-up keys must not fill memory).
MAX_TRACKED = 10_000
_DETAILS = {
    FAILED_AUTH: "Too many failed authentication attempts from this address.",
    API_KEY: "This API key has made too many requests.",
    ADDRESS: "Too many requests from this address.",
}


def install_rate_limits(app: Flask, service: str, settings: Settings) -> Limiter | None:
    """Limit `app`'s requests per key, per address and per failed authentication, as
    `settings` say; None (and nothing installed) when rate limiting is disabled."""
    if not settings.rate_limit_enabled:
        return None
    failed_auth = settings.rate_limit_failed_auth
    per_key = settings.rate_limit_per_key
    per_address = settings.rate_limit_per_address
    counts = LocalCounts(
        batches={
            API_KEY: _batch(_parsed(per_key, "MYOTRIAGE_RATE_LIMIT_PER_KEY")),
            ADDRESS: _batch(_parsed(per_address, "MYOTRIAGE_RATE_LIMIT_PER_ADDRESS")),
        },
        failed_auth_window=max(
            item.get_expiry() for item in _parsed(failed_auth, "MYOTRIAGE_RATE_LIMIT_FAILED_AUTH")
        ),
    )
    limiter = Limiter(
        client_address,
        application_limits=[
            # First, so that an address refused for its failures spends none of its budgets.
            # Only 401s deduct; the test before the request is all it costs otherwise.
            ApplicationLimit(
                failed_auth,
                key_function=client_address,
                scope=FAILED_AUTH,
                deduct_when=_is_auth_failure,
                exempt_when=lambda: not counts.cost(FAILED_AUTH),
                cost=lambda: counts.cost(FAILED_AUTH),
            ),
            ApplicationLimit(
                per_key,
                key_function=credential_digest,
                scope=f"{service}:{API_KEY}",
                exempt_when=lambda: not counts.cost(API_KEY),
                cost=lambda: counts.cost(API_KEY),
            ),
            ApplicationLimit(
                per_address,
                key_function=client_address,
                scope=f"{service}:{ADDRESS}",
                exempt_when=lambda: not counts.cost(ADDRESS),
                cost=lambda: counts.cost(ADDRESS),
            ),
        ],
        storage_uri=settings.redis_url,
        storage_options=_storage_options(),
        # One Redis round trip per limit (an INCRBY script); the moving window keeps a list
        # entry per request, which a batch's cost would multiply.
        strategy="fixed-window",
        key_prefix=KEY_PREFIX,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        headers_enabled=False,
        # Unrouted requests (404s) count against the address too, as "unmatched".
        request_identifier=lambda: request.endpoint or "unmatched",
    )
    # Nothing to ask Redis about (the usual case): Flask-Limiter skips the request at once.
    limiter.request_filter(counts.nothing_due)
    limiter.init_app(app)
    # Its INFO lines name the bucket key (an address); our own event below names the limit.
    limiter.logger.setLevel("WARNING")
    app.extensions["myotriage.rate_limits"] = limiter

    @app.after_request
    def _count_auth_failure(response: Response) -> Response:
        if response.status_code == 401:
            counts.auth_failed()
        return response

    def too_many_requests(exc: RateLimitExceeded) -> Response:
        return _too_many_requests(exc, service, counts)

    app.register_error_handler(RateLimitExceeded, too_many_requests)
    return limiter


@dataclass(slots=True)
class _Bucket:
    pending: int = 0  # requests not yet counted in Redis
    refused_until: float = 0.0  # time.monotonic()


class LocalCounts:
    """One process's view of the limits: which of them this request must take to Flask-Limiter
    (and so to Redis), and at what cost. Decided once per request (kept in `g`)."""

    def __init__(self, batches: dict[str, int], failed_auth_window: float) -> None:
        self._batches = batches
        self._failed_auth_window = failed_auth_window
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}  # by (limit, bucket key)
        # address -> until when its failed-authentication count is checked (monotonic)
        self._suspects: dict[str, float] = {}
        # address -> failures Redis has not been told about (the first one in this process)
        self._owed: dict[str, int] = {}

    def cost(self, limit: str) -> int:
        """What `limit` costs this request in Redis; 0: it is not asked about."""
        return self._costs().get(limit, 0)

    def nothing_due(self) -> bool:
        return not any(self._costs().values())

    def auth_failed(self) -> None:
        """This request got a 401: watch its address; count the failure if Flask-Limiter did not."""
        if _exempt():
            return
        address = client_address()
        counted = FAILED_AUTH in self._costs()
        with self._lock:
            self._forget_if_full(self._suspects)
            self._forget_if_full(self._owed)
            self._suspects[address] = time.monotonic() + self._failed_auth_window
            if not counted:
                self._owed[address] = self._owed.get(address, 0) + 1

    def refused(self, limit: str, retry_after: float) -> None:
        """`limit` refused this request: ask about its bucket on every request until then."""
        bucket = _request_buckets().get(limit)
        if bucket is None:
            return
        with self._lock:
            state = self._buckets.setdefault((limit, bucket), _Bucket())
            state.pending, state.refused_until = 0, time.monotonic() + retry_after

    def _costs(self) -> dict[str, int]:
        costs: dict[str, int] | None = g.get("_rate_limit_costs")
        if costs is None:
            costs = {} if _exempt() else self._decide()
            g._rate_limit_costs = costs
        return costs

    def _decide(self) -> dict[str, int]:
        now = time.monotonic()
        buckets = _request_buckets()
        address = buckets[ADDRESS]
        costs: dict[str, int] = {}
        with self._lock:
            self._forget_if_full(self._buckets)
            for limit, bucket in buckets.items():
                costs[limit] = self._take(limit, bucket, now)
            if self._suspects.get(address, 0.0) > now:
                costs[FAILED_AUTH] = 1 + self._owed.pop(address, 0)
        return costs

    def _take(self, limit: str, bucket: str, now: float) -> int:
        state = self._buckets.setdefault((limit, bucket), _Bucket())
        if state.refused_until > now:
            return 1  # refused lately: every request asks until the window ends
        state.pending += 1
        if state.pending < self._batches[limit]:
            return 0
        batch, state.pending = state.pending, 0
        return batch

    @staticmethod
    def _forget_if_full(table: dict[Any, Any]) -> None:
        if len(table) >= MAX_TRACKED:
            table.clear()


def client_address() -> str:
    """The address a request is counted under (behind proxies, see
    MYOTRIAGE_TRUSTED_PROXY_HOPS): an IPv4 address, or an IPv6 client's /64."""
    return _address_bucket(request.remote_addr or "unknown")


@lru_cache(maxsize=4096)
def _address_bucket(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def credential_digest() -> str:
    """What the per-key limit counts under: a digest of the presented credential, so Redis
    never holds a key (not the stored key hash either)."""
    return _digest(_presented_key() or "")


def _digest(credential: str) -> str:
    return hashlib.sha256(b"myotriage-rate-limit:" + credential.encode("utf-8")).hexdigest()[:32]


def _request_buckets() -> dict[str, str]:
    """This request's bucket under each limit it counts against (no credential: no key)."""
    buckets = {ADDRESS: client_address()}
    credential = _presented_key()
    if credential is not None:
        buckets[API_KEY] = _digest(credential)
    return buckets


def _is_auth_failure(response: Response) -> bool:
    return response.status_code == 401


def _exempt() -> bool:
    return request.method == "OPTIONS" or request.endpoint in EXEMPT_ENDPOINTS


def _parsed(limit: str, env_name: str) -> list[RateLimitItem]:
    """`limit` parsed; a limit Flask-Limiter cannot read stops the service, naming it."""
    try:
        return parse_many(limit)
    except ValueError as exc:
        raise ValueError(
            f"{env_name}={limit!r} is not a rate limit such as '600/minute' or '10/second;600/hour'"
        ) from exc


def _batch(items: list[RateLimitItem]) -> int:
    """Requests a process may count locally before it tells Redis: 1% of the smallest limit."""
    return max(1, min(MAX_BATCH, min(item.amount for item in items) // 100))


def _storage_options() -> dict[str, Any]:
    """redis-py options for the limiter's own connections."""
    return {
        "socket_timeout": STORAGE_TIMEOUT_SECONDS,
        "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
        # redis-py retries a failed command up to ten times by default: against a Redis
        # that does not answer, ten timeouts in a row.
        "retry": Retry(NoBackoff(), 0),
    }


def _too_many_requests(exc: RateLimitExceeded, service: str, counts: LocalCounts) -> Response:
    item: RateLimitItem = exc.limit.limit
    kind = str(exc.limit.scope).rsplit(":", 1)[-1]
    now = time.time()
    reset_at = now + item.get_expiry()  # the longest it can be: a whole window
    limiter: Limiter = current_app.extensions["myotriage.rate_limits"]
    breached = limiter.current_limit
    if breached is not None:
        try:
            reset_at = breached.reset_at  # when this window ends (one more Redis call)
        except Exception as error:  # Redis went away meanwhile: the whole window it is
            log.warning("rate_limit.window_unknown", error_class=type(error).__name__)
    retry_after = max(1, math.ceil(reset_at - now))
    counts.refused(kind, retry_after)
    RATE_LIMITED.labels(service, kind).inc()
    log.warning("rate_limit.exceeded", limit=kind, route=_route(), retry_after=retry_after)
    headers = {
        "Retry-After": str(retry_after),
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(now) + retry_after),
    }
    detail = f"{_DETAILS.get(kind, 'Too many requests.')} Try again in {retry_after} s."
    return problem_response(
        Problem(429, "Too Many Requests", detail, problem_type="rate-limited", headers=headers)
    )


def _route() -> str:
    return request.url_rule.rule if request.url_rule else "unmatched"

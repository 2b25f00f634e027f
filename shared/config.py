"""Twelve-factor settings: every knob is an environment variable with a documented default.

The defaults are the embedded ones (SQLite under `.run/`, Redis on localhost), so a new user
needs to set nothing; `docker-compose.yml` and `.env.example` show the production values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

RUN_DIR = Path(os.environ.get("MYOTRIAGE_RUN_DIR", ".run")).resolve()


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class Settings:
    """All runtime settings. `Settings.from_env()` reads them; tests pass overrides."""

    # SQLAlchemy URL. PostgreSQL in production (postgresql+psycopg://...), SQLite by default.
    database_url: str = field(
        default_factory=lambda: f"sqlite:///{RUN_DIR / 'myotriage.db'}",
        metadata={"env": "DATABASE_URL"},
    )
    # Celery broker and pub/sub.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"env": "REDIS_URL"})
    # Largest request body accepted, in bytes (a full report is ~2 KB; free_text ≤ 4000 chars).
    max_request_bytes: int = field(
        default=64 * 1024, metadata={"env": "MYOTRIAGE_MAX_REQUEST_BYTES"}
    )
    # Deepest nesting of arrays and objects accepted in a JSON body (a report nests 3 deep, a
    # FHIR QuestionnaireResponse about 10); deeper bodies get 400 (shared/request_input.py).
    max_json_depth: int = field(default=32, metadata={"env": "MYOTRIAGE_MAX_JSON_DEPTH"})
    # Log level for structlog's JSON lines.
    log_level: str = field(default="INFO", metadata={"env": "MYOTRIAGE_LOG_LEVEL"})
    # Outbox relay: how long to sleep when the outbox is empty, and how many rows per batch.
    relay_poll_seconds: float = field(
        default=0.02, metadata={"env": "MYOTRIAGE_RELAY_POLL_SECONDS"}
    )
    relay_batch_size: int = field(default=500, metadata={"env": "MYOTRIAGE_RELAY_BATCH_SIZE"})
    # Most reports one scoring task carries: the relay groups what is pending (one report when
    # idle, up to this many under load) into one `rules.score_group` message. 1: one task per
    # report, as before groups existed.
    scoring_group_size: int = field(default=200, metadata={"env": "MYOTRIAGE_SCORING_GROUP_SIZE"})
    # A published task whose assessment is still unscored after this long is published again
    # (the broker may have lost it: Redis restarted without persistence, worker host died).
    relay_republish_after_seconds: float = field(
        default=60.0, metadata={"env": "MYOTRIAGE_RELAY_REPUBLISH_AFTER_SECONDS"}
    )
    # Celery task limits (seconds).
    task_soft_time_limit: int = field(
        default=20, metadata={"env": "MYOTRIAGE_TASK_SOFT_TIME_LIMIT"}
    )
    task_time_limit: int = field(default=30, metadata={"env": "MYOTRIAGE_TASK_TIME_LIMIT"})
    # Redis visibility timeout: an unacknowledged task returns to the queue after this long.
    broker_visibility_timeout: int = field(
        default=300, metadata={"env": "MYOTRIAGE_BROKER_VISIBILITY_TIMEOUT"}
    )
    # How long a validated API key stays cached in a process (revocation takes this long).
    api_key_cache_seconds: float = field(
        default=30.0, metadata={"env": "MYOTRIAGE_API_KEY_CACHE_SECONDS"}
    )
    # Fernet keys (comma-separated) that encrypt webhook and callback signing secrets at rest:
    # the first encrypts, every one decrypts (shared/secrets_at_rest.py, docs/SECURITY.md).
    # Empty: no signing secret can be stored or read; never shown in a repr or a log.
    secret_keys: str = field(default="", repr=False, metadata={"env": "MYOTRIAGE_SECRET_KEYS"})
    # How long Idempotency-Key records are kept.
    idempotency_ttl_hours: int = field(
        default=24, metadata={"env": "MYOTRIAGE_IDEMPOTENCY_TTL_HOURS"}
    )
    # Public base URLs, used to build links between the services.
    intake_base_url: str = field(
        default="http://127.0.0.1:8000", metadata={"env": "MYOTRIAGE_INTAKE_URL"}
    )
    reporting_base_url: str = field(
        default="http://127.0.0.1:8001", metadata={"env": "MYOTRIAGE_REPORTING_URL"}
    )
    # Outbound result callbacks (docs/INTEGRATION-OUTBOUND.md). Seconds to wait before each
    # attempt, comma-separated: the first is the initial attempt, the count is the attempt limit.
    callback_retry_schedule: str = field(
        default="0,5,300,1800,7200,18000,36000,36000",
        metadata={"env": "MYOTRIAGE_CALLBACK_RETRY_SCHEDULE"},
    )
    # Each retry delay is spread by ± this fraction, so failing receivers are not hit in waves.
    callback_retry_jitter: float = field(
        default=0.2, metadata={"env": "MYOTRIAGE_CALLBACK_RETRY_JITTER"}
    )
    # Short HTTP timeouts: a slow EHR endpoint holds one worker thread for at most their sum.
    callback_connect_timeout: float = field(
        default=3.0, metadata={"env": "MYOTRIAGE_CALLBACK_CONNECT_TIMEOUT"}
    )
    callback_read_timeout: float = field(
        default=10.0, metadata={"env": "MYOTRIAGE_CALLBACK_READ_TIMEOUT"}
    )
    # How often the relay looks for deliveries whose retry time has come.
    callback_dispatch_seconds: float = field(
        default=1.0, metadata={"env": "MYOTRIAGE_CALLBACK_DISPATCH_SECONDS"}
    )
    # The whole of one attempt (connect, TLS, sending, the answer), whatever the per-read timeout:
    # an endpoint that trickles bytes is cut off here.
    callback_total_timeout: float = field(
        default=15.0, metadata={"env": "MYOTRIAGE_CALLBACK_TOTAL_TIMEOUT"}
    )
    # Callbacks go to public addresses over https only (shared/callback_destinations.py), except
    # to these networks (CIDRs or addresses) and host names, comma-separated, which may also use
    # plain http. Empty in production; the local run and the tests allow loopback.
    callback_allowed_networks: str = field(
        default="", metadata={"env": "MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS"}
    )
    # At most this many attempts in flight per subscription; more wait their turn (deferred).
    callback_max_in_flight: int = field(
        default=8, metadata={"env": "MYOTRIAGE_CALLBACK_MAX_IN_FLIGHT"}
    )
    # Active subscriptions an API key may own (creating one more is refused with 409).
    callback_max_subscriptions: int = field(
        default=20, metadata={"env": "MYOTRIAGE_CALLBACK_MAX_SUBSCRIPTIONS"}
    )
    # CDS Hooks: trusted EHR issuers as JSON, each with a JWKS URL or an inline JWKS:
    # [{"iss": "https://ehr.example", "jwks_url": "https://ehr.example/.well-known/jwks.json"}]
    cds_issuers: str = field(default="[]", metadata={"env": "MYOTRIAGE_CDS_ISSUERS"})
    # How long a fetched JWKS is trusted before it is fetched again.
    cds_jwks_cache_seconds: float = field(
        default=300.0, metadata={"env": "MYOTRIAGE_CDS_JWKS_CACHE_SECONDS"}
    )
    # patient-view cards show the patient's latest scored assessment no older than this.
    cds_lookback_days: int = field(default=30, metadata={"env": "MYOTRIAGE_CDS_LOOKBACK_DAYS"})
    # Origins allowed to call the CDS Hooks and FHIR endpoints from a browser.
    cors_origins: str = field(default="*", metadata={"env": "MYOTRIAGE_CORS_ORIGINS"})
    # Rate limits (shared/rate_limits.py), each "N/second|minute|hour|day" (several joined by
    # ";"): requests per API key and per client address, and failed authentications (401s) per
    # address, after which the address is refused until the window ends. Counted in Redis;
    # while Redis is down, per process in memory. `false` turns all three off (benchmarks).
    rate_limit_enabled: bool = field(default=True, metadata={"env": "MYOTRIAGE_RATE_LIMIT_ENABLED"})
    rate_limit_per_key: str = field(
        default="600/minute", metadata={"env": "MYOTRIAGE_RATE_LIMIT_PER_KEY"}
    )
    rate_limit_per_address: str = field(
        default="1200/minute", metadata={"env": "MYOTRIAGE_RATE_LIMIT_PER_ADDRESS"}
    )
    rate_limit_failed_auth: str = field(
        default="20/minute", metadata={"env": "MYOTRIAGE_RATE_LIMIT_FAILED_AUTH"}
    )
    # Reverse proxies in front of the services that append to X-Forwarded-For (0: none). The
    # client address (rate limits) is the one this many hops back; without it, every client
    # behind a proxy shares the proxy's address and its limits.
    trusted_proxy_hops: int = field(default=0, metadata={"env": "MYOTRIAGE_TRUSTED_PROXY_HOPS"})

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from the environment; keyword overrides win."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name: str = f.metadata["env"]
            raw = os.environ.get(env_name)
            if raw is None or raw == "":
                continue
            kind = {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
            values[f.name] = _coerce(raw, kind, env_name)
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides)

    @staticmethod
    def documented() -> list[tuple[str, str]]:
        """(environment variable, default) pairs, for the README and `.env.example`."""
        defaults = Settings()
        return [(f.metadata["env"], str(getattr(defaults, f.name))) for f in fields(Settings)]


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _coerce(raw: str, kind: type, name: str) -> Any:
    if kind is bool:
        if raw.strip().lower() not in _BOOLEANS:
            raise ValueError(f"environment variable {name}={raw!r} is not true or false")
        return _BOOLEANS[raw.strip().lower()]
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a {kind.__name__}") from exc
    return raw

"""Models for EHR integrations: inbound webhook integrations and their secrets."""

from __future__ import annotations

from shared.models import Base  # noqa: F401

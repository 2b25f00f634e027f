"""Models for outbound result callbacks and the CDS Hooks service."""

from __future__ import annotations

from shared.models import Base  # noqa: F401

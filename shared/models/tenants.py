"""Organisations. Every row a caller can reach belongs to one tenant, and every query that
serves a caller filters by the caller's tenant (docs/SECURITY.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, UtcDateTime, new_id, utcnow

# The tenant that data from before tenancy (migration 0008) belongs to, and that commands use
# when no tenant is named.
DEFAULT_TENANT_ID: Final = "00000000-0000-7000-8000-000000000001"
DEFAULT_TENANT_NAME: Final = "default"


class Tenant(Base):
    """An organisation: a health system, a hospital, a screening service."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

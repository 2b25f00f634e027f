"""The transactional outbox: tasks written with the change that calls for them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, UtcDateTime, new_id, utcnow


class OutboxMessage(Base):
    """A task to publish, written in the same transaction as the change that calls for it.

    The relay publishes it to Celery with task id = this row's id, so publishing twice is
    harmless: the tasks are idempotent and carry ids only, never patient data.
    """

    __tablename__ = "outbox_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    task_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50), default="scoring")
    assessment_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    args: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Set once the task's work is done; a published, unfinished message is re-published later.
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        Index("ix_outbox_unpublished", "published_at", "created_at"),
        Index("ix_outbox_incomplete", "completed_at", "published_at"),
    )

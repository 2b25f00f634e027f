"""The transactional outbox relay: publishes outbox rows to Celery, task id = outbox id.

Scoring rows are published in groups: all that are pending (up to `scoring_group_size`) in one
`rules.score_group` message of assessment ids, task id = the group's first outbox id. A lone
report is a group of one and goes out at once; a backlog goes out a few hundred per message.

Intake writes the assessment and its outbox row in one transaction and never talks to the
broker. This process moves rows to Redis. While Redis is down it keeps the rows and tries again
with back-off, so intake keeps accepting. Published rows whose work never completed (the broker
lost the message: Redis restarted without persistence, a worker host died) are published again
after `relay_republish_after_seconds`; the tasks are idempotent, so a duplicate is harmless.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from typing import Any

import structlog
from celery import Celery
from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session, sessionmaker

from shared import repository
from shared.callbacks import queue_due_deliveries
from shared.celery_app import SCORE_GROUP_TASK, SCORE_TASK, create_celery
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.models import OutboxMessage, utcnow
from shared.observability import configure_logging

log = structlog.get_logger("myotriage.relay")

PUBLISHED = Counter("myotriage_outbox_published_total", "Outbox messages published", ["kind"])
PUBLISH_FAILURES = Counter("myotriage_outbox_publish_failures_total", "Failed publish attempts")
BACKLOG = Gauge("myotriage_outbox_backlog", "Unpublished outbox messages")


class BrokerUnavailable(Exception):
    """Publishing failed; the rows stay in the outbox for the next try."""


class OutboxRelay:
    """Moves outbox rows to the broker. `run()` loops until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session] | None = None,
        celery_app: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions or make_session_factory(make_engine(settings.database_url))
        self.celery = celery_app or create_celery(settings, name="myotriage-relay")
        self._stop = threading.Event()
        self._last_stale_check = 0.0
        self._last_callback_dispatch = 0.0

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; returns how many rows went out.

        Scoring rows go out in groups (`_task_groups`): whatever is pending, one report when
        the system is idle, up to `scoring_group_size` under load, in one message.
        """
        published = 0
        with transaction(self.sessions) as session:
            messages = repository.unpublished_messages(session, self.settings.relay_batch_size)
            for group in self._task_groups(messages):
                try:
                    self._publish(group)
                except BrokerUnavailable:
                    # Keep what went out so far (committed below); the rest waits.
                    if published == 0:
                        raise
                    break
                now = utcnow()
                for message in group:
                    message.published_at = now
                    message.publish_count += 1
                    message.last_error = None
                published += len(group)
        if published:
            PUBLISHED.labels("new").inc(published)
        return published

    def republish_stale(self) -> int:
        """Publish again messages whose work has not completed long after publishing.

        Only for queues that the broker shows empty: a message in a non-empty queue may simply
        be waiting its turn behind a backlog, and republishing it would add duplicates to the
        very backlog that delays it. When the queue is empty and the work is still not done,
        the broker lost the message (Redis restarted without persistence, a worker host died).
        Stale scoring rows go out grouped, as new ones do (the groups need not be the ones
        first published: scoring is idempotent per assessment).
        """
        cutoff = utcnow() - timedelta(seconds=self.settings.relay_republish_after_seconds)
        count = 0
        idle: dict[str, bool] = {}
        with transaction(self.sessions) as session:
            stale = repository.stale_messages(session, cutoff, self.settings.relay_batch_size)
            for group in self._task_groups(stale):
                queue = group[0].queue
                if queue not in idle:
                    idle[queue] = self._queue_is_empty(queue)
                if not idle[queue]:
                    continue
                self._publish(group)
                now = utcnow()
                for message in group:
                    message.published_at = now
                    message.publish_count += 1
                count += len(group)
        if count:
            PUBLISHED.labels("republished").inc(count)
            log.warning("outbox.republished_stale", count=count)
        return count

    def _task_groups(self, messages: list[OutboxMessage]) -> list[list[OutboxMessage]]:
        """`messages` as the tasks to publish, in order: scoring rows of one queue together in
        groups of up to `scoring_group_size`, every other row alone. With a group size of 1
        every row is its own task, the per-report path."""
        size = self.settings.scoring_group_size
        groups: list[list[OutboxMessage]] = []
        open_groups: dict[str, list[OutboxMessage]] = {}
        for message in messages:
            if not self._groups(message):
                groups.append([message])
                continue
            group = open_groups.get(message.queue)
            if group is None or len(group) >= size:
                group = open_groups[message.queue] = []
                groups.append(group)
            group.append(message)
        return groups

    def _queue_is_empty(self, queue: str) -> bool:
        """Whether the broker holds no waiting message for `queue` (Redis: the list's length)."""
        try:
            with self.celery.connection_for_write() as connection:
                client = connection.default_channel.client
                return int(client.llen(queue)) == 0
        except Exception as exc:
            PUBLISH_FAILURES.inc()
            raise BrokerUnavailable(type(exc).__name__) from exc

    def dispatch_due_callbacks(self) -> int:
        """Queue callback deliveries whose retry time has come; their outbox rows go out next.

        Retry times live in the database (not in broker countdowns), so they survive restarts.
        """
        with transaction(self.sessions) as session:
            count = queue_due_deliveries(session, utcnow(), self.settings.relay_batch_size)
        if count:
            log.info("callbacks.retries_queued", count=count)
        return count

    def _groups(self, message: OutboxMessage) -> bool:
        """Whether `message` goes out in a scoring group rather than as a task of its own."""
        return (
            self.settings.scoring_group_size > 1
            and message.task_name == SCORE_TASK
            and message.assessment_id is not None
        )

    def _publish(self, group: list[OutboxMessage]) -> None:
        """Send one task: a lone row as its own task, task id = outbox id; a scoring group as
        one `rules.score_group` carrying its assessment ids, task id = its first row's id."""
        first = group[0]
        args: list[Any]
        if self._groups(first):
            task_name, args = SCORE_GROUP_TASK, [[message.assessment_id for message in group]]
        else:
            task_name, args = first.task_name, list(first.args)
        try:
            self.celery.send_task(
                task_name, args=args, task_id=first.id, queue=first.queue, retry=False
            )
        except Exception as exc:  # kombu raises several kinds when Redis is away
            PUBLISH_FAILURES.inc()
            for message in group:
                message.last_error = type(exc).__name__
            raise BrokerUnavailable(type(exc).__name__) from exc

    def run(self) -> None:
        """Loop until stopped: publish, sleep when idle, back off while the broker is down."""
        log.info("relay.started")
        backoff = 0.0
        stale_every = max(1.0, self.settings.relay_republish_after_seconds / 4)
        while not self._stop.is_set():
            try:
                sent = self.publish_pending()
                now = time.monotonic()
                if now - self._last_callback_dispatch >= self.settings.callback_dispatch_seconds:
                    self._last_callback_dispatch = now
                    self.dispatch_due_callbacks()
                if now - self._last_stale_check >= stale_every:
                    self._last_stale_check = now
                    self.republish_stale()
                    with self.sessions() as session:
                        BACKLOG.set(repository.outbox_backlog(session))
                if backoff:
                    log.info("relay.broker_back")
                backoff = 0.0
                if sent == 0:
                    self._stop.wait(self.settings.relay_poll_seconds)
            except BrokerUnavailable as exc:
                backoff = min(5.0, max(0.1, backoff * 2))
                log.warning("relay.broker_unavailable", error_class=str(exc), retry_in_s=backoff)
                self._stop.wait(backoff)
            except Exception as exc:  # the database may be restarting; never die for that
                backoff = min(5.0, max(0.1, backoff * 2))
                log.error("relay.error", error_class=type(exc).__name__, retry_in_s=backoff)
                self._stop.wait(backoff)
        log.info("relay.stopped")


def main() -> None:
    """`python -m services.rules.relay`: run the relay until SIGTERM/SIGINT."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    relay = OutboxRelay(settings)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    relay.run()


if __name__ == "__main__":
    main()

"""Outbound result callbacks: the delivery worker (its own Celery app, `services.callbacks.worker`),
the HTTP client that only reaches allowed destinations, and the retry policy. What scoring and
the subscriptions API share (subscriptions, deliveries as data) is in shared/callbacks.py."""

"""A bound, not a product: intake exactly as deployed, except that its database write does
nothing. `bench/intake_bench.py --bounds` measures it in the same rounds as intake, to show how
much of the distance to the bare ceiling is the durable write and how much is the request path
around it (authentication, validation, observability, Flask and flask-smorest layers)."""

from __future__ import annotations

from typing import Any

from services.intake.wsgi import app


def _discard(rows: Any) -> None:
    del rows


app.extensions["myotriage.writer"].insert = _discard

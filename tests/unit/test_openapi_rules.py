"""The rules the OpenAPI documents state by pattern (shared/openapi.py) are the rules the code
enforces: what a pattern admits is accepted, so a client that checks against the document is
never refused for it."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from services.intake.ehr_integrations import IntegrationError, check_webhook_secret
from services.reporting.api.subscriptions import (
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    check_callback_url,
    check_secret,
)
from shared.callback_destinations import DestinationPolicy
from shared.openapi import CALLBACK_URL_PATTERN, whsec_pattern


def _accepts(check: Callable[[str], Any], value: str) -> bool:
    try:
        check(value)
    except (ValidationError, IntegrationError):
        return False
    return True


@pytest.mark.parametrize("size", range(80))
def test_the_secret_pattern_admits_exactly_what_both_services_accept(size: int) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(size))).decode("ascii")
    documented = re.fullmatch(whsec_pattern(MIN_SECRET_BYTES, MAX_SECRET_BYTES), secret)
    assert (documented is not None) == _accepts(check_secret, secret)
    assert (documented is not None) == _accepts(check_webhook_secret, secret)


def _unresolvable(host: str, port: int) -> list[Any]:
    raise OSError("not resolved in a unit test")


@settings(max_examples=300)
@given(st.from_regex(CALLBACK_URL_PATTERN, fullmatch=True).filter(lambda url: len(url) <= 2000))
def test_every_url_the_callback_pattern_admits_is_accepted(url: str) -> None:
    # As the API checks it before any host name resolves (a delivery checks again).
    check_callback_url(url, DestinationPolicy(resolver=_unresolvable))


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example/hook",  # http: allowlisted destinations only
        "https://10.0.0.1/hook",  # an address (a private one is refused)
        "https://user@ehr.example/hook",
        "https://ehr.example/hook#part",
        "https://ehr.example:0/hook",
        "https://ehr.example:65536/hook",
    ],
)
def test_the_callback_pattern_leaves_out_what_is_refused_or_depends_on_the_address(
    url: str,
) -> None:
    assert re.fullmatch(CALLBACK_URL_PATTERN, url) is None

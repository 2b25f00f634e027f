"""Fixtures for the rule-engine tests."""

from __future__ import annotations

import pytest

from services.rules.engine import RuleSet, load_ruleset


@pytest.fixture(scope="session")
def ruleset() -> RuleSet:
    """The default rule set, loaded once."""
    return load_ruleset()

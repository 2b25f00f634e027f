"""The MyoTriage clinical rule engine: pure, deterministic triage of a v1 symptom report.

    from services.rules.engine import load_ruleset, RuleSet, RuleSetError
    ruleset = load_ruleset()          # validates every rule file; RuleSetError names the rule
    result = ruleset.score(report)    # no I/O; JSON-serialisable

The rules are data (services/rules/ruleset/); docs/RULES.md explains how they read.
"""

from services.rules.engine.loader import RuleSetError, load_ruleset
from services.rules.engine.ruleset import RuleSet

__all__ = ["RuleSet", "RuleSetError", "load_ruleset"]

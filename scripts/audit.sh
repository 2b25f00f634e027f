#!/usr/bin/env bash
# Known vulnerabilities in the locked packages (requirements/lock*.txt), from PyPI's vulnerability
# data: pip-audit, plus a check of what it had to skip (see scripts/audit.py). Fails on a finding
# and when the audit could not be done. Needs network access to pypi.org.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/audit.py "$@"

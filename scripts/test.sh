#!/usr/bin/env bash
# The test suite on real parts. Uses DATABASE_URL (PostgreSQL) and REDIS_URL when set;
# otherwise SQLite in a temp dir and a private redis-server it starts itself.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

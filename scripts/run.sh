#!/usr/bin/env bash
# The whole system on embedded defaults: SQLite under .run/, a private redis-server, both
# services, a worker and the outbox relay. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/myotriage run "$@"

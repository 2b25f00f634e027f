#!/usr/bin/env bash
# Lint: ruff's rules, ruff's formatting and mypy, as configured in pyproject.toml, on the whole
# tree. Runs all three, prints each command, and exits non-zero if any of them failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
failed=()
for check in "ruff check ." "ruff format --check ." "mypy ."; do
  echo "+ .venv/bin/$check"
  # shellcheck disable=SC2086  # the words of $check are the command and its arguments
  .venv/bin/$check || failed+=("$check")
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'lint failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint passed: ruff check, ruff format --check, mypy."

#!/usr/bin/env bash
# Create .venv and install MyoTriage with its dev tools; a no-op when nothing changed.
# Installs exactly requirements/lock-dev.txt, every file checked against its hash (the lock is
# universal: Linux, macOS, Windows; scripts/lock.sh writes it), then MyoTriage itself, editable,
# with no dependency resolution and no unhashed download. Needs Python 3.11+ with venv.
# Run by run.sh, test.sh, lint.sh, lock.sh and audit.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "MyoTriage needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))." >&2
  exit 2
fi
lock=requirements/lock-dev.txt
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv …" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.myotriage-installed
want=$(.venv/bin/python -c 'import hashlib, sys
h = hashlib.sha256()
for name in sys.argv[1:]:
    h.update(open(name, "rb").read())
print("lock-v1", h.hexdigest())' pyproject.toml "$lock")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing dependencies into .venv from $lock (hashes required) …" >&2
  .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
  # Built by the locked setuptools now in .venv (its editable-install caveat is about a layout
  # that this project has on purpose: the packages are top-level folders of the checkout).
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

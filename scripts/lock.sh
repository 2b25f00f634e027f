#!/usr/bin/env bash
# Write the hashed dependency locks from pyproject.toml and requirements/build.in (pip, setuptools):
#   requirements/lock-dev.txt  runtime + dev extras + build tools: .venv (scripts/setup.sh) and CI
#   requirements/lock.txt      runtime + build tools: the service image (deploy/Dockerfile)
# Both are universal (Linux, macOS, Windows; CPython 3.11 to 3.13): every package pinned, with a
# --hash for each of its files; lock.txt takes its versions from lock-dev.txt. Pins already in
# the locks stay unless pyproject.toml rules them out. Arguments:
#   (none)                     after editing pyproject.toml: lock what changed, then update .venv
#   --upgrade                  every package to the newest release pyproject.toml allows
#   --upgrade-package NAME     one package (repeat for more), e.g. to take a security fix
#   --check                    change nothing; fail if the locks are not what pyproject.toml gives
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # uv comes from the dev lock
uv="$PWD/.venv/bin/uv"

compile() {  # compile DIR: write DIR/requirements/lock-dev.txt and DIR/requirements/lock.txt
  local dir=$1
  shift
  local common=(pip compile --quiet --universal --python-version 3.11 --generate-hashes
    --custom-compile-command scripts/lock.sh pyproject.toml requirements/build.in)
  echo "+ uv ${common[*]} --extra dev $* -o requirements/lock-dev.txt" >&2
  (cd "$dir" && "$uv" "${common[@]}" --extra dev "$@" -o requirements/lock-dev.txt)
  echo "+ uv ${common[*]} -c requirements/lock-dev.txt -o requirements/lock.txt" >&2
  (cd "$dir" && "$uv" "${common[@]}" -c requirements/lock-dev.txt \
    -o requirements/lock.txt)
}

if [ "${1:-}" = "--check" ]; then
  # The same compile in a scratch copy (same relative paths, so the same comments), then compare.
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir "$scratch/requirements"
  cp pyproject.toml README.md "$scratch/"
  cp requirements/build.in requirements/lock-dev.txt requirements/lock.txt "$scratch/requirements/"
  compile "$scratch"
  if ! diff -u requirements/lock-dev.txt "$scratch/requirements/lock-dev.txt" >&2 ||
    ! diff -u requirements/lock.txt "$scratch/requirements/lock.txt" >&2; then
    echo "requirements/lock*.txt do not match pyproject.toml: run scripts/lock.sh and commit" \
      "the locks with pyproject.toml." >&2
    exit 1
  fi
  echo "requirements/lock-dev.txt and requirements/lock.txt match pyproject.toml."
  exit 0
fi

compile . "$@"
echo "Locks written: requirements/lock-dev.txt, requirements/lock.txt (commit them with pyproject.toml)."
bash scripts/setup.sh   # install what changed into .venv

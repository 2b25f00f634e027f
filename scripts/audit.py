"""Audit the hashed locks for known vulnerabilities with PyPI's vulnerability data.

Run by scripts/audit.sh (and so by CI). Exit status: 0 when every locked package was audited and
none has a known vulnerability outside IGNORED; 1 when one has; 2 when the audit could not be
done (PyPI unreachable, a package that could not be audited): never a silent pass.

1. pip-audit reads requirements/lock.txt and requirements/lock-dev.txt without installing
   anything (--disable-pip: every line is pinned and hashed) and asks PyPI's vulnerability service
   (--vulnerability-service pypi; OSV is not reachable from CI) about each pinned version, at
   /pypi/NAME/VERSION/json.
2. pip-audit skips, and passes, a package whose per-version page answers 404, as every one does on
   a PyPI mirror that serves only project pages (this project's CI machines have one). Those
   packages are audited here from the project page, /pypi/NAME/json, whose "vulnerabilities" are
   PyPI's for the latest release: that answers for a package whose locked version is the latest
   release. A package locked at an older release cannot be audited that way, and fails the run
   with the command that moves it (scripts/lock.sh --upgrade-package NAME), unless HELD_BACK
   names that exact version with the reason it cannot move.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("requirements/lock.txt", "requirements/lock-dev.txt")
PYPI_PROJECT = "https://pypi.org/pypi/{name}/json"
NOT_ON_PYPI = "Dependency not found on PyPI"
TIMEOUT_SECONDS = 30

# Vulnerabilities that cannot be fixed yet, by id (PYSEC-…, GHSA-…, CVE-…), each with why.
# Prefer bumping the package: scripts/lock.sh --upgrade-package NAME.
IGNORED: dict[str, str] = {}

# Locked versions that cannot be the latest release, so step 2 cannot audit them, each with why.
# Keyed by exact version: a lock that moves them is audited again. No advisory was known against
# these when they were listed.
HELD_BACK: dict[str, str] = {
    "python-dateutil==2.9.0.post0": "celery 5.7.0 requires exactly this version (4.0.0 is out)",
    "packaging==26.3": "kombu[redis] 5.7.0 requires exactly this version (26.4 is out)",
    "jsonschema-rs==0.60.3": "schemathesis 4.32.5 (dev only) requires <0.61 (0.61.2 is out)",
    "deprecated==1.3.1": "the newest release for Python 3.11 (3.0.1, pulled in by limits, "
    "needs Python 3.12)",
}


def locked_packages() -> dict[str, str]:
    """Canonical name -> pinned version of every lock line whose marker holds here."""
    pins: dict[str, str] = {}
    for lock in LOCKS:
        for line in (ROOT / lock).read_text().splitlines():
            if not line or line[0] in " #-":
                continue
            requirement = Requirement(line.rstrip(" \\"))
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            (spec,) = requirement.specifier
            if spec.operator != "==":
                raise SystemExit(f"{lock}: {requirement.name} is not pinned with ==")
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def run_pip_audit() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "pip-audit.json"
        command = [sys.executable, "-m", "pip_audit", "--disable-pip"]
        for lock in LOCKS:
            command += ["-r", lock]
        command += ["--vulnerability-service", "pypi", "--timeout", str(TIMEOUT_SECONDS)]
        command += ["--progress-spinner", "off", "--desc", "off", "--aliases", "on"]
        command += ["--format", "json", "--output", str(report)]
        for vuln_id in IGNORED:
            command += ["--ignore-vuln", vuln_id]
        print("+ pip-audit " + " ".join(command[3:]), flush=True)
        done = subprocess.run(command, cwd=ROOT, check=False, stderr=subprocess.PIPE, text=True)
        status = done.returncode
        for line in done.stderr.splitlines():
            # Its verdict leaves out what it skipped: this script gives the verdict.
            if not line.startswith("No known vulnerabilities found"):
                print(line, file=sys.stderr)
        if not report.exists():
            print(
                f"audit: pip-audit ended ({status}) without a report: PyPI's vulnerability"
                " service could not be used, so nothing was audited.",
                file=sys.stderr,
            )
            raise SystemExit(2)
        dependencies: list[dict[str, Any]] = json.loads(report.read_text())["dependencies"]
        return dependencies


def project_page(name: str) -> dict[str, Any]:
    """PyPI's JSON page of a project, trying three times when PyPI does not answer or fails."""
    url = PYPI_PROJECT.format(name=name)
    for attempt in range(3):
        if attempt:
            time.sleep(2**attempt)
        try:
            response = requests.get(url, timeout=TIMEOUT_SECONDS)
        except (requests.ConnectionError, requests.Timeout):
            if attempt == 2:
                raise
            continue
        if response.status_code >= 500 and attempt < 2:
            continue
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page
    raise AssertionError("unreachable")


def is_ignored(vuln: dict[str, Any]) -> bool:
    ids = {vuln.get("id"), *(vuln.get("aliases") or [])}
    return any(vuln_id in IGNORED for vuln_id in ids)


def main() -> int:
    pins = locked_packages()
    found: list[str] = []
    unaudited: list[str] = []
    fallback: list[str] = []
    held_back: list[str] = []
    by_pip_audit = by_latest = 0
    seen: set[str] = set()
    for dependency in run_pip_audit():
        name: str = canonicalize_name(dependency["name"])
        seen.add(name)
        reason = dependency.get("skip_reason")
        if reason is None:
            by_pip_audit += 1
            for vuln in dependency.get("vulns", []):
                fixed = ", ".join(vuln.get("fix_versions") or []) or "none yet"
                found.append(f"{name} {dependency['version']}: {vuln['id']} (fixed in {fixed})")
        elif reason.startswith(NOT_ON_PYPI) and name in pins:
            fallback.append(name)
        else:
            unaudited.append(f"{name}: {reason}")
    unaudited += [f"{name}: not in pip-audit's report" for name in sorted(set(pins) - seen)]

    if fallback:
        print(
            f"audit: PyPI has no per-version page for {len(fallback)} of the locked packages;"
            " checking each against its project page (the latest release's vulnerabilities).",
            flush=True,
        )
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                pages = dict(zip(fallback, pool.map(project_page, fallback), strict=True))
        except requests.RequestException as error:
            print(
                f"audit: PyPI's vulnerability data could not be fetched ({error}), so the"
                " locked packages were not audited. Check that https://pypi.org is reachable.",
                file=sys.stderr,
            )
            return 2
        for name in fallback:
            latest = pages[name]["info"]["version"]
            if Version(latest) != Version(pins[name]):
                if f"{name}=={pins[name]}" in HELD_BACK:
                    held_back.append(f"{name}=={pins[name]}")
                    continue
                unaudited.append(
                    f"{name}: locked at {pins[name]}, but PyPI here has vulnerability data only"
                    f" for the latest release, {latest}: scripts/lock.sh --upgrade-package {name}"
                )
                continue
            by_latest += 1
            for vuln in pages[name].get("vulnerabilities") or []:
                if vuln.get("withdrawn") or is_ignored(vuln):
                    continue
                fixed = ", ".join(vuln.get("fixed_in") or []) or "none yet"
                found.append(f"{name} {pins[name]}: {vuln['id']} (fixed in {fixed})")

    print(
        f"audit: {by_pip_audit + by_latest} of {len(pins)} locked packages audited"
        f" ({by_pip_audit} per version by pip-audit, {by_latest} as the latest release);"
        f" {len(IGNORED)} vulnerability id(s) ignored on purpose."
    )
    for pin in held_back:
        print(f"audit: not audited, held back on purpose: {pin} ({HELD_BACK[pin]})")
    if found:
        print("audit: known vulnerabilities in locked packages:", file=sys.stderr)
        for line in found:
            print(f"  {line}", file=sys.stderr)
        print(
            "Bump them (scripts/lock.sh --upgrade-package NAME, raising the floor in"
            " pyproject.toml), or, if one truly cannot be fixed, add its id to IGNORED in"
            " scripts/audit.py with the reason.",
            file=sys.stderr,
        )
    if unaudited:
        print("audit: these locked packages could not be audited:", file=sys.stderr)
        for line in unaudited:
            print(f"  {line}", file=sys.stderr)
    if found:
        return 1
    if unaudited:
        return 2
    print("audit: no known vulnerabilities.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's first command, as a new user runs it: `myotriage run` starts everything on the
embedded defaults, prints a working curl example, scores a report, starts a killed process
again, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from services.local_stack import free_port
from tests.factories import STROKE
from tests.support import PROJECT_ROOT, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    out_path: Path
    intake: str
    reporting: str
    headers: dict[str, str]

    def output(self) -> str:
        return self.out_path.read_text()

    def submit_and_wait_scored(self, timeout: float) -> dict[str, Any]:
        response = requests.post(
            f"{self.intake}/v1/assessments", json=STROKE, headers=self.headers, timeout=5
        )
        assert response.status_code == 202
        location = response.headers["Location"]

        def scored() -> Any:
            body = requests.get(f"{self.intake}{location}", headers=self.headers, timeout=5).json()
            return body if body["status"] == "scored" else None

        return wait_until(scored, timeout, "the report to be scored")  # type: ignore[no-any-return]


@contextmanager
def running(tmp_path: Path) -> Iterator[Run]:
    """The run command on free ports, under `tmp_path`; Ctrl-C at the end (SIGINT to its process
    group, as a terminal sends it) must exit 0 and free the ports."""
    intake_port, reporting_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        MYOTRIAGE_RUN_DIR=str(tmp_path / ".run"),
        MYOTRIAGE_INTAKE_PORT=str(intake_port),
        MYOTRIAGE_REPORTING_PORT=str(reporting_port),
    )
    out_path = tmp_path / "run.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that Ctrl-C can go to its whole process group
        )
    try:
        banner = wait_until(
            lambda: "Ctrl-C stops everything" in out_path.read_text() and out_path.read_text(),
            90,
            "the run command to print its banner",
        )
        assert f"http://127.0.0.1:{intake_port}" in banner
        key = re.search(r"Bearer (mt_\S+?)'", banner).group(1)  # type: ignore[union-attr]
        yield Run(
            proc,
            out_path,
            f"http://127.0.0.1:{intake_port}",
            f"http://127.0.0.1:{reporting_port}",
            {"Authorization": f"Bearer {key}"},
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: to the process group
        try:
            code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, out_path.read_text()[-3000:]
    time.sleep(0.5)
    # Everything it started is gone: the ports are free again.
    for port in (intake_port, reporting_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/livez", timeout=1)


def test_run_starts_everything_scores_a_report_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with running(tmp_path) as run:
        assert (tmp_path / ".run" / "myotriage.db").exists()  # SQLite under the run folder
        body = run.submit_and_wait_scored(30)
        assert body["result"]["triage"] == "emergency_ambulance"
        queue = requests.get(
            f"{run.reporting}/v1/reports/queue", headers=run.headers, timeout=5
        ).json()
        assert queue["items"][0]["assessment_id"] == body["id"]


def test_run_starts_a_killed_worker_again_and_scores_what_arrives(tmp_path: Path) -> None:
    with running(tmp_path) as run:
        worker = _child(run.proc.pid, "celery")
        os.kill(worker, signal.SIGKILL)
        wait_until(
            lambda: "worker exited with code -9; started it again" in run.output(),
            10,
            "the run command to start the worker again",
        )
        assert _child(run.proc.pid, "celery") != worker
        body = run.submit_and_wait_scored(60)
        assert body["result"]["triage"] == "emergency_ambulance"
        assert "stopping" not in run.output()


def _child(parent: int, command_part: str) -> int:
    """The pid of `parent`'s direct child whose command line contains `command_part` (/proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and command_part in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child of {parent} runs {command_part!r}")

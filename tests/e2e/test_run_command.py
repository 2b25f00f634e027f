"""The README's first command, as a new user runs it: `myotriage run` starts everything on the
embedded defaults, prints a working curl example, scores a report, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from services.local_stack import free_port
from tests.factories import STROKE
from tests.support import PROJECT_ROOT, wait_until

pytestmark = pytest.mark.slow


def test_run_starts_everything_scores_a_report_and_stops_on_ctrl_c(tmp_path: Path) -> None:
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
        )
    try:
        banner = wait_until(
            lambda: "Ctrl-C stops everything" in out_path.read_text() and out_path.read_text(),
            90,
            "the run command to print its banner",
        )
        assert f"http://127.0.0.1:{intake_port}" in banner
        assert (tmp_path / ".run" / "myotriage.db").exists()  # SQLite under the run folder
        key = re.search(r"Bearer (mt_\S+?)'", banner).group(1)  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {key}"}

        response = requests.post(
            f"http://127.0.0.1:{intake_port}/v1/assessments",
            json=STROKE,
            headers=headers,
            timeout=5,
        )
        assert response.status_code == 202
        location = response.headers["Location"]

        def scored() -> Any:
            body = requests.get(
                f"http://127.0.0.1:{intake_port}{location}", headers=headers, timeout=5
            ).json()
            return body if body["status"] == "scored" else None

        body = wait_until(scored, 30, "the report to be scored")
        assert body["result"]["triage"] == "emergency_ambulance"
        queue = requests.get(
            f"http://127.0.0.1:{reporting_port}/v1/reports/queue", headers=headers, timeout=5
        ).json()
        assert queue["items"][0]["assessment_id"] == body["id"]
    finally:
        proc.send_signal(signal.SIGINT)
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

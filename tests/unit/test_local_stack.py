"""The run command's supervision rule: a process that dies is started again, unless it keeps
dying (then the run stops rather than loop)."""

from __future__ import annotations

import subprocess
import sys

from services.local_stack import RESTARTS_PER_MINUTE, Child


def _exits_at_once() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_a_process_that_died_is_started_again() -> None:
    child = Child("relay", _exits_at_once)
    first = child.proc
    assert first.wait(timeout=10) == 3
    assert child.restart(now=100.0)
    assert child.proc is not first
    assert child.proc.wait(timeout=10) == 3


def test_a_crash_loop_stops_being_restarted_and_old_exits_are_forgotten() -> None:
    child = Child("relay", _exits_at_once)
    for second in range(RESTARTS_PER_MINUTE - 1):
        assert child.restart(now=float(second))
        child.proc.wait(timeout=10)
    assert not child.restart(now=float(RESTARTS_PER_MINUTE))  # the 5th exit within a minute
    # A minute later the early exits no longer count.
    assert child.restart(now=200.0)
    child.proc.wait(timeout=10)

"""The evaluate and explain commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_testing import VIGNETTES

from services.rules.engine_cli import main


def test_evaluate_prints_the_figures_and_passes_the_bar(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(VIGNETTES / "vignettes-public.jsonl"), str(VIGNETTES / "vignettes-team.jsonl")]
    assert main(["evaluate", *files, "--min-exact", "0.9", "--min-bucket", "0.97"]) == 0
    out = capsys.readouterr().out
    for text in (
        "exact level",
        "3-bucket",
        "under-triaged",
        "emergencies scored below emergency: 0",
        "expected \\ engine",
    ):
        assert text in out


def test_evaluate_fails_on_a_missed_emergency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vignette = {
        "id": "x",
        "expected_triage": "emergency",
        "acceptable_alternatives": [],
        "report": {
            "patient": {"id": "x", "age": 30},
            "complaints": ["fatigue"],
            "onset_days": 2,
            "course": "unchanged",
        },
    }
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps(vignette) + "\n", encoding="utf-8")
    assert main(["evaluate", str(path)]) == 1
    assert "MISSED x: expected emergency, got consultation" in capsys.readouterr().out


def test_explain_accepts_a_vignette_or_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = (VIGNETTES / "vignettes-public.jsonl").read_text(encoding="utf-8").splitlines()[4]
    path = tmp_path / "report.json"
    path.write_text(line, encoding="utf-8")
    assert main(["explain", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Triage: emergency_ambulance")
    assert "RF_STROKE_FAST [emergency_ambulance, weight 50] FIRED" in out
    assert '"triage": "emergency_ambulance"' in out

"""Start-up validation: a bad rule file stops the load, naming the rule and the problem."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from engine_testing import RULESET_DIR

from services.rules.engine import RuleSetError, load_ruleset

DOMS_ONSET = '"<=": [{var: onset_days}, 3]'
# A version bump without a changelog entry must be refused, whatever the current version is.
CURRENT_VERSION = re.search(
    r'^version: "([^"]+)"', (RULESET_DIR / "ruleset.yaml").read_text(), flags=re.M
).group(1)  # type: ignore[union-attr]


@pytest.fixture
def ruleset_copy(tmp_path: Path) -> Path:
    target = tmp_path / "ruleset"
    shutil.copytree(RULESET_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"test fixture out of date: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_default_rule_set_loads_and_is_versioned(ruleset) -> None:
    assert re.match(r"^\d{4}\.\d+\.\d+$", ruleset.version)
    changelog = (RULESET_DIR / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {ruleset.version}" in changelog


def test_every_rule_cites_a_source_and_every_clinical_table_rule_exists(ruleset) -> None:
    clinical_ids = {
        "RF_STROKE_FAST",
        "RF_RESP_COMPROMISE",
        "RF_BULBAR_ACUTE",
        "RF_PARALYSIS",
        "RF_SEPSIS",
        "RF_SHOCK_SKIN",
        "RF_TETANUS_SIGNS",
        "RF_STATIN_NEW_CRAMPS",
        "RF_RHABDO_SYSTEMIC",
        "RF_PE_SIGNS",
        "RF_BOTULISM",
        "RF_HYPO_UNRESOLVED",
        "RF_RAPID_SYMMETRIC_WEAKNESS",
        "RF_HEAD_LIFT_WEAKNESS",
        "RF_DARK_URINE_MUSCLE",
        "RF_EXERTIONAL_OUT_OF_PROPORTION",
        "RF_CAUDA_EQUINA",
        "RF_COMPARTMENT_ACUTE",
        "RF_ORTHOPNOEA_NEUROMUSCULAR",
        "RF_HYPOK_ARRHYTHMIA",
        "RF_FATIGABLE_OCULAR_BULBAR",
        "RF_STATIN_MUSCLE",
        "RF_FLUOROQUINOLONE",
        "RF_DVT_SIGNS",
        "RF_GCA_FEATURES",
        "RF_CRAMP_PROLONGED",
        "RF_HYPOK_RISK",
        "RF_BULBAR_SLOW",
        "RF_GBS_EARLY",
        "RF_TIA_UNASSESSED",
        "RF_FLU_HIGH_RISK",
        "RF_WEAKNESS_WITH_TWITCHING",
        "RF_PROGRESSIVE_WEAKNESS",
        "RF_DAILY_TASKS_IMPAIRED",
        "RF_PERSISTENT_NO_REST_RELIEF",
        "RF_TWITCH_PERSISTENT",
        "RF_FATIGUE_PERSISTENT",
        "RF_PMR_PATTERN",
        "RF_ASSOCIATED_CONDITION",
        "RF_ACUTE_WEAKNESS_DAYS",
        "RF_PROGRESSIVE_HEMIPARESIS",
        "RF_SUDDEN_DIPLOPIA_PTOSIS",
        "RF_CHEMO_ASTHENIA",
        "RF_NEUROGENIC_CLAUDICATION",
        "RF_POSTVIRAL_WEAKNESS_PERSISTENT",
        "RF_DOMS_OVER_5D",
        "RF_EXERTIONAL_COMPARTMENT_CHRONIC",
        "RF_CRAMPS_SLEEP",
        "RF_TREMOR_PERSISTENT",
    }
    ids = {rule.id for rule in ruleset.rules}
    assert clinical_ids <= ids
    assert all(rule.source.strip() for rule in ruleset.rules)
    assert {p.id for p in ruleset.benign_patterns} >= {
        "BP_DOMS",
        "BP_BENIGN_TWITCH",
        "BP_HYPO_TREATED",
    }


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "rules/routine.yaml",
            "    weight: 10\n    condition: {var: cramps_most_nights}",
            "    weight: 10\n    levle: consultation\n    condition: {var: cramps_most_nights}",
            "rule RF_CRAMPS_SLEEP: unknown field(s) 'levle'",
        ),
        (
            "rules/routine.yaml",
            "condition: {var: cramps_most_nights}",
            "condition: {var: cramps_most_night}",
            "rule RF_CRAMPS_SLEEP: condition: unknown fact 'cramps_most_night'",
        ),
        (
            "rules/emergency.yaml",
            "condition: {var: head_lift_weakness}",
            "condition: {andd: [{var: head_lift_weakness}]}",
            "rule RF_HEAD_LIFT_WEAKNESS: condition: operator 'andd' is not supported",
        ),
        (
            "rules/emergency.yaml",
            "condition: {var: head_lift_weakness}",
            "condition: {'==': [{var: head_lift_weakness}, false]}",
            "rule RF_HEAD_LIFT_WEAKNESS: condition: operator '==' is not supported (use === / !==",
        ),
        (
            "rules/emergency.yaml",
            "condition: {var: head_lift_weakness}",
            "condition: {'===': [{var: course}, worsning]}",
            "rule RF_HEAD_LIFT_WEAKNESS: condition: \"worsning\" is not a valid value of 'course'",
        ),
        (
            "rules/urgent.yaml",
            '        - "!==": [{var: cramp_max_minutes}, null]\n',
            "",
            "rule RF_CRAMP_PROLONGED: condition: 'cramp_max_minutes' may be null",
        ),
        (
            "rules/emergency.yaml",
            "condition: {var: head_lift_weakness}",
            "condition: {in: [statinz, {var: medication_classes}]}",
            'rule RF_HEAD_LIFT_WEAKNESS: condition: "statinz" is not a known value of '
            "'medication_classes'",
        ),
        (
            "rules/emergency.yaml",
            "    because: [head_lift_weakness, weakness_distribution]",
            "    because: [head_lift_weaknes]",
            "rule RF_HEAD_LIFT_WEAKNESS: because entry 'head_lift_weaknes' is not a known fact",
        ),
        (
            "rules/emergency.yaml",
            "    level: emergency\n    weight: 40\n    condition: {var: head_lift_weakness}",
            "    level: urgent\n    weight: 40\n    condition: {var: head_lift_weakness}",
            "rule RF_HEAD_LIFT_WEAKNESS: level 'urgent' is not one of",
        ),
        (
            "rules/emergency.yaml",
            "  - id: RF_HEAD_LIFT_WEAKNESS",
            "  - id: RF_STROKE_FAST",
            "rule RF_STROKE_FAST: id or alias RF_STROKE_FAST is used twice",
        ),
        (
            "rules/emergency.yaml",
            "      and: [{var: stroke_sign}, {var: active_or_resolved_48h}]",
            "      and: [{var: stroke_sign}, {var: active_or_resolved_48h}, {var: worsening}]",
            "rule RF_STROKE_FAST: no_downgrade rules must not read",
        ),
        (
            "rules/urgent.yaml",
            "      - level: emergency\n        when: {var: swallowing_difficulty}",
            "      - level: consultation\n        when: {var: swallowing_difficulty}",
            "rule RF_FATIGABLE_OCULAR_BULBAR: escalation 1: level must be more urgent",
        ),
        (
            "rules/emergency.yaml",
            "    weight: 40\n    condition: {var: head_lift_weakness}",
            "    weight: heavy\n    condition: {var: head_lift_weakness}",
            "rule RF_HEAD_LIFT_WEAKNESS: weight must be an integer 0-100",
        ),
        (
            "considerations.yaml",
            'text: "Anaemia may be contributing to the tiredness or weakness."',
            'text: "The patient has anaemia."',
            "consideration C_ANAEMIA: text must be worded as a possibility",
        ),
        (
            "ruleset.yaml",
            "        - {var: soreness}\n        - {var: exertion}\n        - " + DOMS_ONSET,
            "        - {var: sorenes}\n        - {var: exertion}\n        - " + DOMS_ONSET,
            "benign pattern BP_DOMS: condition: unknown fact 'sorenes'",
        ),
        (
            "ruleset.yaml",
            f'version: "{CURRENT_VERSION}"',
            'version: "2099.1.1"',
            "file CHANGELOG.md: latest entry",
        ),
        (
            "rules/routine.yaml",
            "    weight: 10\n    condition: {var: cramps_most_nights}",
            "    weight: 10\n    condition: {var: cramps_most_nights\n",
            "file rules/routine.yaml: not valid YAML",
        ),
        (
            "ruleset.yaml",
            "    key_questions: [dark_urine, muscle_swelling, pain_out_of_proportion]",
            "    key_questions: [dark_urine, muscle_swelling, urine_dark]",
            "benign pattern BP_DOMS: 'key_questions' names unknown finding code(s) ['urine_dark']",
        ),
        (
            "ruleset.yaml",
            "    key_questions: [dark_urine, muscle_swelling, pain_out_of_proportion]\n",
            "",
            "benign pattern BP_DOMS: missing field 'key_questions'",
        ),
        (
            "ruleset.yaml",
            "  - bladder_bowel_change    # cauda equina with back pain\n",
            "",
            "general_screen must list exactly the ten safety questions",
        ),
        (
            "ruleset.yaml",
            "recent_medicine_change_days: 90",
            "recent_medicine_change_days: -1",
            "recent_medicine_change_days must be a positive whole number",
        ),
        (
            "synonyms.yaml",
            "names: [macrolide, clarithromycin,",
            "names: [macrolide, atorvastatin, clarithromycin,",
            "synonym 'atorvastatin' already belongs to statin",
        ),
    ],
)
def test_a_broken_rule_file_is_rejected_with_the_rule_and_the_problem(
    ruleset_copy: Path, file: str, old: str, new: str, message: str
) -> None:
    _edit(ruleset_copy / file, old, new)
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(ruleset_copy)
    assert message in str(raised.value)


def test_the_cli_refuses_an_invalid_rule_set(
    ruleset_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.rules.engine_cli import main

    _edit(
        ruleset_copy / "rules/routine.yaml",
        "condition: {var: cramps_most_nights}",
        "condition: {var: nope}",
    )
    assert main(["--ruleset", str(ruleset_copy), "explain", "-"]) == 2
    assert "rule RF_CRAMPS_SLEEP: condition: unknown fact 'nope'" in capsys.readouterr().err

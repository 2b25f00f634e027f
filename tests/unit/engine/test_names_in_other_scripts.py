"""Medicine and condition names with accents or in Hindi map to their classes."""

from __future__ import annotations

from services.rules.engine import load_ruleset
from services.rules.engine.synonyms import normalise

RULESET = load_ruleset()


def classes_of(medications: list[str], conditions: list[str]) -> dict[str, object]:
    result = RULESET.score(
        {
            "patient": {"id": "p1", "age": 50},
            "complaints": ["fatigue"],
            "onset_days": 40,
            "course": "unchanged",
            "medications": medications,
            "conditions": conditions,
        }
    )
    return {
        "medications": result["medication_classes"],
        "conditions": result["condition_classes"],
        "not_understood": result["not_understood"],
    }


def test_accents_are_folded_and_doses_dropped() -> None:
    assert normalise("Furosémide 40 mg") == normalise("furosemide") == ("furosemide",)
    assert normalise("fentanyl 25 µg/hr patch") == ("fentanyl", "patch")


def test_devanagari_words_stay_whole() -> None:
    assert normalise("रितोनाविर 100 mg") == ("रितोनाविर",)


def test_hindi_names_from_the_seed_map_to_classes() -> None:
    found = classes_of(["रितोनाविर 100 mg", "फेंतान्य्ल पैच"], ["एनीमिया", "मधुमेह"])
    assert "ritonavir" in found["medications"]  # type: ignore[operator]
    assert "fentanyl" in found["medications"]  # type: ignore[operator]
    assert {"anaemia", "diabetes"} <= set(found["conditions"])  # type: ignore[call-overload]
    assert found["not_understood"]["medications"] == []  # type: ignore[index]

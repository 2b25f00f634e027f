"""The clinical vocabulary of the symptom report contract (docs/SYMPTOM_REPORT.md, v1.1).

Every service, the schemas and the rule engine take their codes from here, so a code is spelled
in exactly one place.
"""

from __future__ import annotations

from typing import Final

# Triage levels, most urgent first (CLINICAL.md "Triage levels").
TRIAGE_LEVELS: Final = (
    "emergency_ambulance",
    "emergency",
    "consultation_24",
    "consultation",
    "self_care",
)
# Larger = more urgent; used to compare levels.
LEVEL_RANK: Final = {level: len(TRIAGE_LEVELS) - i for i, level in enumerate(TRIAGE_LEVELS)}

# CLINICAL.md's three-bucket collapse for comparison with published symptom-checker studies.
LEVEL_BUCKET: Final = {
    "emergency_ambulance": "emergent",
    "emergency": "emergent",
    "consultation_24": "non_emergent",
    "consultation": "non_emergent",
    "self_care": "self_care",
}

SEXES: Final = ("female", "male", "other", "unknown")
COMPLAINTS: Final = (
    "fatigue",
    "weakness",
    "twitching",
    "cramps",
    "muscle_pain",
    "stiffness",
    "tremor",
    "numbness",
)
COURSES: Final = ("improving", "unchanged", "worsening", "rapidly_worsening")
WEAKNESS_DISTRIBUTIONS: Final = (
    "none",
    "focal",
    "one_side",
    "both_legs",
    "proximal",
    "distal",
    "generalized",
)
# medication_changes[].change (contract v1.1).
MEDICATION_CHANGES: Final = ("started", "dose_increased", "stopped")

FINDING_CODES: Final = (
    # Weakness and movement
    "weak_grip",
    "head_lift_weakness",
    "unable_to_stand_or_walk",
    "muscle_wasting",
    "fatigable_weakness",
    "ascending_weakness",
    "clumsiness",
    "twitching",
    "twitching_multiple_sites",
    "cramps",
    "cramps_at_night",
    "cramps_most_nights",
    "trembling",
    "stiffness_morning",
    "spasms",
    "recurring_with_exercise",
    # Pain and the muscle itself
    "soreness",
    "localized_pain",
    "pain_out_of_proportion",
    "muscle_swelling",
    "tight_swollen_compartment",
    "calf_swelling_one_side",
    "warm_red_skin",
    # Breathing and chest
    "breathless_on_exertion",
    "breathless_lying_flat",
    "breathless_at_rest",
    "chest_pain",
    # Bulbar, eyes, stroke signs
    "swallowing_difficulty",
    "speech_difficulty",
    "double_vision",
    "droopy_eyelids",
    "face_drooping",
    "vision_loss",
    "confusion",
    # Nerves and spine
    "numbness_or_tingling",
    "numbness_both_sides",
    "saddle_numbness",
    "bladder_bowel_change",
    "back_pain",
    "walking_brings_on_leg_symptoms",
    # Body-wide
    "dark_urine",
    "reduced_urine",
    "fever",
    "shivering_severe",
    "mottled_skin",
    "palpitations",
    "vomiting_or_diarrhoea",
    "new_headache",
    "jaw_pain_chewing",
    "weight_loss",
    "rash",
    # Context
    "recent_infection",
    "recent_injury_or_cast",
    "heat_exposure",
    "long_lie",
    "dehydration",
    "sleep_deprivation",
    "recent_strenuous_exercise",
    "contaminated_wound",
    "home_canned_food",
    "caffeine_or_stimulants",
    "stress_or_anxiety",
    "poor_posture",
)

# CLINICAL.md rule 7: self_care needs each of these answered "no".
SAFETY_QUESTIONS: Final = (
    "breathless_at_rest",
    "breathless_lying_flat",
    "swallowing_difficulty",
    "speech_difficulty",
    "face_drooping",
    "dark_urine",
    "chest_pain",
    "saddle_numbness",
    "bladder_bowel_change",
    "confusion",
)

# Where an assessment is in the pipeline.
STATUS_QUEUED: Final = "queued"
STATUS_SCORING: Final = "scoring"
STATUS_SCORED: Final = "scored"
STATUS_FAILED: Final = "failed"
ASSESSMENT_STATUSES: Final = (STATUS_QUEUED, STATUS_SCORING, STATUS_SCORED, STATUS_FAILED)

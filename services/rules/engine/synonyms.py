"""Free-text medication and condition names mapped to classes through a maintained synonym table.

"Lipitor 20mg", "atorvastatin" and "simvastatin 40 mg nightly" all become `statin`; "T2DM" and
"type 2 diabetes" become `diabetes`. Matching is case-, dose- and punctuation-insensitive and works
on whole words (one to four of them), so "mg" never matches inside "omeprazole". An entry that
matches no class is kept verbatim and reported as not understood: it is never dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

_DOSE: Final = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:mg|mcg|micrograms?|[µμ]g|ug|g|ml|units?|iu|%|mmol|nanograms?)\b"
    r"(?:\s*/\s*(?:ml|dose|hr|h|day|puff))?"
)
# Accents on Latin letters (combining diacritical marks after NFKD): "furosémide" = "furosemide".
# Other scripts' marks (Devanagari vowel signs, viramas) are part of their words and are kept.
_LATIN_ACCENTS: Final = re.compile("[\u0300-\u036f]")
_MAX_WORDS: Final = 4


def normalise(text: str) -> tuple[str, ...]:
    """Case-folded words of `text`, Latin accents and doses removed, in any script:
    'Lipitor 20mg' -> ('lipitor',); 'Furosémide 40 mg' -> ('furosemide',); 'रितोनाविर' stays
    one word."""
    folded = unicodedata.normalize("NFKD", text.casefold().replace("\u2019", "'"))
    folded = unicodedata.normalize("NFC", _LATIN_ACCENTS.sub("", folded))
    folded = _DOSE.sub(" ", folded)
    # A word is a run of letters, digits and combining marks; anything else separates words.
    return tuple(
        "".join(
            ch if ch.isalnum() or unicodedata.category(ch)[0] == "M" else " " for ch in folded
        ).split()
    )


@dataclass(frozen=True)
class ClassEntry:
    """One class of the synonym table."""

    name: str
    label: str
    tags: frozenset[str]
    implies: tuple[str, ...]


class SynonymTable:
    """Word n-gram lookup from synonyms to classes, for one kind (medications or conditions)."""

    def __init__(
        self, kind: str, classes: Mapping[str, ClassEntry], names: Mapping[tuple[str, ...], str]
    ) -> None:
        self.kind = kind
        self.classes = dict(classes)
        self._names = dict(names)
        self.match = lru_cache(maxsize=4096)(self._match)

    def _match(self, text: str) -> tuple[str, ...]:
        words = normalise(text)
        found: list[str] = []
        for size in range(min(_MAX_WORDS, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                cls = self._names.get(words[start : start + size])
                if cls is not None and cls not in found:
                    found.append(cls)
        return tuple(sorted(found))

    def classify(self, entries: Iterable[Any]) -> tuple[dict[str, list[str]], list[str]]:
        """Map entries to {class: [entries]} and return the entries that matched nothing."""
        classes: dict[str, list[str]] = {}
        unknown: list[str] = []
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                unknown.append(str(entry))
                continue
            matched = self.match(entry)
            if not matched:
                unknown.append(entry)
            for cls in matched:
                classes.setdefault(cls, []).append(entry)
        return classes, unknown


def build_table(kind: str, data: Any, where: str) -> SynonymTable:
    """Build a table from the YAML mapping `class -> {label, tags, implies, names}`.

    Raises ValueError naming the class when the table is malformed or a synonym is claimed by
    two classes (an ambiguous table would make mapping depend on file order).
    """
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a mapping of classes")
    classes: dict[str, ClassEntry] = {}
    names: dict[tuple[str, ...], str] = {}
    allowed = {"label", "tags", "implies", "names"}
    for cls, spec in data.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{where} class {cls}: expected a mapping")
        extra = set(spec) - allowed
        if extra:
            raise ValueError(f"{where} class {cls}: unknown field(s) {sorted(extra)}")
        synonyms = spec.get("names")
        if not isinstance(synonyms, list) or not synonyms:
            raise ValueError(f"{where} class {cls}: 'names' must be a non-empty list")
        tags = spec.get("tags", []) or []
        implies = spec.get("implies", []) or []
        if not isinstance(tags, list) or not isinstance(implies, list):
            raise ValueError(f"{where} class {cls}: 'tags' and 'implies' must be lists")
        classes[cls] = ClassEntry(cls, str(spec.get("label", cls)), frozenset(tags), tuple(implies))
        for synonym in [cls.replace("_", " "), *synonyms]:
            key = normalise(str(synonym))
            if not key or len(key) > _MAX_WORDS:
                raise ValueError(
                    f"{where} class {cls}: synonym {synonym!r} must be 1-{_MAX_WORDS} words"
                )
            owner = names.get(key)
            if owner is not None and owner != cls:
                raise ValueError(
                    f"{where} class {cls}: synonym {synonym!r} already belongs to {owner}"
                )
            names[key] = cls
    return SynonymTable(kind, classes, names)

"""Patient-written text shown somewhere else: CDS Hooks cards in an EHR, FHIR DetectedIssue
text, summaries. Reports are validated on the way in (no control or bidirectional formatting
characters), but what is shown is cleaned again on the way out, whatever is stored: reports
from before that validation, and any path that forgot it."""

from __future__ import annotations

import re
from typing import Any, Final

# C0 and C1 controls (tab and newlines too: the text is shown on one line), bidirectional marks,
# embeddings, overrides and isolates ("Trojan Source"), zero-width and word-joiner characters,
# and the byte-order mark.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+"
)
MAX_LENGTH: Final = 300


def display_text(value: Any, limit: int = MAX_LENGTH) -> str:
    """`value` as one line of plain text: unsafe characters become a space, at most `limit`
    characters (an ellipsis marks a cut). Escaping for the target format (Markdown, HTML) is
    still the caller's job."""
    text = " ".join(_UNSAFE.sub(" ", str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""The one exception type for mistakes a user can make (bad names, missing files, bad config).

Scripts catch it and print a single ``error: ...`` line instead of a traceback; anything else that
escapes is our bug and keeps its traceback.
"""
from __future__ import annotations

import difflib


class ClassifierError(Exception):
    """A user-caused problem, described in one line."""


def unknown_choice(kind: str, value: str, choices) -> ClassifierError:
    """Build the error for an unknown name, suggesting close matches."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return ClassifierError(f"unknown {kind} '{value}'{hint} (choices: {shown})")

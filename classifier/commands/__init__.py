"""Command implementations behind the thin root scripts (train.py, eval.py, test.py, export.py)."""
from __future__ import annotations

import functools
import sys

from classifier.errors import ClassifierError


def cli_entry(main):
    """Wrap a command's ``main(argv)`` so user errors print one line and exit 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except ClassifierError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

"""The toolkit's cache folder, for things fetched once and reused (the browser runtime, weights).

``$CLASSIFIER_CACHE`` if set, else ``$XDG_CACHE_HOME/classifier``, else ``~/.cache/classifier``.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("CLASSIFIER_CACHE"):
        return Path(os.environ["CLASSIFIER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "classifier"


def cache_dir(*parts: str) -> Path:
    """``cache_root()/part/...``, created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

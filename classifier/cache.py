"""The one folder where the toolkit keeps what it can recompute: decoded pixels, data checks, features.

Root: ``$CLASSIFIER_CACHE`` when set, else ``$XDG_CACHE_HOME/classifier``, else ``~/.cache/classifier``.
Each kind of cache has a sub-folder (``cache_dir("decoded")``, ``cache_dir("checks")``, ...). Everything
in it can be deleted at any time: the next run recomputes what it needs.

Size: bounded by ``$CLASSIFIER_CACHE_MAX_GB`` (default 20 GB). After writing a file, a cache calls
:func:`enforce_limit`, which deletes the least recently used files (oldest modification time; a cache
hit refreshes it with :func:`touch`) until the folder is under the limit again. The file just written
is kept even if it alone is larger than the limit.

Clear it with :func:`clear_cache` (``classifier.cache.clear_cache()``), or delete the folder.

Kinds: ``decoded`` (pixels of small file datasets, below), ``checks`` (classifier.data.check), ``features``
(classifier.engine.features), ``onnxruntime-web`` (classifier.export.web).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from classifier.errors import ClassifierError

log = logging.getLogger(__name__)

ROOT_ENV = "CLASSIFIER_CACHE"
MAX_GB_ENV = "CLASSIFIER_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
_GB = 1 << 30


def cache_root() -> Path:
    """The cache folder (read from the environment at every call, so tests and users can move it)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "classifier"


def cache_dir(*parts: str) -> Path:
    """``cache_root()/part/...``, created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def max_cache_bytes() -> int:
    """The size limit: ``$CLASSIFIER_CACHE_MAX_GB`` gigabytes (default 20; 0 or less: no limit)."""
    text = os.environ.get(MAX_GB_ENV, "").strip()
    try:
        gb = float(text) if text else DEFAULT_MAX_GB
    except ValueError:
        raise ClassifierError(f"{MAX_GB_ENV}={text!r} is not a number of gigabytes") from None
    return int(gb * _GB) if gb > 0 else 0


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                out.append((path, path.stat()))
            except OSError:  # removed meanwhile (another process evicting)
                pass
    return out


def cache_size(*parts: str) -> int:
    """Bytes held under the cache root (or one of its sub-folders)."""
    root = cache_root().joinpath(*parts)
    return sum(st.st_size for _, st in _files(root)) if root.is_dir() else 0


def cache_usage() -> dict[str, int]:
    """Bytes per sub-folder of the cache root (files directly in the root count under "")."""
    root = cache_root()
    usage: dict[str, int] = {}
    for path, st in _files(root) if root.is_dir() else []:
        rel = path.relative_to(root).parts
        key = rel[0] if len(rel) > 1 else ""
        usage[key] = usage.get(key, 0) + st.st_size
    return usage


def describe_cache() -> str:
    """One line for a run header: where the cache is, what it holds and its limit."""
    usage = cache_usage()
    limit = max_cache_bytes()
    parts = ", ".join(f"{k or 'other'} {_human(v)}" for k, v in sorted(usage.items()))
    return (f"cache: {cache_root()} holds {_human(sum(usage.values()))}"
            + (f" ({parts})" if parts else "")
            + (f" of at most {_human(limit)}" if limit else ", no size limit")
            + f" (set {MAX_GB_ENV}; clear with classifier.cache.clear_cache())")


def touch(path: str | os.PathLike) -> None:
    """Mark a cache file as just used, so eviction takes older files first."""
    try:
        os.utime(path)
    except OSError:
        pass


def enforce_limit(keep: str | os.PathLike | None = None, max_bytes: int | None = None) -> int:
    """Delete the least recently used files until the cache fits ``max_bytes`` (default: the configured
    limit); ``keep`` (the file just written) is never deleted. Returns the bytes freed."""
    limit = max_cache_bytes() if max_bytes is None else max_bytes
    root = cache_root()
    if not limit or not root.is_dir():
        return 0
    files = sorted(_files(root), key=lambda f: f[1].st_mtime_ns)
    total = sum(st.st_size for _, st in files)
    keep = Path(keep).resolve() if keep else None
    freed = 0
    for path, st in files:
        if total - freed <= limit:
            break
        if keep is not None and path.resolve() == keep:
            continue
        try:
            path.unlink()
            freed += st.st_size
        except OSError:
            pass
    return freed


def clear_cache(*parts: str) -> int:
    """Delete the whole cache (or one sub-folder, e.g. ``clear_cache("decoded")``); returns the bytes freed."""
    target = cache_root().joinpath(*parts)
    if not target.exists():
        return 0
    freed = cache_size(*parts)
    shutil.rmtree(target, ignore_errors=True)
    return freed


def _human(n: int) -> str:
    for unit, size in (("GB", _GB), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# --- decoded pixels ---------------------------------------------------------------------------------
# File datasets small enough for memory are decoded once (classifier.data.loaders.decode_to_memory); a slow
# decode is kept here, keyed by the file list (paths, sizes, modification times) and how it was decoded.

def decoded_key(paths: list[str], how: str) -> str:
    """32 hex digits naming the decode of ``paths`` done as ``how`` (channels, fit size, ...)."""
    h = hashlib.sha256(f"decoded-v1 {how}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\tmissing\n".encode())
    return h.hexdigest()[:32]


def read_decoded(key: str, n: int, shape: tuple):
    """(uint8 images (n, *shape), decoded-ok flags (n,)) saved under ``key``, or None."""
    path = cache_root() / "decoded" / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, ok = z["images"], z["ok"]
        if images.shape == (n, *shape) and images.dtype == np.uint8 and ok.shape == (n,):
            touch(path)
            return images, ok.astype(bool)
    except (OSError, ValueError, KeyError):
        pass
    return None


def write_decoded(key: str, images: np.ndarray, ok: np.ndarray) -> None:
    """Save decoded images atomically (then enforce the size limit); a read-only or full disk only warns."""
    tmp, folder = None, None
    try:
        folder = cache_dir("decoded")
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz.tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, ok=ok)
        os.replace(tmp, folder / f"{key}.npz")
        enforce_limit(keep=folder / f"{key}.npz")
    except OSError as err:  # we just decode again next time
        log.warning("could not save decoded images to %s: %s", folder, err)
        if tmp:
            Path(tmp).unlink(missing_ok=True)

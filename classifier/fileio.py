"""Writing outputs: atomic files (a crash or kill mid-write leaves the previous file intact, never half a
file), and write failures (missing or unwritable folder, read-only or full disk) as one-line errors that name
the path and the system's reason, the same from every command and from the Python API.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from classifier.errors import ClassifierError

# torch.save to a path writes through C++ and reports a full disk as "RuntimeError: [enforce fail at
# inline_container.cc] unexpected pos"; below this much free space such a failure is taken for a full disk
FULL_DISK_BYTES = 64 * 1024


def os_reason(err: OSError) -> str:
    """The system's words for an OSError ("No space left on device", "Permission denied", ...)."""
    if err.errno:
        return err.strerror or os.strerror(err.errno)
    return str(err).strip() or type(err).__name__


def write_error(what: str, path, err: OSError) -> ClassifierError:
    return ClassifierError(f"cannot write {what} {path}: {os_reason(err)}")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None


def make_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) and make sure files can be written in it; one-line error if not."""
    path = Path(path)
    try:
        _mkdir(path)
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise write_error(f"to {what}", path, err) from None
    return path


@contextmanager
def writing(path: str | os.PathLike, what: str = "file"):
    """Turn an OSError raised while writing ``path`` into a one-line ClassifierError naming it."""
    try:
        yield Path(path)
    except OSError as err:
        raise write_error(what, path, err) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextmanager
def atomic_target(path: str | os.PathLike, what: str = "file"):
    """Yield a temporary path beside ``path``; when the block succeeds it is synced and renamed over it.

    On any failure the temporary file is removed and the previous ``path`` is left as it was; a failure to
    write (OSError, or torch's RuntimeError on a full disk) becomes a ClassifierError naming ``path``.
    """
    path = Path(path)
    try:
        _mkdir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(what, path, err) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the modes of ordinary new files
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(what, path, err) from None
    except RuntimeError:
        full = _disk_full(path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise write_error(what, path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Write a text file atomically (see ``atomic_target``)."""
    with atomic_target(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_torch(obj, path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``torch.save`` atomically through a Python file object, so a full disk is an OSError (ENOSPC) here."""
    import torch  # fileio is imported by light modules; torch only when a tensor file is written

    with atomic_target(path, what) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
    return Path(path)

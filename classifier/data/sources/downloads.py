"""Fetching an official dataset file once, and the one error that says where to put it when that fails.

Sources call these through the module (``downloads.download_file``), so a test can stand in for the
network in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from classifier._compat import import_torchvision
from classifier.errors import ClassifierError


def download_file(url: str, folder: Path, filename: str, md5: str, extract: bool) -> None:
    """Fetch (and unpack) one official file; any failure propagates to the caller's message."""
    import_torchvision()  # torchvision is imported only to download: it takes seconds on a CPU-only torch
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    folder.mkdir(parents=True, exist_ok=True)
    if extract:
        download_and_extract_archive(url, str(folder), filename=filename, md5=md5, remove_finished=True)
    else:
        download_url(url, str(folder), filename=filename, md5=md5)


def fetch_or_explain(what: str, target: Path, files: list[str], download: bool, fetch: Callable[[], None]) -> None:
    """Run ``fetch`` when downloads are allowed; when they are not, or it fails, one line naming the files
    and the folder they belong in."""
    reason = "download disabled"
    if download:
        try:
            fetch()
            return
        except Exception as err:  # noqa: BLE001 - offline, proxy, bad checksum: all explained below
            reason = f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    raise ClassifierError(f"{what} not found; put {', '.join(files)} in {target}/ ({reason})")


def check_labels(labels, num_classes: int, what: str) -> None:
    """Class indices read from an official file must lie in 0..num_classes-1."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ClassifierError(f"{what}: labels outside 0..{num_classes - 1}")

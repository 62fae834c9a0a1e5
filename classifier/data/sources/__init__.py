"""Dataset sources: one registry, one module per source, and ``load_dataset``, the only way data enters.

    info, official = load_dataset("cifar10")          # or "fashion_mnist", "eurosat", "folder:PATH", a user's name
    official["train"], official.get("test")           # Samples (classifier.data.samples)

A dataset string names a source: a plain name (``fashion_mnist``), or ``PREFIX:PATH`` for a source that
takes a path (``folder:data/flowers``). Built in: fashion_mnist.py, cifar10.py, eurosat.py, folder.py,
arrays.py (``dataset=(images, labels)`` runs, recorded as ``arrays:<fingerprint>``). A user adds one with
``@classifier.register_dataset(name)`` (user.py).

Adding a source is one module that registers itself, and one import line below:

    @register_source("mysource", takes_path=True, mean=None, std=None, augment="light")
    def load(path, root, download):            # path: what follows "mysource:" (None for a plain name);
        ...                                     # root: the data folder (Config.data_dir); download: allowed?
        return DatasetInfo(f"mysource:{path}", classes, channels, (h, w), mean, std), {"train": samples, ...}

The contract a loader keeps:
* It returns ``(DatasetInfo, {split: Samples})`` with the official splits that exist: ``train`` always,
  ``val`` and ``test`` when the data defines them (what is missing is carved from train by splits.py).
* ``info.name`` is the dataset string that loads the same data again: a run records it, and evaluation,
  resume and export reload the run's split through it.
* Labels are class indices (N,) into ``info.classes``, or a 0/1 matrix (N, len(classes)) with
  ``info.multilabel = True`` (see classifier.data.samples).
* Samples are in memory (uint8 N,H,W,C arrays: small datasets) or file paths with a ``root`` that split
  records are relative to (streamed, decoded by classifier.data.images).
* ``mean``/``std``: published per-channel figures (0-1 scale) when the source has them, registered and put
  in the info; otherwise measured from the training files (``classifier.data.statistics.image_stats``).
* ``augment``: the preset a run uses when it does not choose one (``classifier.data.augment.PRESETS``).
* Mistakes a user can make (missing files, bad layout, offline download) raise a one-line ClassifierError
  naming the file or folder; ``downloads.fetch_or_explain`` gives the one for missing official files.
"""
from classifier.data.sources.registry import (DatasetSource, check_dataset, default_augment, find_source,
                                              load_dataset, parse_spec, register_source, resolve, source_names,
                                              source_stats, unknown_dataset)
from classifier.data.sources import arrays, cifar10, csv, eurosat, fashion_mnist, folder  # noqa: F401 (register)
from classifier.data.sources.arrays import ARRAYS_PREFIX, arrays_dataset, arrays_needed, as_uint8_images
from classifier.data.sources.folder import labelled_folder, load_folder, scan_class_folders
from classifier.data.sources.user import register_dataset

__all__ = [
    "ARRAYS_PREFIX", "DatasetSource", "arrays_dataset", "arrays_needed", "as_uint8_images", "check_dataset",
    "default_augment", "find_source", "labelled_folder", "load_dataset", "load_folder", "parse_spec",
    "register_dataset", "register_source", "resolve", "scan_class_folders", "source_names", "source_stats",
    "unknown_dataset",
]

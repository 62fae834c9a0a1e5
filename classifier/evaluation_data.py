"""What ``Model.evaluate`` (and ``eval.py``) evaluates on: in-memory arrays, a folder of class sub-folders,
or a split of the model's own run (or of another dataset, split as that run was)."""
from __future__ import annotations

from pathlib import Path

from classifier.data import Samples, run_splits
from classifier.data.sources.arrays import arrays_dataset
from classifier.data.sources.csv import labelled_csv
from classifier.data.sources.folder import labelled_folder
from classifier.data.splits import evaluation_split
from classifier.errors import ClassifierError


def evaluation_samples(data, split: str | None, data_dir, *, model_path: Path, classes: list[str],
                       metadata: dict) -> tuple[Samples, str, str]:
    """The labelled samples to evaluate the model at ``model_path`` on, what they are (for the report's
    title) and a short name for the report folder.

    ``data``: None (the split recorded in split.json beside the model), a folder of class sub-folders
    (labelled by class name), a label CSV file (every row; classifier/data/sources/csv.py), a dataset spec
    (split as the run was), or ``(images, labels)`` arrays.
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ClassifierError(f"data=(images, labels) takes two arrays, got {len(data)} items")
        info, official = arrays_dataset(*data, class_names=classes)
        return official["train"], f"{len(official['train'])} images from memory", "arrays"
    if data is not None and Path(str(data)).is_dir():
        return labelled_folder(str(data), classes), f"folder {data}", Path(str(data)).name
    if data is not None and str(data).lower().endswith(".csv") and Path(str(data)).is_file():  # every row
        multilabel = (metadata.get("task") or (metadata.get("config") or {}).get("task")) == "multilabel"
        return labelled_csv(str(data), classes, multilabel), f"label file {data}", Path(str(data)).stem
    config = metadata.get("config") or {"dataset": metadata.get("dataset")}
    record = Path(model_path).parent / "split.json"
    if data is None and not record.exists() and not config.get("dataset"):
        raise ClassifierError(f"no split.json next to {model_path}: say what to evaluate on "
                              "(a FOLDER argument or --dataset)")
    found = run_splits(config, split_file=record, data_dir=data_dir, dataset=data)
    split = split or evaluation_split(found.record)  # test; val for a train/val run without test images
    if split not in found.splits:
        raise ClassifierError(f"unknown split '{split}' (choices: {', '.join(found.splits)})")
    where = f"{found.record['dataset']} {split} split" + (f" recorded in {record}" if data is None
                                                          and record.exists() else "")
    return found.splits[split], where, split

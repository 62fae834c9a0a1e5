"""EuroSAT (RGB): 27,000 Sentinel-2 satellite tiles, 64x64, in 10 land-use classes; one official split.

Looked for in ROOT/eurosat/2750 (the original zip) or ROOT/eurosat/EuroSAT_RGB (the Zenodo release);
downloaded and unpacked to ROOT/eurosat when missing. Streamed from disk (file Samples).
"""
from __future__ import annotations

from pathlib import Path

import classifier.data.sources.downloads as downloads
from classifier.data.samples import DatasetInfo
from classifier.data.sources.folder import scan_class_folders
from classifier.data.sources.registry import register_source
from classifier.errors import ClassifierError

# The original host (madm.dfki.de/files/sentinel/EuroSAT.zip) is gone; this is the same zip (same MD5)
# as mirrored by torchgeo, the URL torchvision uses.
URL = ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
       "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip")
MD5 = "c8fa014336c82ac7804f0398fcb19387"
DIRS = ("2750", "EuroSAT_RGB")  # folder inside the zip: old release, Zenodo release
CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
           "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
MEAN, STD = (0.3444, 0.3803, 0.4078), (0.2027, 0.1369, 0.1155)  # the published figures over the whole RGB set


@register_source("eurosat", mean=MEAN, std=STD, augment="light")
def load(path, root: Path, download: bool):
    """Helber et al.'s EuroSAT RGB (one official split: train)."""
    base = root / "eurosat"

    def find():
        for name in DIRS:
            if (base / name).is_dir():
                return base / name
        return None

    folder = find()
    if folder is None:
        downloads.fetch_or_explain("EuroSAT", base / "2750", ["<ClassName>/<ClassName>_<n>.jpg"], download,
                                   lambda: downloads.download_file(URL, base, "EuroSAT.zip", MD5, extract=True))
        folder = find()
        if folder is None:
            raise ClassifierError(f"EuroSAT archive did not unpack to {base}/2750")
    classes, samples = scan_class_folders(folder)
    if classes != CLASSES:
        raise ClassifierError(f"{folder}: expected the EuroSAT classes {', '.join(CLASSES)}, "
                              f"found {', '.join(classes)}")
    samples.source = "train"
    return DatasetInfo("eurosat", classes, 3, (64, 64), MEAN, STD), {"train": samples}

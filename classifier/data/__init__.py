"""Datasets, splits, augmentation and loaders.

    info, official = load_dataset("cifar10")              # official splits, as Samples (sources/ registry)
    splits, record = split_dataset(info, official, seed=0)  # train/val/test + what went where
    prep = info.preprocessing()                           # or the model's own size/channels
    loader = build_loader(splits["train"], prep, train=True, batch_size=256,
                          augment=default_augment(info.name))
"""
from classifier.data.augment import PRESETS, Preset, augment_batch, build_pipeline, resolve_augment
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources import default_augment, load_dataset, parse_spec, register_dataset
from classifier.data.images import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_image
from classifier.data.loaders import InMemoryLoader, Loader, StreamingLoader, build_loader
from classifier.data.splits import (RunSplits, cap_per_class, load_split, run_splits, samples_from_record, save_split,
                                    select_classes, split_dataset)

__all__ = [
    "IMAGE_EXTENSIONS", "PRESETS", "BadImageError", "DatasetInfo", "InMemoryLoader", "Loader", "Preset",
    "Samples", "StreamingLoader", "augment_batch", "build_loader", "build_pipeline", "default_augment",
    "is_image_file", "load_dataset", "load_image", "load_split", "parse_spec", "resolve_augment",
    "samples_from_record", "save_split", "split_dataset", "RunSplits", "run_splits", "select_classes",
    "cap_per_class", "register_dataset",
]

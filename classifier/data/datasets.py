"""Where the dataset code used to live; kept so old imports keep working. New code imports from:

* classifier.data.samples: DatasetInfo, Samples (the types every source returns)
* classifier.data.sources: load_dataset, the registry, register_dataset; one module per source
* classifier.data.statistics: image_stats (folder statistics), default_resize_policy
* classifier.data.images: image_files_under
"""
from classifier.data.images import image_files_under
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources import (ARRAYS_PREFIX, arrays_needed, labelled_folder, load_dataset, load_folder,
                                     parse_spec, scan_class_folders)
from classifier.data.sources.cifar10 import read_cifar_pickle
from classifier.data.sources.fashion_mnist import CLASSES as FASHION_CLASSES
from classifier.data.sources.fashion_mnist import fashion_mnist_files, read_idx
from classifier.data.statistics import default_resize_policy
from classifier.data.statistics import image_stats as folder_stats

__all__ = ["ARRAYS_PREFIX", "DatasetInfo", "FASHION_CLASSES", "Samples", "arrays_needed", "default_resize_policy",
           "fashion_mnist_files", "folder_stats", "image_files_under", "labelled_folder", "load_dataset",
           "load_folder", "parse_spec", "read_cifar_pickle", "read_idx", "scan_class_folders"]

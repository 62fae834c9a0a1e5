"""Moved to classifier.data.sources.arrays (the in-memory arrays source); kept so old imports keep working."""
from classifier.data.sources.arrays import arrays_dataset, as_uint8_images, fingerprint, pixels_to_uint8

__all__ = ["arrays_dataset", "as_uint8_images", "fingerprint", "pixels_to_uint8"]

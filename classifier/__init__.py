"""Image classification by transfer learning, and its deployment."""
__version__ = "0.1.0"

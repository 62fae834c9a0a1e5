"""The toolkit's version (setup.cfg reads it from here without importing the package)."""
__version__ = "0.2.0"

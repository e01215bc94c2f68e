"""The version, in one place: the package metadata and every file modpool writes read it."""

__version__ = "0.2.0"

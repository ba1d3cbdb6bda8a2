"""The installed package's version (a module of its own, so that every layer can read
it without importing the package root)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastsoftmax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

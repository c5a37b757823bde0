"""Exceptions of the storage package, and the project-wide base exception.

`MeganeError` lives here because `storage` is the package every other one may import
(SPEC §2: imports run crawler -> classifier -> storage).
"""

from __future__ import annotations


class MeganeError(Exception):
    """Base of every exception megane-crawler raises on purpose."""


class StorageError(MeganeError):
    """The catalogue or the data directory could not do what was asked."""


class CatalogueError(StorageError):
    """The SQLite catalogue failed (locked, corrupt, newer schema than this program)."""


class UnknownMediaError(StorageError):
    """No stored image matches the given sha256 (prefix), or several do."""


class PlacementError(StorageError):
    """A file could not be placed under data_dir (disk full, permissions)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

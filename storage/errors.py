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


class DataDirInUseError(StorageError):
    """Another daemon (`megane run`, `once` or `import`) works in this data_dir now."""

    def __init__(self, data_dir: str, holder: str) -> None:
        who = f" (pid {holder})" if holder.isdigit() else ""
        super().__init__(
            f"{data_dir}: another megane run/once/import is using this data_dir{who}; stop it "
            "first (`systemctl stop megane-crawler`), or give this command another data_dir")
        self.data_dir = data_dir


class UnknownMediaError(StorageError):
    """No stored image matches the given sha256 (prefix), or several do."""


class PlacementError(StorageError):
    """A file could not be placed under data_dir (disk full, permissions)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

"""Storage: the SQLite catalogue, file placement under data_dir, quarantine files, and the
one redactor every package uses before text is stored, logged or shown."""

from storage.catalogue import Catalogue, RescoreItem, SourceState
from storage.errors import (
    CatalogueError,
    MeganeError,
    PlacementError,
    StorageError,
    UnknownMediaError,
)
from storage.placement import DataLayout, place, remove_everywhere, sweep
from storage.records import BlobRow, MediaRef, MediaRow, Placement, State
from storage.redact import redact

__all__ = [
    "BlobRow",
    "Catalogue",
    "CatalogueError",
    "DataLayout",
    "MediaRef",
    "MediaRow",
    "MeganeError",
    "Placement",
    "PlacementError",
    "RescoreItem",
    "SourceState",
    "State",
    "StorageError",
    "UnknownMediaError",
    "place",
    "redact",
    "remove_everywhere",
    "sweep",
]

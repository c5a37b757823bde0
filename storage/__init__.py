"""Storage: the SQLite catalogue, file placement under data_dir, quarantine files."""

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
    "remove_everywhere",
    "sweep",
]

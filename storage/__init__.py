"""Storage: the SQLite catalogue, file placement under data_dir, quarantine files, and the
one redactor every package uses before text is stored, logged or shown."""

from storage.catalogue import Catalogue, RescoreItem, SourceState
from storage.catalogue_hygiene import BlockedHash, ImageHash, NearDuplicateRecord
from storage.catalogue_labels import LabelRecord
from storage.catalogue_review import ReviewItem
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
    "BlockedHash",
    "Catalogue",
    "CatalogueError",
    "DataLayout",
    "ImageHash",
    "LabelRecord",
    "MediaRef",
    "MediaRow",
    "MeganeError",
    "NearDuplicateRecord",
    "Placement",
    "PlacementError",
    "RescoreItem",
    "ReviewItem",
    "SourceState",
    "State",
    "StorageError",
    "UnknownMediaError",
    "place",
    "redact",
    "remove_everywhere",
    "sweep",
]

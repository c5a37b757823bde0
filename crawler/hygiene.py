"""Library hygiene: near-duplicates, blocked hashes and deleting images.

Every decoded image whose 64-bit dHash is *informative* (`classifier.phash`: balanced, and
decided by clear brightness differences; flat colours, text lines, black or a scanned page
are not) has it stored (`blobs.phash`, hex); other images store none and are never matched
by hash, only by their exact bytes. A new arrival whose hash is within
`near_duplicate_distance` bits of a blocked hash (an image a user deleted or a reviewer
confirmed as NSFW) is rejected as `blocked_near_duplicate_of:<sha256>`; one within that
distance of a stored image is recorded as a duplicate of it (`near_duplicate_of:<sha256>`)
and not stored again. Images still in flight claim their hash (and their bytes) in arrival
order: a later near-copy, or the same bytes from another URL, waits for the first to be
filed and is then recorded against it, so copies arriving in one run are stored and
classified once.

The pipeline calls, after `record_decoded` of each new image::

    verdict = await check_arrival(catalogue, index, sha256, phash, max_distance, owner=id)
    None                 -> new: index.claim(sha256, phash, id), classify and file it,
                            index.add(...) after filing, index.release(sha256) when done
    verdict.blocked      -> reject(verdict.reason)
    verdict.in_flight    -> wait until the claimant is done, then check again
    otherwise            -> record_near_duplicate(...)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from classifier.phash import balanced, informative_hash
from storage.catalogue import Catalogue
from storage.contact_sheet import remove_thumbnails
from storage.placement import DataLayout, remove_everywhere

DEFAULT_NEAR_DUPLICATE_DISTANCE = 6
DELETED_BY_USER = "deleted_by_user"
CONFIRMED_NSFW = "confirmed_nsfw"


def _as_int(phash: int | str) -> int:
    return int(phash, 16) if isinstance(phash, str) else phash


def _popcount(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """Set bits per element (np.bitwise_count needs NumPy 2; unpackbits works on 1.26)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int32)
    bits = np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1)
    counts: npt.NDArray[np.int32] = bits.sum(axis=1, dtype=np.int32)
    return counts


class _HashTable:
    """sha256 -> 64-bit hash, kept in one growable uint64 array for vectorised search."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._positions: dict[str, int] = {}
        self._values: npt.NDArray[np.uint64] = np.zeros(64, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._positions

    def put(self, key: str, value: int) -> None:
        position = self._positions.get(key)
        if position is None:
            position = len(self._keys)
            if position == len(self._values):
                self._values = np.concatenate([self._values, np.zeros_like(self._values)])
            self._keys.append(key)
            self._positions[key] = position
        self._values[position] = np.uint64(value)

    def discard(self, key: str) -> None:
        position = self._positions.pop(key, None)
        if position is None:
            return
        last = len(self._keys) - 1
        if position != last:  # move the last entry into the hole
            moved = self._keys[last]
            self._keys[position] = moved
            self._values[position] = self._values[last]
            self._positions[moved] = position
        self._keys.pop()

    def nearest(self, value: int, exclude: str | None = None) -> tuple[str, int] | None:
        count = len(self._keys)
        if count == 0:
            return None
        distances = _popcount(self._values[:count] ^ np.uint64(value))
        if exclude is not None and exclude in self._positions:
            distances[self._positions[exclude]] = 65
        best = int(np.argmin(distances))
        if distances[best] > 64:
            return None
        return self._keys[best], int(distances[best])


class PhashIndex:
    """The dHashes of every filed image and every blocked hash, searchable by distance."""

    def __init__(self) -> None:
        self.stored = _HashTable()
        self.blocked = _HashTable()
        self.in_flight = _HashTable()
        # sha256 -> media row id of the arrival being processed with those bytes.
        self.claims: dict[str, int] = {}
        self._blocked_rowid = 0

    @classmethod
    async def load(cls, catalogue: Catalogue) -> PhashIndex:
        """Every filed image's hash (library, quarantine, held) and every blocked hash."""
        index = cls()
        for sha256, phash in await catalogue.filed_image_hashes():
            index.add(sha256, phash)
        await index.refresh_blocked(catalogue)
        return index

    async def refresh_blocked(self, catalogue: Catalogue) -> int:
        """Read hashes blocked since the last call (by any process); returns how many."""
        rows = await catalogue.blocked_hashes_after(self._blocked_rowid)
        for row in rows:
            # A hash blocked before the information rule (e.g. a deleted plain page, 0)
            # would block every plain image: only balanced hashes block.
            if balanced(row.phash):
                self.blocked.put(f"{row.sha256}:{row.phash}", _as_int(row.phash))
            self._blocked_rowid = max(self._blocked_rowid, row.rowid)
        return len(rows)

    def add(self, sha256: str, phash: int | str) -> None:
        """Remember a filed image (call after placing it); an uninformative hash is ignored."""
        if balanced(phash):
            self.stored.put(sha256, _as_int(phash))

    def discard(self, sha256: str) -> None:
        self.stored.discard(sha256)

    def claim(self, sha256: str, phash: int | str | None, owner: int) -> None:
        """Media row `owner` is processing `sha256` (hash `phash`): later copies wait for it."""
        self.claims[sha256] = owner
        if phash is not None and balanced(phash):
            self.in_flight.put(sha256, _as_int(phash))

    def release(self, sha256: str, owner: int) -> bool:
        """Row `owner` is done with `sha256`; False when it held no claim on it."""
        if self.claims.get(sha256) != owner:
            return False
        del self.claims[sha256]
        self.in_flight.discard(sha256)
        return True

    def nearest(self, phash: int | str, max_distance: int,
                exclude: str | None = None) -> tuple[str, int] | None:
        """The filed image closest to `phash` if within `max_distance` bits: (sha256, bits)."""
        found = self.stored.nearest(_as_int(phash), exclude)
        return found if found is not None and found[1] <= max_distance else None

    def nearest_blocked(self, phash: int | str,
                        max_distance: int) -> tuple[str, int] | None:
        """The blocked image closest to `phash` if within `max_distance`: (sha256, bits)."""
        found = self.blocked.nearest(_as_int(phash))
        if found is None or found[1] > max_distance:
            return None
        return found[0].partition(":")[0], found[1]


@dataclass(frozen=True)
class Verdict:
    """An arrival is a copy of `of_sha256`: blocked (reject it), a duplicate of a filed
    image, or (`in_flight`) of an image still being processed (wait for it)."""

    blocked: bool
    of_sha256: str
    distance: int
    in_flight: bool = False

    @property
    def reason(self) -> str:
        kind = "blocked_near_duplicate_of" if self.blocked else "near_duplicate_of"
        return f"{kind}:{self.of_sha256}"


async def check_arrival(catalogue: Catalogue, index: PhashIndex, sha256: str,
                        phash: int | str | None,
                        max_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE,
                        owner: int | None = None) -> Verdict | None:
    """What to do with a newly decoded image: None (new), blocked, or a near-duplicate.

    `phash` is None (or unbalanced) for an image whose hash does not count: then only its
    exact bytes can be in flight. Blocked hashes are re-read first, so a deletion made by
    `megane delete` or the review UI (another process) takes effect at once. Blocked wins
    over duplicate: a repost of a deleted image is dropped even while the daemon still
    remembers the deleted one. A filed original wins over one still in flight.
    """
    usable = phash is not None and balanced(phash)
    if usable:
        await index.refresh_blocked(catalogue)
    # No await from here on: the caller claims at once, so two arrivals of the same
    # bytes (or near-copies) cannot both see nothing in flight.
    claimant = index.claims.get(sha256)
    if claimant is not None and claimant != owner:
        return Verdict(blocked=False, of_sha256=sha256, distance=0, in_flight=True)
    if phash is None or not usable:
        return None
    blocked = index.nearest_blocked(phash, max_distance)
    if blocked is not None:
        return Verdict(blocked=True, of_sha256=blocked[0], distance=blocked[1])
    duplicate = index.nearest(phash, max_distance, exclude=sha256)
    if duplicate is not None:
        return Verdict(blocked=False, of_sha256=duplicate[0], distance=duplicate[1])
    found = index.in_flight.nearest(_as_int(phash), exclude=sha256)
    if found is not None and found[1] <= max_distance:
        return Verdict(blocked=False, of_sha256=found[0], distance=found[1], in_flight=True)
    return None


async def record_near_duplicate(catalogue: Catalogue, layout: DataLayout, media_id: int,
                                sha256: str, verdict: Verdict, now: float) -> bool:
    """Record media row `media_id` as a near-duplicate of `verdict.of_sha256`.

    The row takes the original's state and sha256, with reason `near_duplicate_of:...`;
    the new content's blob row and spool file are dropped unless another row still needs
    them. Returns False, changing nothing, when the original is no longer filed: the
    caller then carries on with the new image as usual.
    """
    outcome = await catalogue.record_near_duplicate(
        media_id, sha256, verdict.of_sha256, verdict.reason, now)
    if not outcome.recorded:
        return False
    if outcome.blob_dropped:
        await asyncio.to_thread(_unlink_missing_ok, layout.spool_file(sha256))
    return True


def _unlink_missing_ok(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _phash_of(catalogue: Catalogue, layout: DataLayout | None,
                    sha256: str) -> str | None:
    """The informative dHash of an image (stored, or computed from its file), else None."""
    stored = await catalogue.image_hash(sha256)
    if stored is None:
        return None
    if stored.phash:
        return stored.phash if balanced(stored.phash) else None
    if layout is None:
        return None
    path = layout.content_file(sha256, stored.extension)
    if path is None:
        return None
    return await asyncio.to_thread(_compute_phash, path)


def _compute_phash(path: Path) -> str | None:
    with Image.open(path) as image:
        return informative_hash(image)


async def block(catalogue: Catalogue, sha256: str, reason: str, now: float,
                layout: DataLayout | None = None) -> str | None:
    """Remember the hash of `sha256` so near-copies are rejected on arrival.

    Returns the blocked hash, or None when the image has no informative hash (a plain
    image: blocking it would block every other plain image) or no file to compute one
    from; the exact bytes stay rejected either way. Blocking twice is harmless (the first
    reason stays).
    """
    phash = await _phash_of(catalogue, layout, sha256)
    if phash is None:
        return None
    await catalogue.block_hash(phash, sha256, reason, now)
    return phash


async def after_confirm(catalogue: Catalogue, sha256: str, now: float,
                        layout: DataLayout | None = None) -> str | None:
    """A reviewer confirmed `sha256` as NSFW: reposts and re-encodes of it are dropped."""
    return await block(catalogue, sha256, CONFIRMED_NSFW, now, layout)


async def delete_image(catalogue: Catalogue, layout: DataLayout, sha256: str, now: float,
                       reason: str = DELETED_BY_USER) -> None:
    """Delete a stored image for good: block its hash, mark it rejected, remove its files.

    The blob becomes placement 'rejected' with `reason` (default `deleted_by_user`), and
    every media row carrying it state 'rejected' with the same reason, so the same bytes
    are rejected on arrival and near-copies by the blocked hash. The catalogue is
    committed before the files go: a crash in between leaves files that deleting again
    removes (this function is idempotent). Raises UnknownMediaError for an unknown sha256.
    """
    blob = await catalogue.get_blob(sha256)
    await block(catalogue, sha256, reason, now, layout)
    await catalogue.mark_deleted(sha256, reason, now)
    await asyncio.to_thread(remove_everywhere, layout, sha256, blob.extension)
    await asyncio.to_thread(remove_thumbnails, layout, sha256)


__all__ = [
    "CONFIRMED_NSFW",
    "DEFAULT_NEAR_DUPLICATE_DISTANCE",
    "DELETED_BY_USER",
    "PhashIndex",
    "Verdict",
    "after_confirm",
    "block",
    "check_arrival",
    "delete_image",
    "record_near_duplicate",
]

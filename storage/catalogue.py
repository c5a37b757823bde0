"""The SQLite catalogue: the durable queue of SPEC §7 and the record of every stored image.

One aiosqlite connection per process (WAL, foreign keys, a busy timeout so a second
process — a CLI command beside the daemon — waits instead of failing). Every state change
is its own short transaction, so a `kill -9` at any moment leaves rows that a restart
resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import aiosqlite

from storage.catalogue_base import CatalogueBase
from storage.catalogue_filing import Filing, RescoreItem
from storage.catalogue_hygiene import Hygiene
from storage.catalogue_media import MAX_RETRY_WAIT_S, MediaQueue
from storage.catalogue_reporting import Reporting
from storage.catalogue_review import Review
from storage.catalogue_scores import Scores
from storage.catalogue_settings import Settings
from storage.catalogue_sources import Sources, SourceState
from storage.errors import CatalogueError
from storage.placement import PRIVATE_FILE_MODE
from storage.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 15_000


def _make_private(path: Path) -> None:
    """Create `path` as 0600 if missing; make it and its -wal/-shm 0600 if they exist."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    for companion in (path, path.with_name(path.name + "-wal"),
                      path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, PRIVATE_FILE_MODE)


class Catalogue(
    MediaQueue, Scores, Filing, Sources, Hygiene, Reporting, Review, Settings, CatalogueBase
):
    """Async access to `catalogue.sqlite`. Open with `await Catalogue.open(path)`.

    Each concern lives in its own mixin module (storage/catalogue_*.py); this class owns
    opening, migrating and closing the one connection they share.
    """

    @classmethod
    async def open(cls, path: Path) -> Catalogue:
        """Open (creating and migrating as needed) the catalogue at `path`.

        The file and its -wal/-shm are private (0600) whatever the umask: SQLite creates
        the -wal/-shm files with the database file's mode, so the file is made first.
        """
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
        except OSError as error:
            raise CatalogueError(f"{path}: cannot open the catalogue: {error}") from error
        connection = aiosqlite.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        # Connecting runs on aiosqlite's worker thread. When this task is cancelled
        # meanwhile, the connect still finishes and is then closed, so the thread ends (or
        # it keeps the process alive at exit) while the event loop can still hear back.
        # A failed connect stops the thread itself.
        opening = asyncio.ensure_future(connection)
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(opening, 5.0)
                await connection.close()
            raise
        except sqlite3.Error as error:
            raise CatalogueError(f"{path}: cannot open the catalogue: {error}") from error
        connection.row_factory = sqlite3.Row
        catalogue = cls(connection, path)
        try:
            await catalogue._prepare()
        except BaseException:
            await connection.close()
            raise
        return catalogue

    async def _prepare(self) -> None:
        try:
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.OperationalError as error:
            raise self._operational(error) from error
        except sqlite3.DatabaseError as error:
            raise CatalogueError(f"{self.path}: not a usable catalogue: {error}") from error

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise CatalogueError(
                f"{self.path}: schema version {version} is newer than this program's "
                f"{SCHEMA_VERSION}; upgrade megane-crawler"
            )
        for number in range(version, SCHEMA_VERSION):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                if await self.schema_version() > number:
                    await self._db.execute("ROLLBACK")
                    continue
                for statement in MIGRATIONS[number]:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number + 1}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise


__all__ = [
    "BUSY_TIMEOUT_MS",
    "MAX_RETRY_WAIT_S",
    "MIGRATIONS",
    "PRIVATE_FILE_MODE",
    "SCHEMA_VERSION",
    "Catalogue",
    "CatalogueBase",
    "RescoreItem",
    "SourceState",
]

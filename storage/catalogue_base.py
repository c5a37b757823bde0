"""The catalogue's connection core: one aiosqlite connection, its lock, reads and writes.

Every concern of the catalogue (media queue, sources, labels, scores, filing, hygiene,
reporting) is a mixin over this base; `storage.catalogue.Catalogue` composes them and owns
opening, migrating and closing. One connection is shared by every task, so each
multi-statement change runs as one transaction under the base's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage.errors import CatalogueError
from storage.records import BlobRow, MediaRow, Placement, State

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def serialized(method: _Method) -> _Method:
    """Run a multi-statement change as one transaction, under the connection's lock."""

    @functools.wraps(method)
    async def wrapper(self: CatalogueBase, *args: Any, **kwargs: Any) -> Any:
        async with self._transaction():
            return await method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def loads_tuple(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()


def media_row(row: sqlite3.Row) -> MediaRow:
    return MediaRow(
        id=row["id"], url=row["url"], source=row["source"], state=State(row["state"]),
        reason=row["reason"], sha256=row["sha256"], post_url=row["post_url"],
        author=row["author"], flags=loads_tuple(row["flags"]), tags=loads_tuple(row["tags"]),
        attempts=row["attempts"], created_at=row["created_at"], updated_at=row["updated_at"],
    )


def blob_row(row: sqlite3.Row) -> BlobRow:
    placement = row["placement"]
    return BlobRow(
        sha256=row["sha256"], size=row["size"], format=row["format"], width=row["width"],
        height=row["height"], extension=row["extension"],
        placement=Placement(placement) if placement in Placement.__members__.values() else None,
        reason=row["reason"], tags=loads_tuple(row["tags"]),
        model_version=row["model_version"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class CatalogueBase:
    """The connection, its lock, and the read/write helpers every concern's mixin uses."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        # One connection is shared by every task: a lock keeps each multi-statement
        # change one transaction (no task commits another's half-done work).
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                yield
                await self._db.commit()
            except sqlite3.OperationalError as error:
                await self._rollback_quietly()
                raise self._operational(error) from error
            except BaseException:
                await self._rollback_quietly()
                raise
            finally:
                self._owner = None

    async def _rollback_quietly(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.rollback()

    def _operational(self, error: sqlite3.OperationalError) -> CatalogueError:
        # sqlite3 errors carry SQLite's own code (Python 3.11+): branch on it, not on text.
        code = getattr(error, "sqlite_errorname", "") or ""
        hint = (" (another process holds it locked; stop it or wait, then try again)"
                if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) else "")
        return CatalogueError(f"{self.path}: {error}{hint}")

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Readers wait for another task's open transaction, so they never see half of it."""
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            try:
                yield
            except sqlite3.OperationalError as error:
                raise self._operational(error) from error

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._db.close()

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._reading(), self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._reading(), self._db.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    # Raw query seams, for storage/ modules and tests only: code outside storage/ asks the
    # catalogue's named methods.
    # Writes go through `transaction()` so they stay atomic.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._fetchall(sql, params)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return await self._fetchone(sql, params)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection's lock for one transaction; commit on success."""
        async with self._transaction():
            yield self._db

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._transaction():
            cursor = await self._db.execute(sql, params)
        return cursor.rowcount

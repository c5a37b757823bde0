"""Sources in the catalogue: each source's cursor, poll schedule and health."""

from __future__ import annotations

from dataclasses import dataclass

from storage.catalogue_base import CatalogueBase
from storage.redact import redact
from storage.untrusted import storable_cursor, storable_message, storable_url


@dataclass(frozen=True)
class SourceState:
    """A source's stored cursor and health."""

    name: str
    kind: str
    query_key: str
    cursor: str | None
    last_poll_at: float | None
    last_success_at: float | None
    last_new_at: float | None
    last_error: str | None
    last_error_at: float | None
    consecutive_errors: int
    empty_polls: int
    next_poll_at: float | None
    notice: str | None
    items_total: int
    first_poll_at: float | None = None


class Sources(CatalogueBase):
    """Register sources and record each poll's outcome."""

    async def source_state(self, name: str) -> SourceState | None:
        row = await self._fetchone("SELECT * FROM sources WHERE name = ?", (name,))
        return SourceState(**dict(row)) if row is not None else None

    async def all_source_states(self) -> list[SourceState]:
        return [SourceState(**dict(row))
                for row in await self._fetchall("SELECT * FROM sources ORDER BY name")]

    async def ensure_source(self, name: str, kind: str, query_key: str) -> SourceState:
        """Register a source; reset its cursor when its query changed since last time.

        The query key is stored redacted (a feed URL may carry ``?token=``); a change of
        credentials alone therefore keeps the cursor. A folder path may hold undecodable
        bytes (stored percent-encoded).
        """
        query_key = storable_url(redact(query_key))
        state = await self.source_state(name)
        if state is None:
            await self._write(
                "INSERT INTO sources (name, kind, query_key) VALUES (?, ?, ?)",
                (name, kind, query_key),
            )
        elif state.query_key != query_key or state.kind != kind:
            await self._write(
                """UPDATE sources SET kind = ?, query_key = ?, cursor = NULL, empty_polls = 0,
                   next_poll_at = NULL, notice = NULL WHERE name = ?""",
                (kind, query_key, name),
            )
        result = await self.source_state(name)
        assert result is not None
        return result

    async def record_poll(
        self, name: str, *, cursor: str | None, new_items: int, next_poll_at: float,
        notice: str | None, now: float,
    ) -> None:
        await self._write(
            """UPDATE sources SET cursor = COALESCE(?, cursor), last_poll_at = ?,
               first_poll_at = COALESCE(first_poll_at, ?),
               last_success_at = ?, last_new_at = CASE WHEN ? > 0 THEN ? ELSE last_new_at END,
               consecutive_errors = 0, last_error = NULL,
               empty_polls = CASE WHEN ? > 0 THEN 0 ELSE empty_polls + 1 END,
               next_poll_at = ?, notice = ?, items_total = items_total + ? WHERE name = ?""",
            (storable_cursor(cursor), now, now, now, new_items, now, new_items, next_poll_at,
             storable_message(redact(notice)) if notice is not None else None, new_items, name),
        )

    async def record_poll_error(
        self, name: str, error: str, *, next_poll_at: float, now: float
    ) -> None:
        await self._write(
            """UPDATE sources SET last_poll_at = ?, first_poll_at = COALESCE(first_poll_at, ?),
               last_error = ?, last_error_at = ?,
               consecutive_errors = consecutive_errors + 1, next_poll_at = ? WHERE name = ?""",
            (now, now, storable_message(redact(error)), now, next_poll_at, name),
        )

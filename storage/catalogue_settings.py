"""Small named settings the catalogue keeps about itself (e.g. the policy last applied)."""

from __future__ import annotations

from storage.catalogue_base import CatalogueBase


class Settings(CatalogueBase):
    """`settings` rows: one text value per key."""

    async def setting(self, key: str) -> str | None:
        """The stored value of `key`, None when it was never written (or was cleared)."""
        row = await self._fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    async def set_setting(self, key: str, value: str, now: float) -> None:
        """Store `value` under `key`, replacing what was there."""
        await self._write(
            """INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value,
               updated_at = excluded.updated_at""",
            (key, value, now))

    async def clear_setting(self, key: str) -> None:
        """Forget `key`."""
        await self._write("DELETE FROM settings WHERE key = ?", (key,))

"""The `[review]` section of config.toml, read into a frozen dataclass.

Keys (all optional):
    near_duplicate_distance  max Hamming distance (bits of the 64-bit dHash) at which an
                             arrival counts as a copy of a stored or blocked image (6)
    blur_radius              Gaussian blur radius of thumbnails, in thumbnail pixels (12)
    page_size                images per page in the review UI (120)
    session_idle_s           a browser session ends after this long without a request (1800)
    login_backoff_s          lock-out after a failed sign-in, doubled at each further
                             failure up to 600 s (1.0; 0 turns it off)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crawler.errors import ConfigError
from crawler.hygiene import DEFAULT_NEAR_DUPLICATE_DISTANCE
from storage.contact_sheet import DEFAULT_BLUR_RADIUS

DEFAULT_PORT = 8421


@dataclass(frozen=True)
class ReviewSettings:
    near_duplicate_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE
    blur_radius: float = DEFAULT_BLUR_RADIUS
    page_size: int = 120
    session_idle_s: float = 1800.0
    login_backoff_s: float = 1.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str = "config.toml") -> ReviewSettings:
        """Validate a `[review]` table; raises ConfigError listing every problem."""
        problems: list[str] = []
        known = {"near_duplicate_distance", "blur_radius", "page_size", "session_idle_s",
                 "login_backoff_s"}
        problems += [f"[review] {key}: unknown key (known: {', '.join(sorted(known))})"
                     for key in sorted(set(table) - known)]
        distance = table.get("near_duplicate_distance", DEFAULT_NEAR_DUPLICATE_DISTANCE)
        if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= 32:
            problems.append("[review] near_duplicate_distance: an integer from 0 to 32 "
                            f"(bits of 64), got {distance!r}")
        radius = table.get("blur_radius", DEFAULT_BLUR_RADIUS)
        if (isinstance(radius, bool) or not isinstance(radius, (int, float))
                or not 0 <= radius <= 100):
            problems.append(f"[review] blur_radius: a number from 0 to 100, got {radius!r}")
        page_size = table.get("page_size", 120)
        if (isinstance(page_size, bool) or not isinstance(page_size, int)
                or not 1 <= page_size <= 1000):
            problems.append(f"[review] page_size: an integer from 1 to 1000, got {page_size!r}")
        idle = table.get("session_idle_s", 1800.0)
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 1 <= idle <= 86400:
            problems.append("[review] session_idle_s: seconds from 1 to 86400 (a day), "
                            f"got {idle!r}")
        backoff = table.get("login_backoff_s", 1.0)
        if (isinstance(backoff, bool) or not isinstance(backoff, (int, float))
                or not 0 <= backoff <= 600):
            problems.append(f"[review] login_backoff_s: seconds from 0 to 600, got {backoff!r}")
        if problems:
            raise ConfigError(where, problems)
        return cls(near_duplicate_distance=distance, blur_radius=float(radius),
                   page_size=page_size, session_idle_s=float(idle),
                   login_backoff_s=float(backoff))

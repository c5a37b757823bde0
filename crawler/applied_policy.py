"""The fingerprint of the filing policy every stored image was last decided under.

Written after a complete re-file (`rescore`: SIGHUP, `megane rescore`, a promotion's
backfill, the start-up pass) and cleared when a re-file under another policy begins, so
a crash in the middle leaves no fingerprint and the next start redoes the pass. At start
the daemon compares it with the policy of config.toml and re-files when they differ
(`crawler.rescore.refile_at_start`).
"""

from __future__ import annotations

import json

from crawler.decide import Policy
from storage.catalogue import Catalogue

SETTING = "applied_policy"
# The policy a running daemon files new images under, set at its start and reload, cleared
# at a clean stop. Still there at the next start: that daemon died (kill -9) and may have
# filed images under it after a `megane rescore` recorded another policy meanwhile.
SERVING = "serving_policy"
# Bump when the text of reasons or sidecars changes: stored ones are then rewritten once.
REASON_FORMAT = 2


def policy_fingerprint(policy: Policy) -> str:
    """Canonical JSON of everything in `policy` that a filing decision depends on."""
    return json.dumps({
        "reason_format": REASON_FORMAT,
        "thresholds": {tag: float(value) for tag, value in policy.thresholds.items()},
        "quarantine_tags": list(policy.quarantine_tags),
        "trust_source_flags": policy.trust_source_flags,
        "review_band": ([float(value) for value in policy.review_band]
                        if policy.review_band is not None else None),
        "tag_aliases": {tag: sorted(names) for tag, names in policy.tag_aliases.items()},
        "file_by_source_tags": policy.file_by_source_tags,
    }, sort_keys=True, separators=(",", ":"))


async def applied_fingerprint(catalogue: Catalogue) -> str | None:
    """The fingerprint of the policy last applied to every image (None: unknown)."""
    return await catalogue.setting(SETTING)


async def record_applied(catalogue: Catalogue, policy: Policy, now: float) -> None:
    """Every stored image is now filed under `policy`."""
    await catalogue.set_setting(SETTING, policy_fingerprint(policy), now)


async def serving_fingerprint(catalogue: Catalogue) -> str | None:
    """The policy a daemon serves, or served until it died (None: no daemon, clean stop)."""
    return await catalogue.setting(SERVING)


async def record_serving(catalogue: Catalogue, policy: Policy, now: float) -> None:
    """A daemon now files new images under `policy`."""
    await catalogue.set_setting(SERVING, policy_fingerprint(policy), now)


async def forget_serving(catalogue: Catalogue) -> None:
    """The daemon stops cleanly: it files nothing more."""
    await catalogue.clear_setting(SERVING)


async def forget_applied(catalogue: Catalogue) -> None:
    """Stored images may no longer all be filed under one known policy."""
    await catalogue.clear_setting(SETTING)

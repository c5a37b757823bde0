"""Review decisions: labels, release, confirm, delete — shared by the web UI and the CLI.

Every decision is recorded as human labels (training data), then the image is re-filed
from its stored scores (`refile_one`), a confirmed NSFW image's hash is blocked, and the
quarantine contact sheet is rewritten, so folders and catalogue agree after each action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from crawler.config import Config
from crawler.decide import Decision, Policy
from crawler.hygiene import after_confirm, delete_image
from crawler.review.settings import ReviewSettings
from storage.catalogue import Catalogue
from crawler.display import linkable_url
from storage.contact_sheet import refresh_quarantine_index
from storage.placement import DataLayout

log = structlog.get_logger("megane.review")
REVIEW_UI = "review-ui"


@dataclass(frozen=True)
class ReviewContext:
    """What a decision needs: the catalogue, the folders, the policy and `[review]`."""

    catalogue: Catalogue
    layout: DataLayout
    policy: Policy
    settings: ReviewSettings

    @classmethod
    def from_config(cls, catalogue: Catalogue, config: Config,
                    layout: DataLayout | None = None) -> ReviewContext:
        from crawler.daemon import policy_of

        return cls(catalogue, layout or DataLayout(config.data_dir), policy_of(config),
                   ReviewSettings.from_mapping(config.review, str(config.path)))

    def release_labels(self) -> list[tuple[str, bool]]:
        """Not NSFW: every quarantine tag labelled no (all must be, to leave quarantine)."""
        return [(tag, False) for tag in self.policy.quarantine_tags]

    def confirm_labels(self) -> list[tuple[str, bool]]:
        """NSFW: `nsfw` (or the first quarantine tag) labelled yes."""
        tags = self.policy.quarantine_tags
        return [("nsfw" if "nsfw" in tags or not tags else tags[0], True)]


async def after_labels(context: ReviewContext, sha256: str,
                       labels: Sequence[tuple[str, bool]], now: float) -> None:
    """What follows a human decision: block a confirmed image's hash; rewrite the sheet."""
    if any(value and tag in context.policy.quarantine_tags for tag, value in labels):
        await after_confirm(context.catalogue, sha256, now, context.layout)
    await refresh_quarantine_index(context.catalogue, context.layout,
                                   context.settings.blur_radius, linkable=linkable_url)


async def apply_labels(context: ReviewContext, sha256: str, labels: Sequence[tuple[str, bool]],
                       who: str, now: float) -> Decision:
    """Record `labels` for `sha256` as human labels by `who`, then re-file the image."""
    from crawler.rescore import refile_one

    for tag, value in labels:
        await context.catalogue.add_label(sha256, tag, value, origin="human", who=who, now=now)
        log.info("label_added", sha256=sha256, tag=tag, value=value, who=who)
    decision = await refile_one(context.catalogue, context.layout, context.policy, sha256, now)
    await after_labels(context, sha256, labels, now)
    return decision


async def delete(context: ReviewContext, sha256: str, now: float) -> None:
    """Delete an image for good (files, placement) and block its near-copies."""
    await delete_image(context.catalogue, context.layout, sha256, now)
    log.info("media_deleted", sha256=sha256)
    await refresh_quarantine_index(context.catalogue, context.layout,
                                   context.settings.blur_radius, linkable=linkable_url)


async def after_decision(catalogue: Catalogue, config: Config, sha256: str,
                         labels: Sequence[tuple[str, bool]], now: float) -> None:
    """For the CLI (`quarantine release/confirm`, `label`), after it re-filed the image."""
    await after_labels(ReviewContext.from_config(catalogue, config), sha256, labels, now)


async def delete_by_user(catalogue: Catalogue, config: Config, sha256: str, now: float) -> None:
    """For the CLI (`megane delete SHA`)."""
    await delete(ReviewContext.from_config(catalogue, config), sha256, now)

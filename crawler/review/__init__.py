"""The review web UI (`megane review`) and the review decisions it shares with the CLI.

Names are re-exported lazily (PEP 562): validating a config imports `crawler.review.settings`
alone, so `megane classify` or `megane status` never load aiohttp's server, Jinja2 or the
pages just to read `[review]`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crawler.review.actions import (
        ReviewContext,
        after_decision,
        apply_labels,
        delete_by_user,
    )
    from crawler.review.app import make_app
    from crawler.review.refresher import IndexRefresher
    from crawler.review.server import run_review
    from crawler.review.settings import ReviewSettings

_LAZY_EXPORTS = {
    "crawler.review.actions": ("ReviewContext", "after_decision", "apply_labels",
                               "delete_by_user"),
    "crawler.review.app": ("make_app",),
    "crawler.review.refresher": ("IndexRefresher",),
    "crawler.review.server": ("run_review",),
    "crawler.review.settings": ("ReviewSettings",),
}
_LAZY_MODULE_OF = {name: module for module, names in _LAZY_EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'crawler.review' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "IndexRefresher",
    "ReviewContext",
    "ReviewSettings",
    "after_decision",
    "apply_labels",
    "delete_by_user",
    "make_app",
    "run_review",
]

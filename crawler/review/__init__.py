"""The review web UI (`megane review`) and the review decisions it shares with the CLI."""

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

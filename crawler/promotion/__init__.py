"""The active model: `models/ACTIVE`, promotion without a restart, backfill, shadow runs.

- `crawler.promotion.active`: the ACTIVE file and `promote` (`megane models promote`),
- `crawler.promotion.loading`: the serving model at daemon start, versions on the engine,
- `crawler.promotion.swap`: following ACTIVE in the running daemon, the live swap,
- `crawler.promotion.backfill`: re-scoring stored images from cached features,
- `crawler.promotion.shadow`: a candidate run beside the active model before the switch.

The `megane models` commands that print are in `crawler.commands.models`.
"""

from crawler.promotion.active import (
    ACTIVE_FILENAME,
    SHADOW_FILENAME,
    ActiveModel,
    active_path,
    promote,
    read_active,
    serving_version,
    write_active,
    write_json_atomic,
)
from crawler.promotion.backfill import (
    BACKBONE,
    BACKFILL_CHUNK,
    NSFW_TAG,
    BackfillReport,
    backfill,
    backfill_at_start,
)
from crawler.promotion.loading import ModelLoader, load_active_model, reusing_loader
from crawler.promotion.shadow import SHADOW_EXAMPLES, ShadowRun
from crawler.promotion.swap import (
    POLL_INTERVAL_S,
    STRAGGLER_POLL_S,
    STRAGGLER_WAIT_S,
    PromotionHost,
    activate,
    follow_promotions,
)

__all__ = [
    "ACTIVE_FILENAME",
    "BACKBONE",
    "BACKFILL_CHUNK",
    "NSFW_TAG",
    "POLL_INTERVAL_S",
    "SHADOW_EXAMPLES",
    "SHADOW_FILENAME",
    "STRAGGLER_POLL_S",
    "STRAGGLER_WAIT_S",
    "ActiveModel",
    "BackfillReport",
    "ModelLoader",
    "PromotionHost",
    "ShadowRun",
    "activate",
    "active_path",
    "backfill",
    "backfill_at_start",
    "follow_promotions",
    "load_active_model",
    "promote",
    "read_active",
    "reusing_loader",
    "serving_version",
    "write_active",
    "write_json_atomic",
]

"""`megane review` (the local web UI) and `megane delete`."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from crawler.commands.common import EXIT_OK, load, require_data_dir, run_with_catalogue


def cmd_review(args: argparse.Namespace) -> int:
    from crawler.review.server import run_review

    config = load(args)
    require_data_dir(config)
    return run_review(config, args.port, args.token, token_file=args.token_file,
                      environ=os.environ)


def cmd_delete(args: argparse.Namespace) -> int:
    from crawler.review.actions import delete_by_user

    config = load(args)

    async def body(catalogue: Any) -> int:
        sha256 = await catalogue.resolve_sha(args.sha)
        await delete_by_user(catalogue, config, sha256, time.time())
        print(f"{sha256[:12]}: deleted; near-copies of it will be rejected on arrival")
        return EXIT_OK

    return run_with_catalogue(config, body)

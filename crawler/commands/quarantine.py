"""`megane quarantine list|release|confirm`, `megane label` and `megane rescore`."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from crawler.commands.common import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USER,
    load,
    print_json,
    run_with_catalogue,
)
from crawler.config import Config
from storage.redact import redact

TAG_NAME = re.compile(r"^[a-z0-9_\-]{1,40}$")
log = structlog.get_logger("megane.cli")


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    config = load(args)

    async def body(catalogue: Any) -> int:
        items = []
        for blob in await catalogue.blobs_in(["quarantine", "held"]):
            rows = await catalogue.media_for_blob(blob.sha256)
            items.append({
                "sha256": blob.sha256,
                "placement": blob.placement.value if blob.placement else None,
                "reason": redact(blob.reason) if blob.reason else blob.reason,
                "scores": await catalogue.scores_for(blob.sha256),
                "model_version": blob.model_version,
                "sources": sorted({row.source for row in rows}),
                "urls": [redact(row.url) for row in rows],
                "flags": sorted({flag for row in rows for flag in row.flags}),
                "labels": await catalogue.human_labels_for(blob.sha256),
            })
        if args.json:
            print_json(items)
        elif not items:
            print("nothing is quarantined or held")
        else:
            for item in items:
                scores = ", ".join(f"{k}={v:.3f}" for k, v in item["scores"].items())
                print(f"{item['placement']:<10} {item['sha256'][:12]}  {item['reason']}  "
                      f"[{scores}]  {item['urls'][0] if item['urls'] else ''}")
        return EXIT_OK

    return run_with_catalogue(config, body, read_only=True)


def _review_decision(
    args: argparse.Namespace,
    labels: Sequence[tuple[str, bool]] | Callable[[Config], Sequence[tuple[str, bool]]],
) -> int:
    from crawler.daemon import policy_of
    from crawler.rescore import refile_one
    from crawler.review.actions import after_decision
    from storage.placement import DataLayout

    config = load(args)
    if callable(labels):
        labels = labels(config)
    who = getattr(args, "who", None) or getpass.getuser()

    async def body(catalogue: Any) -> int:
        sha256 = await catalogue.resolve_sha(args.sha)
        now = time.time()
        for tag, value in labels:
            await catalogue.add_label(sha256, tag, value, origin="human", who=who, now=now)
            log.info("label_added", sha256=sha256, tag=tag, value=value, who=who)
        decision = await refile_one(catalogue, DataLayout(config.data_dir), policy_of(config),
                                    sha256, now)
        await after_decision(catalogue, config, sha256, labels, now)
        print(f"{sha256[:12]}: {decision.placement.value} ({decision.reason})")
        return EXIT_OK

    return run_with_catalogue(config, body)


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    # Not NSFW by any quarantine tag: each one is labelled no.
    return _review_decision(
        args, lambda config: [(tag, False) for tag in config.quarantine.tags])


def cmd_quarantine_confirm(args: argparse.Namespace) -> int:
    def confirm(config: Config) -> list[tuple[str, bool]]:
        tags = config.quarantine.tags
        return [("nsfw" if "nsfw" in tags or not tags else tags[0], True)]

    return _review_decision(args, confirm)


def cmd_label(args: argparse.Namespace) -> int:
    labels: list[tuple[str, bool]] = []
    for item in args.labels:
        tag, _, value = item.partition("=")
        if not tag or value.lower() not in ("yes", "no"):
            print(f"error: {item!r}: labels are TAG=yes or TAG=no", file=sys.stderr)
            return EXIT_USER
        tag = tag.strip().lower()
        if not TAG_NAME.match(tag):
            print(f"error: {item!r}: a tag is 1-40 letters, digits, '_' or '-'", file=sys.stderr)
            return EXIT_USER
        labels.append((tag, value.lower() == "yes"))
    return _review_decision(args, labels)


def cmd_rescore(args: argparse.Namespace) -> int:
    from crawler.daemon import policy_of
    from crawler.rescore import refresh_contact_sheet, rescore
    from storage.placement import DataLayout

    config = load(args)

    async def body(catalogue: Any) -> int:
        started = time.monotonic()
        layout = DataLayout(config.data_dir)
        report = await rescore(catalogue, layout, policy_of(config), time.time())
        await refresh_contact_sheet(catalogue, layout, config)
        document = {"changed": report.changed, "unchanged": report.unchanged,
                    "failed": report.failed, "seconds": round(time.monotonic() - started, 3)}
        if args.json:
            print_json(document)
        else:
            print(f"re-filed {report.changed}, unchanged {report.unchanged}, "
                  f"failed {report.failed} in {document['seconds']} s")
        return EXIT_OK if not report.failed else EXIT_INTERNAL

    return run_with_catalogue(config, body)

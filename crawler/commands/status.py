"""`megane status` and `megane media list`."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from crawler.commands.common import EXIT_OK, load, open_catalogue, print_json
from crawler.config import Config
from storage.redact import redact
from storage.untrusted import capped_text


def cmd_media_list(args: argparse.Namespace) -> int:
    config = load(args)

    async def body() -> list[dict[str, Any]]:
        catalogue = await open_catalogue(config, read_only=True)
        try:
            # A media URL is normally no secret, but a feed's enclosure may be signed
            # (?sig=, ?token=): shown redacted, like every other URL the CLI prints.
            return [{**item, **{key: redact(item[key]) for key in ("url", "post_url", "reason")
                                if isinstance(item.get(key), str)}}
                    for item in await catalogue.media_list(args.state)]
        finally:
            await catalogue.close()

    items = asyncio.run(body())
    if args.json:
        print_json(items)
    elif not items:
        print(f"no media URLs in state {args.state}" if args.state else "no media URLs yet")
    else:
        for item in items:
            sha = (item["sha256"] or "-")[:12]
            signals = [f"flags: {', '.join(item['flags'])}"] if item.get("flags") else []
            signals += [f"tags: {', '.join(item['tags'])}"] if item.get("tags") else []
            print(f"{item['state']:<10} {sha:<12} {item['source']:<16} {item['url']}"
                  + (f"  ({item['reason']})" if item["reason"] else "")
                  + (f"  [{'; '.join(signals)}]" if signals else ""))
    return EXIT_OK


CURSOR_SHOWN_CHARS = 120
"""A cursor in `status` text and JSON is cut here: it can hold a server's long header."""


def _when(epoch_s: float | None) -> str:
    """A UTC `YYYY-MM-DD HH:MM:SS`, or "never"."""
    if not epoch_s:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch_s))


async def status_document(config: Config) -> dict[str, Any]:
    """What `megane status --json` prints."""
    from classifier.models import list_models
    from crawler.serving import serving_document
    from storage.placement import DataLayout

    catalogue = await open_catalogue(config, read_only=True)
    try:
        states = await catalogue.counts_by_state()
        sources = []
        for state in await catalogue.all_source_states():
            sources.append({
                "name": state.name, "kind": state.kind, "last_poll_at": state.last_poll_at,
                "last_success_at": state.last_success_at, "last_new_at": state.last_new_at,
                "last_error": redact(state.last_error) if state.last_error else None,
                "last_error_at": state.last_error_at,
                "consecutive_errors": state.consecutive_errors,
                "empty_polls": state.empty_polls, "next_poll_at": state.next_poll_at,
                "cursor": (capped_text(redact(state.cursor), CURSOR_SHOWN_CHARS)
                           if state.cursor else None),
                "notice": redact(state.notice) if state.notice else None,
                "items_total": state.items_total,
                "quiet": state.empty_polls >= 20,
            })
        document = {
            "data_dir": str(config.data_dir),
            "states": states,
            "tags": await catalogue.counts_by_tag(),
            "sources": sources,
            "by_source": await catalogue.counts_by_source(),
            "labels": await catalogue.label_counts(),
            "queue": {state: states.get(state, 0)
                      for state in ("pending", "downloaded", "decoded", "classified")},
            "model": {
                **serving_document(config),
                "available": [info.version
                              for info in list_models(DataLayout(config.data_dir).models)],
            },
        }
    finally:
        await catalogue.close()
    return document


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    document = asyncio.run(status_document(config))
    if args.json:
        print_json(document)
        return EXIT_OK
    model = document["model"]
    print(f"data_dir: {document['data_dir']}  model: {model['version']} ({model['origin']}: "
          f"{model['source']})" + (f"  problem: {model['problem']}" if model["problem"] else ""))
    print("thresholds served by: " + (", ".join(
        f"{tag}={how}" for tag, how in model["tag_coverage"].items()) or "none"))
    print("states: " + ", ".join(f"{k}={v}" for k, v in sorted(document["states"].items())))
    print("library tags: " + (", ".join(f"{k}={v}" for k, v in sorted(document["tags"].items()))
                              or "none"))
    for source in document["sources"]:
        line = f"source {source['name']} ({source['kind']}): {source['items_total']} items"
        line += f"; last poll {_when(source['last_poll_at'])}"
        if source["cursor"]:
            line += f"; cursor {capped_text(source['cursor'], CURSOR_SHOWN_CHARS)}"
        if source["last_error"]:
            line += f"; last error: {source['last_error']}"
        if source["notice"]:
            line += f"; notice: {source['notice']}"
        if source["quiet"]:
            line += f"; nothing new for {source['empty_polls']} polls"
        print(line)
    labels = document["labels"]
    if labels:
        print("labels: " + ", ".join(f"{t}: {c['yes']} yes/{c['no']} no"
                                    for t, c in sorted(labels.items())))
    return EXIT_OK

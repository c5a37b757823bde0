"""`megane train` and `megane models list|promote|export-tflite`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crawler.commands.common import load, require_data_dir
from storage.placement import DataLayout

if TYPE_CHECKING:
    from crawler.config import Config


def models_document(config: Config) -> list[dict[str, Any]]:
    """`megane models list --json`: every version with its metadata and whether it is active."""
    from classifier.models import list_models
    from classifier.training.seed2017 import read_seed2017_metadata
    from classifier.errors import ModelError
    from crawler.promotion.active import read_active, serving_version

    layout = DataLayout(config.data_dir)
    serving, origin = serving_version(layout.models, config.classifier.model)
    try:
        pending = read_active(layout.models)
    except ModelError:
        pending = None
    listing = []
    for info in list_models(layout.models):
        metadata = dict(info.metadata)
        problem = info.problem
        if problem is not None and info.path is not None:
            seed = read_seed2017_metadata(info.path)
            if seed is not None:
                metadata, problem = seed, None
        entry = {**metadata, "version": info.version, "active": info.version == serving,
                 "active_origin": origin if info.version == serving else None,
                 "problem": problem}
        if pending is not None and pending.shadow_images and pending.version == info.version:
            entry["shadow_pending"] = pending.shadow_images
        listing.append(entry)
    return listing


def print_models(config: Config, *, as_json: bool) -> int:
    """`megane models list`: a table, or the JSON document."""
    document = models_document(config)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model versions")
    longest = max(len(entry["version"]) for entry in document)
    for name in ("", "version", "created", "tags", "AP per tag", "problem"):
        if name == "version":
            # Never shortened: it is what `megane models promote` needs, copied whole.
            table.add_column(name, no_wrap=True, min_width=longest, overflow="fold")
        else:
            table.add_column(name, overflow="fold")
    for entry in document:
        metrics = entry.get("metrics") or {}
        ap = ", ".join(
            f"{tag}={row['average_precision']:.3f}" for tag, row in metrics.items()
            if isinstance(row, dict) and row.get("average_precision") is not None)
        marker = "*" if entry["active"] else ("shadow" if entry.get("shadow_pending") else "")
        table.add_row(marker, entry["version"], str(entry.get("created_at") or ""),
                      ",".join(entry.get("tags") or []), ap or "-", entry.get("problem") or "")
    Console().print(table)
    if len(document) == 1:  # builtin alone
        print("no trained versions yet: `megane train` makes one from your labels")
    return 0


def promote_command(config: Config, version: str, *, shadow_images: int | None) -> int:
    """`megane models promote VERSION [--shadow N]`: write ACTIVE and say what follows."""
    from classifier.errors import ModelError
    from crawler.promotion.active import SHADOW_FILENAME, promote
    from crawler.promotion.swap import POLL_INTERVAL_S

    layout = DataLayout(config.data_dir)
    try:
        active = promote(layout.models, version, configured=config.classifier.model,
                         now=datetime.now(UTC), shadow_images=shadow_images)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if active.shadow_images:
        print(f"{version}: will run in shadow beside {active.previous} on the next "
              f"{active.shadow_images} images, then become active (report: "
              f"{layout.models / version / SHADOW_FILENAME})")
    else:
        print(f"{version}: active; a running daemon swaps it in within "
              f"{POLL_INTERVAL_S:.0f} s and re-files the library")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from classifier.training.cli import run_train

    return run_train(load(args), tags=args.tags, architecture=args.architecture,
                     version=args.version, as_json=args.json)


def cmd_models_list(args: argparse.Namespace) -> int:
    return print_models(load(args), as_json=args.json)


def cmd_models_promote(args: argparse.Namespace) -> int:
    config = load(args)
    require_data_dir(config)
    DataLayout(config.data_dir).ensure()  # models/ private, whatever the umask
    return promote_command(config, args.version, shadow_images=args.shadow)


def cmd_models_export_tflite(args: argparse.Namespace) -> int:
    from classifier.training.export import export_command

    return export_command(load(args), args.version, as_json=args.json)

"""What every command shares: loading the config, opening the catalogue, printing JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from crawler.config import DEFAULT_CONFIG_PATHS, Config, find_config, load_config
from crawler.errors import ConfigError
from storage.redact import remember_secrets_in

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 2


def print_json(document: Any) -> None:
    """Print one JSON document on stdout (the `--json` output of a command)."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def config_path(explicit: str | None) -> Path:
    """The config file to read: `--config PATH`, else the first default that exists.

    With none of the defaults present, a ConfigError names every path looked at, in order,
    and what to do.
    """
    path = find_config(explicit)
    if explicit or path.exists():
        return path
    tried = ", then ".join(str(candidate.absolute()) for candidate in DEFAULT_CONFIG_PATHS)
    raise ConfigError(str(path), [
        f"no config file found; looked at {tried}; pass --config PATH, or copy the shipped "
        "config.toml to one of those paths and edit it"])


def load(args: argparse.Namespace) -> Config:
    """Read the config named by `--config` and set up logging and secret masking for it."""
    from crawler.logs import configure_logging

    config = load_config(config_path(args.config))
    log_format = config.daemon.log_format
    if getattr(args, "json", False) and log_format == "auto":
        log_format = "json"
    configure_logging(log_format, config.daemon.log_level)
    for source in config.sources:  # masked in whatever this command prints or logs
        remember_secrets_in(source.settings)
    from classifier.native_logs import configure_native_logs

    configure_native_logs(config.daemon.log_level, os.environ)  # before any TF import
    return config


async def open_catalogue(config: Config, *, read_only: bool = False) -> Any:
    """The catalogue of an existing data_dir (ConfigError if missing: never created here).

    Only `run`, `once`, `import` and `train` create data_dir; every command that works on
    what they filed refuses a missing one, so a typo in data_dir is not an empty catalogue.
    Commands that write (`read_only=False`) complete its layout first.
    """
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    layout = DataLayout(config.data_dir)
    require_data_dir(config)
    if not read_only:
        layout.ensure()
    return await Catalogue.open(layout.catalogue)


def require_data_dir(config: Config) -> None:
    """ConfigError naming the config file when data_dir does not exist."""
    if not Path(config.data_dir).is_dir():
        raise ConfigError(str(config.path), [
            f"[daemon] data_dir: {config.data_dir} does not exist; check the path, or run "
            "`megane once` (or the daemon) once to create it"])


def run_with_catalogue(config: Config,
                       body: Callable[[Any], Coroutine[Any, Any, int]],
                       *, read_only: bool = False) -> int:
    """Run `body(catalogue)` in a new event loop, closing the catalogue after it."""
    async def wrapper() -> int:
        catalogue = await open_catalogue(config, read_only=read_only)
        try:
            return await body(catalogue)
        finally:
            await catalogue.close()

    return asyncio.run(wrapper())

"""`megane run`, `once`, `check-config`, `import` and `classify`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from crawler.commands.common import EXIT_OK, config_path, load
from crawler.config import Config, load_config
from crawler.errors import ConfigError


def cmd_check_config(args: argparse.Namespace) -> int:
    from crawler.serving import configuration_problems

    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as error:
        raise ConfigError(error.path, error.problems + _model_problems(path)) from None
    problems = configuration_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    kinds = ", ".join(f"{s.name} ({s.kind})" for s in config.sources) or "none"
    print(f"{path}: ok; data_dir={config.data_dir}; sources: {kinds}")
    _warn_exposed_secrets(path)
    from crawler.tag_coverage import coverage_warnings

    from crawler.precision import precision_warnings

    for warning in [*coverage_warnings(config), *precision_warnings(config)]:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _model_problems(path: Path) -> list[str]:
    """The model check of a config whose other keys are wrong (every problem at once)."""
    import tomllib

    from crawler.serving import raw_configuration_problems

    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # load_config has reported why the file cannot be read
    return raw_configuration_problems(raw, path, text)


def _warn_exposed_secrets(path: Path) -> None:
    import tomllib

    from crawler.configsecrets import exposed_secrets_warning

    raw = tomllib.loads(path.read_text(encoding="utf-8"))  # load_config has validated it
    warning = exposed_secrets_warning(path, raw, path.stat().st_mode)
    if warning is not None:
        print(warning, file=sys.stderr)


def _daemon_main(config: Config, once: bool) -> int:
    from crawler.daemon import Daemon

    daemon = Daemon(config, environ=os.environ)
    return asyncio.run(daemon.run(once=once))


def cmd_run(args: argparse.Namespace) -> int:
    return _daemon_main(load(args), once=False)


def cmd_once(args: argparse.Namespace) -> int:
    return _daemon_main(load(args), once=True)


def cmd_import(args: argparse.Namespace) -> int:
    from crawler.importer import import_command

    return import_command(load(args), Path(args.directory), recursive=args.recursive,
                          as_json=args.json)


def cmd_classify(args: argparse.Namespace) -> int:
    from crawler.classify_files import classify_command

    return classify_command(load(args), args.files, as_json=args.json, environ=os.environ)

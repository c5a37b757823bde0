"""The `megane` command line (SPEC §3).

Exit codes: 0 success, 1 user error (bad config, unknown SHA), 2 internal failure.
Commands that report take `--json` and then print one JSON document on stdout only.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from storage.redact import redact

from crawler.commands.common import EXIT_INTERNAL, EXIT_OK, EXIT_USER
from crawler.commands.common import load as _load
from crawler.commands.common import open_catalogue as _open_catalogue
from crawler.commands.common import print_json as _print_json
from crawler.commands.common import require_data_dir as _require_data_dir
from crawler.commands.common import run_with_catalogue as _run_with_catalogue
from crawler.commands.models import (
    cmd_models_export_tflite,
    cmd_models_list,
    cmd_models_promote,
    cmd_train,
)
from crawler.commands.quarantine import (
    TAG_NAME,
    cmd_label,
    cmd_quarantine_confirm,
    cmd_quarantine_list,
    cmd_quarantine_release,
    cmd_rescore,
)
from crawler.commands.review import cmd_delete, cmd_review
from crawler.commands.run import cmd_check_config, cmd_classify, cmd_import, cmd_once, cmd_run
from crawler.commands.status import cmd_media_list, cmd_status, status_document
from crawler.errors import ConfigError
from storage.errors import DataDirInUseError, MeganeError, UnknownMediaError

log = structlog.get_logger("megane.cli")

# Every command's name stays importable from here.
__all__ = [
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USER",
    "TAG_NAME",
    "_load",
    "_open_catalogue",
    "_print_json",
    "_require_data_dir",
    "_run_with_catalogue",
    "build_parser",
    "cmd_check_config",
    "cmd_classify",
    "cmd_delete",
    "cmd_import",
    "cmd_label",
    "cmd_media_list",
    "cmd_models_export_tflite",
    "cmd_models_list",
    "cmd_models_promote",
    "cmd_once",
    "cmd_quarantine_confirm",
    "cmd_quarantine_list",
    "cmd_quarantine_release",
    "cmd_rescore",
    "cmd_review",
    "cmd_run",
    "cmd_status",
    "main",
    "status_document",
]


# -- parser -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with SPEC §3's exit codes: a usage error is the user's (1), not internal (2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


SHA_HELP = "the image's sha256, or a prefix of it that only one image has"
VERSION_HELP = "a model version, as `megane models list` shows it"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="megane", description="megane-crawler: polls image sources, "
                     "classifies what they post and files it (library, quarantine or held)")
    # Also accepted before the command (`megane --config PATH status`), as users type it.
    parser.add_argument("--config", dest="config_before_command", metavar="PATH",
                        help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            parent: Any = commands, json_flag: bool = False) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                         description=help_text)
        sub.add_argument("--config", metavar="PATH",
                         help="config file (default ./config.toml, then "
                              "/etc/megane-crawler/config.toml)")
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print one JSON document")
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "run the daemon in the foreground")
    add("once", cmd_once, "poll every source once, process everything pending, exit")
    add("check-config", cmd_check_config, "validate the configuration")
    add("status", cmd_status, "counts per state, tag and source; model; queue", json_flag=True)
    sub = add("import", cmd_import, "classify and file the images of a local folder tree "
              "(magic bytes decide); ends with a summary of every file", json_flag=True)
    sub.add_argument("directory", help="the folder whose images to import")
    sub.add_argument("--no-recursive", dest="recursive", action="store_false",
                     help="only the folder itself, not its subfolders")
    media = commands.add_parser("media", help="media URLs").add_subparsers(
        dest="media_command", required=True, metavar="SUBCOMMAND")
    sub = add("list", cmd_media_list, "every media URL with its state", media, json_flag=True)
    sub.add_argument("--state", choices=["pending", "downloaded", "decoded", "classified",
                                         "library", "quarantine", "held", "rejected"],
                     help="only the URLs in this state")
    sub = add("classify", cmd_classify, "print per-tag scores of image files", json_flag=True)
    sub.add_argument("files", nargs="+", metavar="FILE", help="an image file")
    quarantine = commands.add_parser("quarantine", help="review quarantined images") \
        .add_subparsers(dest="quarantine_command", required=True, metavar="SUBCOMMAND")
    add("list", cmd_quarantine_list, "what is quarantined or held", quarantine, json_flag=True)
    for name, handler, text in (
        ("release", cmd_quarantine_release,
         "not NSFW: label each [quarantine] tag no and re-file it (normally to the library)"),
        ("confirm", cmd_quarantine_confirm,
         "NSFW: label nsfw=yes (the first [quarantine] tag if nsfw is not one) and file it "
         "in quarantine"),
    ):
        sub = add(name, handler, text, quarantine)
        sub.add_argument("sha", metavar="SHA", help=SHA_HELP)
    sub = add("label", cmd_label, "record human tag labels, e.g. megane=yes cat=no")
    sub.add_argument("sha", metavar="SHA", help=SHA_HELP)
    sub.add_argument("labels", nargs="+", metavar="TAG=yes|no",
                     help="a tag and whether the image shows it")
    add("rescore", cmd_rescore, "re-file every image from stored scores", json_flag=True)
    sub = add("review", cmd_review, "the local review web UI (127.0.0.1, token-protected)")
    sub.add_argument("--port", type=int, default=8421, help="port on 127.0.0.1 (default 8421)")
    sub.add_argument("--token", help="access token (visible to local users in /proc: prefer "
                                     "MEGANE_REVIEW_TOKEN or --token-file; default: a new "
                                     "random one, printed)")
    sub.add_argument("--token-file", type=Path, metavar="PATH",
                     help="read the access token from PATH (mode 0600)")
    sub = add("delete", cmd_delete, "delete an image for good and block its near-copies")
    sub.add_argument("sha", metavar="SHA", help=SHA_HELP)
    sub = add("train", cmd_train, "train a new model version from labels; print its evaluation",
              json_flag=True)
    sub.add_argument("--tags", type=lambda text: [t.strip().lower() for t in text.split(",")
                                                  if t.strip()],
                     help="comma-separated tags to train (default: every labelled tag but "
                          "nsfw, which is open_nsfw's own output and not trained)")
    sub.add_argument("--architecture", choices=["heads", "seed2017"], default="heads",
                     help="heads: logistic heads on frozen open_nsfw features (default); "
                          "seed2017: the 2017 CNN end to end (wants a GPU)")
    sub.add_argument("--version", help="name of the new version (default: a UTC timestamp)")
    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True, metavar="SUBCOMMAND")
    add("list", cmd_models_list, "every model version, its metrics and which one is active",
        models, json_flag=True)
    sub = add("promote", cmd_models_promote,
              "make VERSION the active model (a running daemon swaps it in and re-files)", models)
    sub.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    sub.add_argument("--shadow", type=int, metavar="N", default=None,
                     help="first run VERSION beside the active model on the next N images")
    sub = add("export-tflite", cmd_models_export_tflite,
              "write models/VERSION/model.tflite and check it against TensorFlow", models,
              json_flag=True)
    sub.add_argument("version", metavar="VERSION", help=VERSION_HELP)
    return parser


def _print_error(error: BaseException) -> None:
    """An error for the user on stderr, credentials removed (a config error quotes values)."""
    print(f"error: {redact(str(error))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # A watchdog abort (SIGABRT) then leaves every thread's stack in the journal.
    if sys.__stderr__ is not None:
        with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
            faulthandler.enable(file=sys.__stderr__)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        args.config = args.config_before_command
    try:
        return int(args.handler(args))
    except ConfigError as error:
        _print_error(error)
        return EXIT_USER
    except (UnknownMediaError, DataDirInUseError) as error:
        _print_error(error)
        return EXIT_USER
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`megane media list | head`): no traceback. Python's own
        # advice: point stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_USER
    except MeganeError as error:
        _print_error(error)
        return EXIT_INTERNAL
    except BaseExceptionGroup as group:
        # A task of the daemon's TaskGroup failed: report the first cause plainly.
        cause = _first_leaf(group)
        if isinstance(cause, ConfigError | UnknownMediaError):
            _print_error(cause)
            return EXIT_USER
        if isinstance(cause, MeganeError):
            _print_error(cause)
            return EXIT_INTERNAL
        log.error("internal_error", error=repr(cause), exc_info=cause)
        return EXIT_INTERNAL
    except Exception as error:  # exit code 2, with the traceback logged
        log.error("internal_error", error=repr(error), exc_info=error)
        return EXIT_INTERNAL


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())

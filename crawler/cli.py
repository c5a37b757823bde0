"""The `megane` command line (SPEC §3).

Exit codes: 0 success, 1 user error (bad config, unknown SHA), 2 internal failure.
Commands that report take `--json` and then print one JSON document on stdout only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import getpass
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from crawler.config import Config, find_config, load_config
from crawler.errors import ConfigError
from storage.errors import MeganeError, UnknownMediaError
from storage.redact import redact, remember_secrets_in

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 2
TAG_NAME = re.compile(r"^[a-z0-9_\-]{1,40}$")
log = structlog.get_logger("megane.cli")


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def _load(args: argparse.Namespace) -> Config:
    from crawler.logs import configure_logging

    config = load_config(find_config(args.config))
    log_format = config.daemon.log_format
    if getattr(args, "json", False) and log_format == "auto":
        log_format = "json"
    configure_logging(log_format, config.daemon.log_level)
    for source in config.sources:  # masked in whatever this command prints or logs
        remember_secrets_in(source.settings)
    from classifier.native_logs import configure_native_logs

    configure_native_logs(config.daemon.log_level, os.environ)  # before any TF import
    return config


async def _open_catalogue(config: Config, *, read_only: bool = False) -> Any:
    """The catalogue; `read_only` commands never create data_dir (ConfigError if missing)."""
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    layout = DataLayout(config.data_dir)
    if read_only:
        _require_data_dir(config)
    else:
        layout.ensure()
    return await Catalogue.open(layout.catalogue)


def _require_data_dir(config: Config) -> None:
    if not Path(config.data_dir).is_dir():
        raise ConfigError(str(config.path), [
            f"[daemon] data_dir: {config.data_dir} does not exist; check the path, or run "
            "`megane once` (or the daemon) once to create it"])


# -- commands ---------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from crawler.serving import configuration_problems

    path = find_config(args.config)
    config = load_config(path)
    problems = configuration_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    kinds = ", ".join(f"{s.name} ({s.kind})" for s in config.sources) or "none"
    print(f"{path}: ok; data_dir={config.data_dir}; sources: {kinds}")
    _warn_exposed_secrets(path)
    from crawler.tag_coverage import coverage_warnings

    for warning in coverage_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


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
    return _daemon_main(_load(args), once=False)


def cmd_once(args: argparse.Namespace) -> int:
    return _daemon_main(_load(args), once=True)


def cmd_import(args: argparse.Namespace) -> int:
    from crawler.importer import import_command

    return import_command(_load(args), Path(args.directory), recursive=args.recursive,
                          as_json=args.json)


def cmd_media_list(args: argparse.Namespace) -> int:
    config = _load(args)

    async def body() -> list[dict[str, Any]]:
        catalogue = await _open_catalogue(config, read_only=True)
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
        _print_json(items)
    else:
        for item in items:
            sha = (item["sha256"] or "-")[:12]
            print(f"{item['state']:<10} {sha:<12} {item['source']:<16} {item['url']}"
                  + (f"  ({item['reason']})" if item["reason"] else ""))
    return EXIT_OK


async def status_document(config: Config) -> dict[str, Any]:
    """What `megane status --json` prints."""
    from classifier.models import list_models
    from crawler.serving import serving_document
    from storage.placement import DataLayout

    catalogue = await _open_catalogue(config, read_only=True)
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
                "cursor": redact(state.cursor) if state.cursor else None,
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
                "available": [info.version for info in list_models(DataLayout(config.data_dir).models)],
            },
        }
    finally:
        await catalogue.close()
    return document


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    document = asyncio.run(status_document(config))
    if args.json:
        _print_json(document)
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


def cmd_classify(args: argparse.Namespace) -> int:
    from crawler.classify_files import classify_command

    return classify_command(_load(args), args.files, as_json=args.json, environ=os.environ)


def _run_with_catalogue(config: Config,
                        body: Callable[[Any], Coroutine[Any, Any, int]],
                        *, read_only: bool = False) -> int:
    async def wrapper() -> int:
        catalogue = await _open_catalogue(config, read_only=read_only)
        try:
            return await body(catalogue)
        finally:
            await catalogue.close()

    return asyncio.run(wrapper())


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    config = _load(args)

    async def body(catalogue: Any) -> int:
        items = []
        for blob in await catalogue.blobs_in(["quarantine", "held"]):
            rows = await catalogue.media_for_blob(blob.sha256)
            items.append({
                "sha256": blob.sha256, "placement": blob.placement.value if blob.placement else None,
                "reason": redact(blob.reason) if blob.reason else blob.reason,
                "scores": await catalogue.scores_for(blob.sha256),
                "model_version": blob.model_version,
                "sources": sorted({row.source for row in rows}),
                "urls": [redact(row.url) for row in rows],
                "flags": sorted({flag for row in rows for flag in row.flags}),
                "labels": await catalogue.human_labels_for(blob.sha256),
            })
        if args.json:
            _print_json(items)
        else:
            for item in items:
                scores = ", ".join(f"{k}={v:.3f}" for k, v in item["scores"].items())
                print(f"{item['placement']:<10} {item['sha256'][:12]}  {item['reason']}  "
                      f"[{scores}]  {item['urls'][0] if item['urls'] else ''}")
        return EXIT_OK

    return _run_with_catalogue(config, body, read_only=True)


def _review_decision(
    args: argparse.Namespace,
    labels: Sequence[tuple[str, bool]] | Callable[[Config], Sequence[tuple[str, bool]]],
) -> int:
    from crawler.daemon import policy_of
    from crawler.rescore import refile_one
    from crawler.review.actions import after_decision
    from storage.placement import DataLayout

    config = _load(args)
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

    return _run_with_catalogue(config, body)


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

    config = _load(args)

    async def body(catalogue: Any) -> int:
        started = time.monotonic()
        layout = DataLayout(config.data_dir)
        report = await rescore(catalogue, layout, policy_of(config), time.time())
        await refresh_contact_sheet(catalogue, layout, config)
        document = {"changed": report.changed, "unchanged": report.unchanged,
                    "failed": report.failed, "seconds": round(time.monotonic() - started, 3)}
        if args.json:
            _print_json(document)
        else:
            print(f"re-filed {report.changed}, unchanged {report.unchanged}, "
                  f"failed {report.failed} in {document['seconds']} s")
        return EXIT_OK if not report.failed else EXIT_INTERNAL

    return _run_with_catalogue(config, body)


def cmd_review(args: argparse.Namespace) -> int:
    from crawler.review.server import run_review

    return run_review(_load(args), args.port, args.token, token_file=args.token_file,
                      environ=os.environ)


def cmd_delete(args: argparse.Namespace) -> int:
    from crawler.review.actions import delete_by_user

    config = _load(args)

    async def body(catalogue: Any) -> int:
        sha256 = await catalogue.resolve_sha(args.sha)
        await delete_by_user(catalogue, config, sha256, time.time())
        print(f"{sha256[:12]}: deleted; near-copies of it will be rejected on arrival")
        return EXIT_OK

    return _run_with_catalogue(config, body)


def cmd_train(args: argparse.Namespace) -> int:
    from classifier.training.cli import run_train

    return run_train(_load(args), tags=args.tags, architecture=args.architecture,
                     version=args.version, as_json=args.json)


def cmd_models_list(args: argparse.Namespace) -> int:
    from crawler.commands.models import print_models

    return print_models(_load(args), as_json=args.json)


def cmd_models_promote(args: argparse.Namespace) -> int:
    from crawler.commands.models import promote_command

    return promote_command(_load(args), args.version, shadow_images=args.shadow)


def cmd_models_export_tflite(args: argparse.Namespace) -> int:
    from classifier.training.export import export_command

    return export_command(_load(args), args.version, as_json=args.json)


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megane", description=__doc__.splitlines()[0])
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
    sub.add_argument("directory")
    sub.add_argument("--no-recursive", dest="recursive", action="store_false",
                     help="only the folder itself, not its subfolders")
    media = commands.add_parser("media", help="media URLs").add_subparsers(
        dest="media_command", required=True, metavar="SUBCOMMAND")
    sub = add("list", cmd_media_list, "every media URL with its state", media, json_flag=True)
    sub.add_argument("--state", choices=["pending", "downloaded", "decoded", "classified",
                                         "library", "quarantine", "held", "rejected"])
    sub = add("classify", cmd_classify, "print per-tag scores of image files", json_flag=True)
    sub.add_argument("files", nargs="+", metavar="FILE")
    quarantine = commands.add_parser("quarantine", help="review quarantined images") \
        .add_subparsers(dest="quarantine_command", required=True, metavar="SUBCOMMAND")
    add("list", cmd_quarantine_list, "what is quarantined or held", quarantine, json_flag=True)
    for name, handler, text in (
        ("release", cmd_quarantine_release, "not NSFW: move to the library (label nsfw=no)"),
        ("confirm", cmd_quarantine_confirm, "NSFW: keep in quarantine (label nsfw=yes)"),
    ):
        sub = add(name, handler, text, quarantine)
        sub.add_argument("sha", metavar="SHA")
    sub = add("label", cmd_label, "record human tag labels, e.g. megane=yes cat=no")
    sub.add_argument("sha", metavar="SHA")
    sub.add_argument("labels", nargs="+", metavar="TAG=yes|no")
    add("rescore", cmd_rescore, "re-file every image from stored scores", json_flag=True)
    sub = add("review", cmd_review, "the local review web UI (127.0.0.1, token-protected)")
    sub.add_argument("--port", type=int, default=8421, help="port on 127.0.0.1 (default 8421)")
    sub.add_argument("--token", help="access token (visible to local users in /proc: prefer "
                                     "MEGANE_REVIEW_TOKEN or --token-file; default: a new "
                                     "random one, printed)")
    sub.add_argument("--token-file", type=Path, metavar="PATH",
                     help="read the access token from PATH (mode 0600)")
    sub = add("delete", cmd_delete, "delete an image for good and block its near-copies")
    sub.add_argument("sha", metavar="SHA")
    sub = add("train", cmd_train, "train a new model version from labels; print its evaluation",
              json_flag=True)
    sub.add_argument("--tags", type=lambda text: [t.strip().lower() for t in text.split(",")
                                                  if t.strip()],
                     help="comma-separated tags to train (default: every labelled tag)")
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
    sub.add_argument("version", metavar="VERSION")
    sub.add_argument("--shadow", type=int, metavar="N", default=None,
                     help="first run VERSION beside the active model on the next N images")
    sub = add("export-tflite", cmd_models_export_tflite,
              "write models/VERSION/model.tflite and check it against TensorFlow", models,
              json_flag=True)
    sub.add_argument("version", metavar="VERSION")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A watchdog abort (SIGABRT) then leaves every thread's stack in the journal.
    if sys.__stderr__ is not None:
        with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
            faulthandler.enable(file=sys.__stderr__)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER
    except UnknownMediaError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return EXIT_OK
    except MeganeError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    except BaseExceptionGroup as group:
        # A task of the daemon's TaskGroup failed: report the first cause plainly.
        cause = _first_leaf(group)
        if isinstance(cause, ConfigError | UnknownMediaError):
            print(f"error: {cause}", file=sys.stderr)
            return EXIT_USER
        if isinstance(cause, MeganeError):
            print(f"error: {cause}", file=sys.stderr)
            return EXIT_INTERNAL
        log.error("internal_error", error=repr(cause), exc_info=cause)
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - exit code 2, with the traceback logged
        log.error("internal_error", error=repr(error), exc_info=error)
        return EXIT_INTERNAL


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())

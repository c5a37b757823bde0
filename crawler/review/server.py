"""`megane review`: serve the review UI on 127.0.0.1 until SIGINT/SIGTERM.

The UI answers on a random `megane-<hex>.localhost` name of its own (see
`crawler.review.security`), bound to 127.0.0.1. The token comes from `--token-file PATH`,
`--token T` (visible to every local user in /proc: warned), `MEGANE_REVIEW_TOKEN`, or is
made up and printed in a one-time sign-in link. A token the user gave is never printed: the
link is then the sign-in form.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from aiohttp import web

from crawler.config import Config
from crawler.review.app import make_app
from crawler.review.security import LOGIN_PATH, new_host_name
from crawler.review.settings import ReviewSettings
from storage.catalogue import Catalogue
from crawler.display import linkable_url
from storage.contact_sheet import refresh_quarantine_index
from storage.placement import DataLayout

log = structlog.get_logger("megane.review")
BIND_ADDRESS = "127.0.0.1"
MIN_TOKEN_LENGTH = 16
TOKEN_VARIABLE = "MEGANE_REVIEW_TOKEN"


def new_token() -> str:
    return secrets.token_urlsafe(24)


class TokenError(ValueError):
    """The review token cannot be had from where it was asked for (the message says why)."""


def resolve_token(token: str | None, token_file: Path | None,
                  environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """The review token and warnings to print: from the file, the argument, the environment.

    Raises TokenError naming the file or the argument at fault.
    """
    given, warnings, _ = given_token(token, token_file, environ)
    return (new_token() if given is None else given), warnings


def given_token(token: str | None, token_file: Path | None,
                environ: Mapping[str, str]) -> tuple[str | None, list[str], str | None]:
    """The token the user gave, warnings to print, and where it came from (for messages);
    (None, warnings, None) when none was given.

    Raises TokenError naming the file or the argument at fault.
    """
    warnings: list[str] = []
    if token is not None and token_file is not None:
        raise TokenError("give --token-file or --token, not both")
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenError(f"--token-file {token_file}: cannot read it ({error})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"warning: --token-file {token_file} is readable by other users "
                            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 {token_file}")
        chosen, where = text.strip(), f"--token-file {token_file}"
    elif token is not None:
        warnings.append("warning: --token is visible to every local user (ps, "
                        "/proc/PID/cmdline); use MEGANE_REVIEW_TOKEN or --token-file instead")
        chosen, where = token, "--token"
    elif environ.get(TOKEN_VARIABLE):
        chosen, where = environ[TOKEN_VARIABLE].strip(), TOKEN_VARIABLE
    else:
        return None, warnings, None
    if len(chosen) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters")
    if any(char.isspace() or ord(char) < 32 for char in chosen):
        raise TokenError(f"{where}: the token must not contain spaces or control characters")
    return chosen, warnings, where


async def serve(config: Config, port: int, token: str, stop: asyncio.Event | None = None,
                ready: Callable[[str], None] | None = None, host_name: str | None = None,
                token_source: str | None = None) -> int:
    """Serve until `stop` is set (or SIGINT/SIGTERM); prints the URL to open.

    The URL carries the token (a one-time sign-in link) only when `token_source` is None,
    i.e. the token was made up here; a token the user gave (`token_source` names where
    from) is never printed, and the URL is the sign-in form. `host_name` is the UI's own
    name (default: a new random `*.localhost` one). `ready` is called with the printed URL
    once the server listens (tests wait on it).
    """
    host_name = host_name or new_host_name()
    layout = DataLayout(config.data_dir)
    layout.ensure()
    settings = ReviewSettings.from_mapping(config.review, str(config.path))
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        app = make_app(config, catalogue, layout, token, host_name=host_name)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, BIND_ADDRESS, port)
            try:
                await site.start()
            except OSError as error:
                print(f"error: cannot listen on {BIND_ADDRESS}:{port}: {error.strerror}",
                      file=sys.stderr)
                return 1
            bound_port = runner.addresses[0][1]
            await refresh_quarantine_index(catalogue, layout, settings.blur_radius,
                                           linkable=linkable_url)
            origin = f"http://{host_name}:{bound_port}"
            if token_source is None:
                url = f"{origin}/quarantine?token={token}"
                how = "the link signs in once; later sign in at /login with the token"
            else:
                url = f"{origin}{LOGIN_PATH}"
                how = f"sign in with the token from {token_source}"
            print(f"megane review: open {url}\n"
                  f"  ({how}. {host_name} is served on {BIND_ADDRESS}:{bound_port})",
                  flush=True)
            log.info("review_started", address=BIND_ADDRESS, port=bound_port, host=host_name)
            if ready is not None:
                ready(url)
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            for number in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(number, stop.set)
            try:
                await stop.wait()
            finally:
                for number in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(number)
        finally:
            await runner.cleanup()
    finally:
        await catalogue.close()
    log.info("review_stopped")
    return 0


def run_review(config: Config, port: int, token: str | None, *, token_file: Path | None = None,
               environ: Mapping[str, str] | None = None) -> int:
    """The `megane review` command: 0 after a clean stop, 1 when it cannot start."""
    try:
        given, warnings, token_source = given_token(token, token_file, environ or {})
    except TokenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(warning, file=sys.stderr)
    if not 0 <= port <= 65535:
        print(f"error: --port {port} is not a TCP port", file=sys.stderr)
        return 1
    resolved = new_token() if given is None else given
    return asyncio.run(serve(config, port, resolved, token_source=token_source))

"""`megane review`: serve the review UI on 127.0.0.1 until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Callable

import structlog
from aiohttp import web

from crawler.config import Config
from crawler.review.app import make_app
from crawler.review.settings import ReviewSettings
from storage.catalogue import Catalogue
from storage.contact_sheet import refresh_quarantine_index
from storage.placement import DataLayout

log = structlog.get_logger("megane.review")
BIND_ADDRESS = "127.0.0.1"
MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    return secrets.token_urlsafe(24)


async def serve(config: Config, port: int, token: str, stop: asyncio.Event | None = None,
                ready: Callable[[str], None] | None = None) -> int:
    """Serve until `stop` is set (or SIGINT/SIGTERM); prints the URL with the token.

    `ready` is called with that URL once the server listens (tests wait on it).
    """
    layout = DataLayout(config.data_dir)
    layout.ensure()
    settings = ReviewSettings.from_mapping(config.review, str(config.path))
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        runner = web.AppRunner(make_app(config, catalogue, layout, token), access_log=None)
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
            await refresh_quarantine_index(catalogue, layout, settings.blur_radius)
            url = f"http://{BIND_ADDRESS}:{bound_port}/quarantine?token={token}"
            print(f"megane review: open {url}", flush=True)
            log.info("review_started", address=BIND_ADDRESS, port=bound_port)
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


def run_review(config: Config, port: int, token: str | None) -> int:
    """The `megane review` command: 0 after a clean stop, 1 when it cannot start."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        print(f"error: --token must be at least {MIN_TOKEN_LENGTH} characters", file=sys.stderr)
        return 1
    if not 0 <= port <= 65535:
        print(f"error: --port {port} is not a TCP port", file=sys.stderr)
        return 1
    return asyncio.run(serve(config, port, token or new_token()))

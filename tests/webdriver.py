"""A minimal W3C WebDriver client over aiohttp, for Debian's chromium + chromedriver.

No Selenium and no browser download: chromedriver is started on a free 127.0.0.1 port
and spoken to with the W3C JSON protocol. Only the commands the browser tests use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1024",
)


class WebDriverError(Exception):
    """chromedriver answered an error (its `error` code and message)."""


def find_browser() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) when both are installed, else None."""
    driver = shutil.which("chromedriver")
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found and driver:
            return found, driver
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Browser:
    """One WebDriver session."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, session_id: str) -> None:
        self.http = http
        self.base_url = base_url
        self.session_id = session_id

    async def command(self, method: str, path: str, payload: Any = None) -> Any:
        url = f"{self.base_url}/session/{self.session_id}{path}"
        async with self.http.request(method, url, json=payload) as response:
            document = await response.json()
        value = document.get("value")
        if response.status != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    async def get(self, url: str) -> None:
        await self.command("POST", "/url", {"url": url})

    async def current_url(self) -> str:
        return str(await self.command("GET", "/url"))

    async def find_all(self, css: str) -> list[str]:
        found = await self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [item[ELEMENT_KEY] for item in found]

    async def find(self, css: str) -> str:
        found = await self.find_all(css)
        if not found:
            raise WebDriverError(f"no element matches {css!r}")
        return found[0]

    async def click(self, element: str) -> None:
        await self.command("POST", f"/element/{element}/click", {})

    async def attribute(self, element: str, name: str) -> str | None:
        value = await self.command("GET", f"/element/{element}/attribute/{name}")
        return None if value is None else str(value)

    async def property(self, element: str, name: str) -> Any:
        return await self.command("GET", f"/element/{element}/property/{name}")

    async def text(self, element: str) -> str:
        return str(await self.command("GET", f"/element/{element}/text"))

    async def press(self, keys: str) -> None:
        """Type `keys` to the focused element (key down and up for each)."""
        steps = []
        for key in keys:
            steps += [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]
        await self.command("POST", "/actions",
                           {"actions": [{"type": "key", "id": "keyboard", "actions": steps}]})

    async def screenshot(self) -> bytes:
        return base64.b64decode(await self.command("GET", "/screenshot"))


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    """Start chromedriver and one headless Chromium session; stop both afterwards."""
    found = find_browser()
    if found is None:
        raise RuntimeError("chromium and chromedriver are not installed")
    binary, driver = found
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        driver, f"--port={port}", f"--log-path={tmp_path / 'chromedriver.log'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while b"started successfully" not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError("chromedriver exited before it was ready")
        base_url = f"http://127.0.0.1:{port}"
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"],
            },
        }}}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.post(f"{base_url}/session", json=capabilities) as response:
                document = await response.json()
            if response.status != 200:
                raise WebDriverError(f"new session: {document.get('value')}")
            browser = Browser(http, base_url, document["value"]["sessionId"])
            try:
                yield browser
            finally:
                with contextlib.suppress(aiohttp.ClientError, WebDriverError):
                    async with http.delete(f"{base_url}/session/{browser.session_id}"):
                        pass
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()

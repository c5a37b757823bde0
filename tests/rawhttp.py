"""A raw HTTP/1.1 server on asyncio streams that writes header bytes exactly as given.

aiohttp.web (and http.server) refuse or re-encode some header bytes; real servers send raw
Latin-1 bytes, control characters and garbage. `RawServer` answers each request from a
routes table of `RawResponse`s whose headers are bytes, and records every request's head
(method, path, headers as bytes) so a test can see what the crawler sent back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RawResponse:
    """One response: status, header lines as (name, value) bytes, body."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # Seconds between body bytes (a server dripping its answer); 0 sends it at once.
    drip_s: float = 0.0


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[bytes, bytes]


@dataclass
class RawServer:
    """Serves `routes` (path without query -> response) on 127.0.0.1; 404 otherwise."""

    routes: dict[str, RawResponse] = field(default_factory=dict)
    requests: list[RawRequest] = field(default_factory=list)
    port: int = 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                method, target, _ = lines[0].decode("latin-1").split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                path = target.split("?", 1)[0]
                self.requests.append(RawRequest(method, path, headers))
                response = self.routes.get(path, RawResponse(404, [], b"not found"))
                out = [f"HTTP/1.1 {response.status} X\r\n".encode()]
                out += [name + b": " + value + b"\r\n" for name, value in response.headers]
                out.append(f"Content-Length: {len(response.body)}\r\n\r\n".encode())
                writer.write(b"".join(out))
                if response.drip_s:
                    for index in range(len(response.body)):
                        writer.write(response.body[index:index + 1])
                        await writer.drain()
                        await asyncio.sleep(response.drip_s)
                else:
                    writer.write(response.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(routes: dict[str, RawResponse] | None = None) -> AsyncIterator[RawServer]:
    """Run a RawServer on a free port for the duration of the block."""
    server = RawServer(routes=dict(routes or {}))
    listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def routes_from_case(site: Path, port: int) -> dict[str, RawResponse]:
    """A case folder's `site/routes.json` as RawResponses, header values written as Latin-1.

    Mirrors the shared cases' serve.py: ``{PORT}`` in non-image bodies becomes `port`.
    """
    table = json.loads((site / "routes.json").read_text(encoding="utf-8"))
    routes = {}
    for path, spec in table.items():
        headers = [(name.encode("latin-1"), str(value).replace("{PORT}", str(port))
                    .encode("latin-1")) for name, value in spec.get("headers", {}).items()]
        if "file" in spec:
            body = (site / spec["file"]).read_bytes()
        else:
            body = str(spec.get("body", "")).encode("utf-8")
        content_type = dict(spec.get("headers", {})).get("Content-Type", "")
        if not content_type.lower().startswith("image/"):
            body = body.replace(b"{PORT}", str(port).encode("ascii"))
        routes[path] = RawResponse(int(spec.get("status", 200)), headers, body)
    return routes

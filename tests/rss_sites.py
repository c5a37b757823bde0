"""Test helper: an aiohttp app serving a case's `site/` folder as described by its routes.json.

The same contract as ../shared/cases/serve.py: a route has "file" or "body", optional
"status" and "headers"; the query string is ignored; the text {PORT} in a non-image body is
replaced by the port the request arrived on, so a feed can name URLs on the same server.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web


def site_app(site: Path) -> web.Application:
    """An application answering the routes of `site/routes.json` (404 for any other path)."""
    routes = json.loads((site / "routes.json").read_text(encoding="utf-8"))

    async def answer(request: web.Request) -> web.Response:
        spec = routes.get(request.path)
        if spec is None:
            return web.Response(status=404, text="not found")
        headers = {str(name): str(value) for name, value in spec.get("headers", {}).items()}
        body = ((site / spec["file"]).read_bytes() if "file" in spec
                else str(spec.get("body", "")).encode("utf-8"))
        content_type = next((value for name, value in headers.items()
                             if name.lower() == "content-type"), "")
        if not content_type.lower().startswith("image/"):
            port = str(request.url.port).encode("ascii")
            body = body.replace(b"{PORT}", port)
        return web.Response(status=int(spec.get("status", 200)), headers=headers, body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app

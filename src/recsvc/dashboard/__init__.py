"""The web dashboard at /dashboard/: static pages (HTML, CSS, JavaScript modules and the vendored
uPlot) that call the JSON API with the key the operator signs in with (docs/design.md section
11). The pages hold no data and need no key; every data call they make is an API route with the
API's own auth.

The key is kept in the tab's sessionStorage and sent only in the X-API-Key header of fetch
calls, never in a URL. The pages' Content-Security-Policy lets them load and call only this
server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"

# Only this server, for scripts, styles, images and fetch; no inline script; no framing.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Pages and scripts are revalidated, so an upgraded server is seen at the next load.
    (b"cache-control", b"no-cache"),
]


class _Headers:
    """Adds the dashboard's security headers to every response of the static files, and names
    the mount as the request's route, so that access lines and HTTP metrics say `/dashboard`
    rather than `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route: BaseRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.route is not None:
            scope["route"] = self.route

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def mount(app: FastAPI) -> None:
    """Serve the dashboard at /dashboard/ (and redirect /dashboard there)."""

    @app.api_route(PREFIX, methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    files = _Headers(StaticFiles(directory=STATIC, html=True))
    app.mount(PREFIX, files, name="dashboard")
    files.route = app.router.routes[-1]

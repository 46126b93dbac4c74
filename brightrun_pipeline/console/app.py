"""The curators' web console: server-rendered pages and the JSON API they use, on one core.

The console only reads through `brightrun_pipeline.queries` and submits through
`Pipeline.submit`: the sensor runs what it stores. It never launches Dagster runs and never
changes the environment.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from brightrun_pipeline.console.auth import Access
from brightrun_pipeline.console.errors import error_body, install_error_handlers
from brightrun_pipeline.errors import UsageError
from brightrun_pipeline.factory import Services

HERE = Path(__file__).parent
# A request body above this is refused with 413 before it is parsed (80 IDs take ~3.5 kB).
MAX_BODY_BYTES = 64 * 1024


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the console to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(services: Services, *, host: str = "127.0.0.1") -> FastAPI:
    """The console app over `services`. Bound to loopback with no users defined it is open to one
    local user; otherwise every request must carry a user's token (refused to start without
    users on any other address)."""
    from brightrun_pipeline.console import api, pages

    has_users = services.db.count_users() > 0
    if not has_users and not is_loopback(host):
        raise UsageError(f"the console listens on {host}, beyond this machine, and no user is "
                         "defined: add one with `brightrun users add NAME --admin` first")
    app = FastAPI(title="BrightRun console API", version="1",
                  openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None)
    app.state.services = services
    app.state.access = Access(services.db, loopback=is_loopback(host))
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.state.max_body_bytes = MAX_BODY_BYTES
    install_error_handlers(app)
    app.middleware("http")(limit_body)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """The icon browsers ask for at the root (pages also link it under /static)."""
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    app.include_router(api.router)
    app.include_router(pages.router)
    return app


async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                     ) -> Response:
    """Refuse bodies above MAX_BODY_BYTES with 413: by their declared length, or, without one
    (chunked), as soon as what has arrived passes the limit (never read whole into memory)."""
    if request.method in ("POST", "PUT", "PATCH"):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            too_large = int(declared) > MAX_BODY_BYTES
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    break
                chunks.append(chunk)
            too_large = size > MAX_BODY_BYTES
            if not too_large:
                # What Request.body() would have kept: the handler reads the body from here.
                request._body = b"".join(chunks)
        if too_large:
            return JSONResponse(error_body(f"the request body exceeds {MAX_BODY_BYTES} bytes"),
                                status_code=413)
    return await call_next(request)

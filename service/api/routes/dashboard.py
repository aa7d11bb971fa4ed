"""The dashboard's page and files: ``/`` and ``/static/...``, served without a key.

They hold no data (the page asks ``/v1`` for it with the user's key), so
they are public like ``/healthz``. plotly.js is served from the installed
``plotly`` Python package rather than a CDN: the dashboard works on a
machine that reaches nothing but the API, and the chart library is the one
the package manager keeps up to date. Files are served by name from an
allow-list, so no path the client sends reaches the filesystem.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse

from service.api.conditional import matches
from service.dashboard import FILES, MEDIA_TYPES, STATIC_DIR

router = APIRouter(include_in_schema=False)

JS = MEDIA_TYPES[".js"]
# Everything the page loads comes from this server; plotly draws with inline
# styles and exports PNGs as data: URLs, downloads are blob: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@functools.cache
def plotly_js() -> Path | None:
    """plotly.js as bundled by the ``plotly`` package, found without importing it."""
    spec = importlib.util.find_spec("plotly")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


def _file(request: Request, path: Path, media_type: str, **headers: str) -> Response:
    """The file, or a 304 when the browser's copy is current.

    Every file is revalidated (``no-cache``) instead of cached for a while,
    so an upgraded package (ours or plotly's) is picked up at the next load
    while an unchanged 4.8 MB plotly.js costs one empty answer.
    """
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {
        **headers,
        "ETag": etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if matches(etag, request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/")
def index(request: Request) -> Response:
    """The dashboard page (job list, job pages and the submit form, by ``#`` route)."""
    return _file(
        request,
        STATIC_DIR / "index.html",
        "text/html; charset=utf-8",
        **{"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"},
    )


@router.get("/static/plotly.min.js")
def plotly(request: Request) -> Response:
    """The chart library, straight from the installed ``plotly`` package."""
    path = plotly_js()
    if path is None:
        raise HTTPException(404, "plotly.min.js not found: the plotly package is not installed")
    return _file(request, path, JS)


@router.get("/static/{name}")
def static(request: Request, name: str) -> Response:
    """One of the dashboard's own files, by its allow-listed name."""
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file named {name!r}")
    return _file(request, STATIC_DIR / name, media_type)

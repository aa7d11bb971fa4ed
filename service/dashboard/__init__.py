"""The dashboard: one static page (``static/``) that draws the REST API's data.

It is plain HTML, CSS and JavaScript with no build step, served by
:mod:`service.api.routes.dashboard` without a key because it holds no data:
every number on it comes from ``/v1`` requests the browser makes with the
user's key. The JavaScript is native ES modules (``app.js`` the entry, the
others imported by name from ``/static/``), so each file is served as
JavaScript: a browser refuses a module of any other type. Charts are drawn
with plotly.js from the installed ``plotly`` package, so nothing is fetched
from another site when the page is viewed.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

# The files /static/{name} serves, by name, with their media types: the
# modules and the style sheet in static/ (index.html is the page at /). Read
# once, so a name the client sends is looked up here, never on the disk.
FILES: dict[str, str] = {
    path.name: MEDIA_TYPES[path.suffix]
    for path in sorted(STATIC_DIR.iterdir())
    if path.is_file() and path.suffix in MEDIA_TYPES
}

__all__ = ["FILES", "MEDIA_TYPES", "STATIC_DIR"]

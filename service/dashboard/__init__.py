"""The dashboard: one static page (``static/``) that draws the REST API's data.

It is plain HTML, CSS and JavaScript with no build step, served by
:mod:`service.api.routes.dashboard` without a key because it holds no data:
every number on it comes from ``/v1`` requests the browser makes with the
user's key. Charts are drawn with plotly.js from the installed ``plotly``
package, so nothing is fetched from another site when the page is viewed.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["STATIC_DIR"]

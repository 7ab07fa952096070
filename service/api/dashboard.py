"""The operators' dashboard: one page and its static files, served by the API.

The page itself is public: it holds no data. It asks for the admin token in a login form,
keeps it in the tab's `sessionStorage` (never in the URL) and sends it as
`Authorization: Bearer` with every call it makes to the admin and serving routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
"""The dashboard's page, `static/`, and the npm pins (`package.json`) of its vendored files."""

STATIC_DIR = WEB_DIR / "static"
"""What the page loads: its script and style, and `vendor/` (npm builds with their licences)."""

STATIC_PREFIX = "/dashboard/static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only the service's own files run, nothing is fetched elsewhere, and no other site frames the
page (Chart.js sets inline styles on its canvas)."""

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
def dashboard_page() -> FileResponse:
    """The dashboard's page (public; the data it shows needs the admin token)."""
    return FileResponse(
        WEB_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        },
    )


def static_files() -> StaticFiles:
    """The dashboard's script, style and vendored libraries, for mounting at STATIC_PREFIX."""
    return StaticFiles(directory=STATIC_DIR, check_dir=True)

"""The upload page: `GET /` and its static assets, plain HTML/JS/CSS with no build step."""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Only these files are served: no directory listing, no path traversal to think about.
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Revalidate on every load: the page and its script must change together after an upgrade.
_NO_CACHE = {"Cache-Control": "no-cache"}
# The page loads its script and style from here only and shows results as data: images; no
# other site may frame it (clickjacking) or have the browser guess a type.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = _NO_CACHE | {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["ui"], include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def upload_page() -> FileResponse:
    """The upload page (HTML)."""
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
def static_asset(name: str) -> FileResponse:
    """One of the page's script or style sheet; 404 for anything else."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    headers = _NO_CACHE | {"X-Content-Type-Options": "nosniff"}
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=headers)

"""Routes of the web page: `/` and its three assets under `/ui/`. Every page response carries a
Content-Security-Policy that allows the app's own scripts and styles only (no inline script, no
other origin), because the API key sits in the page's session storage."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated, so a redeploy's page and assets arrive together
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:  # a fixed list: no path from the request reaches the file system
        return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)

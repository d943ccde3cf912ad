"""Serve the playground: the page at `/` and its static assets under `/playground/`.

The page holds no secrets and calls the same /v1 routes as any client with the user's API key, so nothing
here needs authentication; the files are plain HTML/CSS/JS shipped in the package (no build step).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/playground"

# Scripts and styles only from this server; media may come from the signed-URL host (KINEMA_PUBLIC_URL can
# name another origin); no framing, and no referrer so signed links do not leak to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob: http: https:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class PlaygroundAssets(StaticFiles):
    """StaticFiles that makes browsers revalidate (ETag) so an upgraded server never runs stale scripts."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_playground(app: FastAPI) -> None:
    """Add the page at `/` and mount its assets at /playground; neither appears in the OpenAPI schema."""

    async def playground_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.add_api_route("/", playground_page, methods=["GET"], include_in_schema=False, name="playground")
    app.mount(ASSETS_PATH, PlaygroundAssets(directory=STATIC_DIR), name="playground-assets")

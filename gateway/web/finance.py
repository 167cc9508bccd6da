"""The built-in cost page, `/finance`, for teams without Grafana: static files only.

The page holds no data and no secret. It asks for an admin or finance token, keeps it in the
tab's sessionStorage (never in a URL or a cookie) and calls the admin API with it as
`Authorization: Bearer` (`/usage`, `/tenants`, `/tenants/{id}/budget`,
`/tenants/{id}/statements/{month}`), so it shows exactly what the admin API answers for that
token. Chart.js is vendored as one file (`static/finance/VENDORED.md`); nothing is built.

Only the files named in `ASSETS` are served: no part of a request path reaches the filesystem.
Every response forbids framing and MIME sniffing and sends no referrer. The page's
Content-Security-Policy allows this origin's scripts, styles and API and nothing else, plus the
statement page's one inline style (by hash): a statement the page opens from a blob URL
inherits the page's policy.
Failure mode: a file missing from the install is a packaging bug (500); nothing else can fail.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway.admin.statements_api import STATEMENT_STYLE_SOURCE
from gateway.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static") / "finance"
PAGE = "index.html"
ASSETS = {
    "finance.js": "text/javascript; charset=utf-8",
    "finance.css": "text/css; charset=utf-8",
    "chart.umd.js": "text/javascript; charset=utf-8",
}
PAGE_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        f"style-src 'self' {STATEMENT_STYLE_SOURCE}",
        "img-src 'self' data: blob:",  # Chart.js may render via data: URLs
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",  # the login form never submits: a token cannot land in a URL
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidate, so a new release's files are picked up at once
}


async def finance_page(request: Request) -> Response:
    """The cost page (static HTML; its script fetches the data)."""
    headers = {**HEADERS, "content-security-policy": PAGE_POLICY}
    return FileResponse(STATIC_DIR / PAGE, media_type="text/html; charset=utf-8", headers=headers)


async def finance_asset(request: Request) -> Response:
    """One of the page's scripts or style sheets."""
    name = request.path_params["asset"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"No asset {name!r}.", param="asset")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)


def finance_routes() -> list[Route]:
    """The page and its assets, open like the health probes: they hold no data."""
    return [
        Route("/finance", finance_page, methods=["GET"]),
        Route("/finance/static/{asset}", finance_asset, methods=["GET"]),
    ]

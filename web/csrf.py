"""Cross-site request forgery: state-changing requests from another site's pages are refused (403).

The API has no login yet, so an attack needs no cookie to ride on: any page a user opens could post a form
to http://127.0.0.1:8080/api/v1/runs/X/cancel, and a plain form POST is sent without a CORS preflight.
Tokens would make every script and test fetch one first; instead the browser says where a request comes
from. This is Go's net/http CrossOriginProtection (Go 1.25, after Filippo Valsorda's write-up):

- GET, HEAD and OPTIONS always pass (they change nothing here).
- `Sec-Fetch-Site` (sent by every current browser, and not settable by a page's scripts): `same-origin` or
  `none` (typed in the address bar, a bookmark) pass; `same-site` and `cross-site` are refused. Same-site
  is refused too: another port on 127.0.0.1 is the same site.
- Without it (an older browser, or plain HTTP to a non-local host), an `Origin` whose host:port is the
  request's Host passes, any other Origin (`null` included) is refused.
- Neither header: not a browser (curl, httpx, the test client), or a same-origin request of a very old one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refusal(method: str, host: str, sec_fetch_site: str | None, origin: str | None) -> str | None:
    """Why a request with these headers must be refused as cross-origin, or None when it may go on."""
    if method.upper() in SAFE_METHODS:
        return None
    if sec_fetch_site:
        if sec_fetch_site in ("same-origin", "none"):
            return None
        where = f"{origin} " if origin else ""
        return f"the browser says it came from {where}({sec_fetch_site})"
    if not origin:
        return None
    if urlsplit(origin).netloc.lower() == host.lower():
        return None
    return f"its Origin {origin} is not this server ({host})"


class CrossOriginProtection(ASGIMiddleware):
    """Answers 403 to a state-changing request another site's page made (see the module's docstring)."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = str(scope.get("method", "GET"))
        why = refusal(method, headers.get("host", ""), headers.get("sec-fetch-site"), headers.get("origin"))
        if why is not None:
            raise PermissionDeniedException(
                f"cross-origin request refused: {method} {scope['path']} was not sent by jetdag's own pages, "
                f"{why}. Use the dashboard at this server's address, or call the API from a script or the CLI "
                "(they send no Origin header)."
            )
        await next_app(scope, receive, send)

"""The console's response headers: a strict CSP (no inline script) and no framing, sniffing or caching."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

# 'wasm-unsafe-eval': asciinema-player 3.x compiles its inlined WebAssembly terminal; nothing wider.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def security_headers(
    applies: Callable[[str], bool],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook setting HEADERS on the paths `applies` names."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        if applies(request.path):
            response.headers.update(HEADERS)
            if not request.path.startswith("/static/"):
                response.headers["Cache-Control"] = "no-store"  # pages carry the CSRF token and private data

    return hook

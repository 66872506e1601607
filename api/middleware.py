"""ASGI middleware: the upload size limit and the review page's security headers."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

UPLOAD_PATH = "/v1/voice-notes"
# multipart framing and the small form fields on top of the audio itself
_FORM_OVERHEAD = 64 * 1024


class BodyTooLarge(Exception):
    pass


class UploadSizeLimit:
    """Refuses an upload body over the limit before it is spooled to disk: at once by
    its Content-Length, or, for a chunked body, as soon as the count passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes + _FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "too_large", self._message(int(declared)),
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0
        refused: str | None = None

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = self._message(seen, at_least=True)
                    raise BodyTooLarge(refused)
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns any error while it parses a form into its own 400; the
            # answer to a body over the limit is ours to give
            if refused is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await error_response(413, "too_large", refused,
                                     headers={"Connection": "close"})(scope, receive, send)

        await self.app(scope, counted, guarded_send)

    def _message(self, size: int, at_least: bool = False) -> str:
        limit_mb = (self.max_bytes - _FORM_OVERHEAD) / 1024 / 1024
        got = f"{'over ' if at_least else ''}{size / 1024 / 1024:.1f} MB"
        return f"the upload is {got}; the limit is {limit_mb:.0f} MB"


# The review page loads only its own files; it may not be framed (clickjacking) and
# plays audio from this origin.
PAGE_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
     b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class PageHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/review"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)

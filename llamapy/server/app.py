"""The ASGI application: routes of the three APIs, the chat page, and the guards in front of them.

Guards (a plain ASGI middleware, so streams are never buffered):
- Host: a server on a loopback address without an API key answers only requests whose Host is a
  loopback name (localhost, 127.x.x.x, [::1]); anything else is a web page that rebound a DNS name to
  127.0.0.1 to reach it (403).
- Origin (CORS): with an API key, any origin may call (llama-server's behaviour: the key protects; the
  OPTIONS preflight is answered without it). Without a key, only the page's own origin and the origins
  given with --cors-origin; a request from any other origin is refused (403), so a web page the user
  visits can't make the server generate.
- API key: with --api-key (or several, --api-key-file), every path but llama-server's public ones (/health,
  /models, /v1/models) and the chat page needs `Authorization: Bearer KEY`, compared in constant time; a
  miss is a 401 in OpenAI's error format.
- Content-Type: a POST body is JSON; a request that says it is something else (a form, text/plain: what a
  browser can send cross-site without asking) is refused with 415. Clients that send no Content-Type
  (scripts posting raw bytes) are accepted.
- Body size: a declared Content-Length over the limit is refused before reading; a chunked body is
  counted as it arrives and refused when it passes the limit (413). Uploads to /api/blobs/ (a model's
  GGUF, hashed and checked against its digest as it is written) are exempt from both body checks.
Every error is the same JSON shape (errors.APIError): 400 for malformed JSON, wrong types and
out-of-range values (never the framework's 422), 404/405 for unknown routes, 500 for a bug.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..util.safe_text import printable
from . import routes_llama, routes_ollama, routes_openai, routes_store
from .common import ServerState
from .errors import APIError

log = logging.getLogger("llamapy.server")

BLOB_PATH = "/api/blobs/"
PUBLIC_PATHS = frozenset({"/health", "/models", "/v1/models", "/", "/index.html"})
WEB_PAGE = Path(__file__).resolve().parent.parent / "web" / "index.html"


class Guard:
    """Host, origin, API-key, content-type and body-size checks, in front of the whole app (see above)."""

    def __init__(self, app: ASGIApp, api_key: str | Sequence[str] | None, max_body: int,
                 loopback_only: bool = False, cors_origins: tuple[str, ...] = ()):
        self.app = app
        keys = [api_key] if isinstance(api_key, str) else list(api_key or ())
        self.key_digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]
        self.key_digest = self.key_digests[0] if self.key_digests else None
        self.max_body = max_body
        self.check_host = loopback_only and not self.key_digests
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = (_header(scope, b"host") or b"").decode("latin-1")
        if self.check_host and host and not is_loopback_host(host):
            err = APIError(403, "this server only answers requests addressed to localhost (start it with "
                                "--api-key to serve other names)")
            return await err.response()(scope, receive, send)
        origin = (_header(scope, b"origin") or b"").decode("latin-1")
        cors: list[tuple[bytes, bytes]] = []
        if origin and not _same_origin(origin, host, scope):
            if self.key_digest is None and origin.rstrip("/").lower() not in self.cors_origins:
                err = APIError(403, f"requests from the origin {printable(origin, 100)} are not allowed "
                                    "(use --cors-origin, or --api-key)")
                return await err.response()(scope, receive, send)
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if self.key_digest is not None:
                cors.append((b"access-control-allow-credentials", b"true"))
            if scope["method"] == "OPTIONS":  # the preflight: answered without the key, as llama-server does
                return await Response(status_code=204, headers={
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                } | {k.decode(): v.decode("latin-1") for k, v in cors})(scope, receive, send)
            send = _with_headers(send, cors)
        if self.key_digest is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
            err = APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'")
            return await err.response()(scope, receive, send)
        if scope["path"].startswith(BLOB_PATH):  # a GGUF upload: raw bytes of any size, hashed as they come
            return await self.app(scope, receive, send)
        ctype = _header(scope, b"content-type")
        if scope["method"] in ("POST", "PUT", "PATCH") and ctype is not None and not _is_json(ctype):
            err = APIError(415, f"the request body must be JSON (Content-Type: application/json), not "
                                f"{printable(ctype.decode('latin-1'), 80)}")
            return await err.response()(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                return await APIError(400, "invalid Content-Length header").response()(scope, receive, send)
            if int(length) > self.max_body:
                return await _too_large(self.max_body).response()(scope, receive, send)
        return await self.app(scope, self._counting(receive), send)

    def _authorized(self, scope: Scope) -> bool:
        auth = _header(scope, b"authorization") or b""
        scheme, _, token = auth.partition(b" ")
        # digests of equal length compared in constant time: neither the key's bytes nor its length leak
        given = hashlib.sha256(token.strip()).digest()
        hits = [hmac.compare_digest(given, d) for d in self.key_digests]  # every key compared: no early exit
        return any(hits) and scheme.lower() == b"bearer"

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _too_large(self.max_body)
            return msg

        return counted


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost, 127.x.x.x or [::1], with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(origin: str, host: str, scope: Scope) -> bool:
    return bool(host) and origin.lower() == f"{scope.get('scheme', 'http')}://{host}".lower()


def _is_json(ctype: bytes) -> bool:
    return ctype.split(b";", 1)[0].strip().lower() == b"application/json"


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sending(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            msg = {**msg, "headers": [*msg.get("headers", []), *extra]}
        await send(msg)

    return sending


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the server's limit of {limit} bytes")


def create_app(state: ServerState, loopback_only: bool = False, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app for `state` (the scheduler is started and stopped with the app's lifespan);
    loopback_only: the server listens on a loopback address (Host is checked when there is no key)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.threads_http > 0:  # --threads-http: the pool that runs blocking work (tokenizing, templates)
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = state.threads_http
        if state.metrics_enabled:
            from .metrics import Metrics

            state.metrics = Metrics()
            state.scheduler.on_finish.append(state.metrics.record)
        state.scheduler.start()
        if state.models is not None:
            state.models.start()
        try:
            yield
        finally:
            if state.models is not None:
                await state.models.stop()
            state.scheduler.stop()

    app = FastAPI(title="llamapy", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = {404: f"no such endpoint: {request.url.path}", 405: f"method {request.method} is not allowed here"}
        return APIError(exc.status_code, msg.get(exc.status_code, str(exc.detail))).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return APIError(400, f"invalid request: {exc.errors()[0].get('msg', 'bad value')}").response()

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # the client left (or was cut for being slow) before its body was in

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> Response:
        return APIError(400, "a number in the request is out of range").response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)

    router = APIRouter()

    if state.webui and not state.static_path:
        @router.get("/", response_class=HTMLResponse)
        @router.get("/index.html", response_class=HTMLResponse)
        async def index():
            return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            })

    routes_llama.register(router, state)
    routes_openai.register(router, state)
    routes_ollama.register(router, state)
    routes_store.register(router, state)
    app.include_router(router)
    if state.static_path and state.webui:  # --path: a folder's files at /, after every API route
        from starlette.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=state.static_path, html=True), name="static")
    app.add_middleware(Guard, api_key=state.api_key, max_body=state.max_body, loopback_only=loopback_only,
                       cors_origins=tuple(cors_origins))
    return app

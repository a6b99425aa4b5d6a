"""What every endpoint of the server shares: its error responses, union types that validate by JSON
type, and the two ASGI middlewares (request-body size, metrics).

Errors name what was wrong. On prompttune's own endpoints they are FastAPI's shape: 422 gives
`{"detail": [{"loc": ["body", "texts", 2], "msg": ..., "type": ...}]}`, other statuses
`{"detail": "message"}`. On the OpenAI-compatible endpoints they are OpenAI's shape,
`{"error": {"message": ..., "type": ..., "param": "prompt", "code": ...}}`, so OpenAI clients show
the message. Echoed input is left out of error bodies (a refused text may be megabytes).
"""

from __future__ import annotations

import time
from typing import Annotated, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Discriminator, Tag
from starlette.exceptions import HTTPException

from .metrics import ServerMetrics

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")


class APIError(Exception):
    """An error response: `status`, a message that says what to do, and the request field at fault."""

    def __init__(self, status: int, message: str, *, loc: tuple | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.loc, self.headers = status, message, loc, headers


def is_openai(request: Request) -> bool:
    return request.scope["path"] in OPENAI_PATHS


def openai_error(status: int, message: str, param: str | None, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = {404: "model_not_found", 503: "overloaded"}.get(status)
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers=headers)


def dotted(loc: tuple) -> str:
    """("body", "texts", 2) → "texts[2]"; ("body", "messages", 0, "content") → "messages[0].content"."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    if is_openai(request):
        return openai_error(exc.status, exc.message, dotted(exc.loc) if exc.loc else None, exc.headers)
    if exc.status == 422 and exc.loc:
        return JSONResponse({"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]}, 422)
    return JSONResponse({"detail": exc.message}, exc.status, headers=exc.headers)


def by_json_type(**forms):
    """A union type whose member is chosen by the JSON value's type (`str`, `list`, `dict`; anything
    else tries the first form), so a wrong value gets the one error of the form it was meant as,
    not one error per member.

    Example:
        >>> TextOrObject = by_json_type(str=Text, dict=dict[str, Text])
    """
    first = next(iter(forms))

    def kind(value) -> str:
        name = type(value).__name__
        return name if name in forms else first

    return Annotated[Union[tuple(Annotated[t, Tag(name)] for name, t in forms.items())], Discriminator(kind)]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def field_loc(loc) -> list:
    """A validation error's location without pydantic's union-member tags: ("body", "texts", 0, "str") →
    ["body", "texts", 0]."""
    return [p for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _TYPE_TAGS)]


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": field_loc(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    if is_openai(request):
        message = "; ".join(f"{dotted(tuple(e['loc']))}: {e['msg']}" for e in errors)
        return openai_error(422, message, dotted(tuple(errors[0]["loc"])) if errors else None)
    return JSONResponse({"detail": errors}, 422)


BODY_NOT_PARSED = "There was an error parsing the body"
"""FastAPI's 400 for a body that is neither JSON's syntax error nor valid: not UTF-8, or nested past
Python's recursion limit."""


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (404 for an unknown URL, 405, 413 from `BodyLimit`) in the endpoint's shape;
    a body FastAPI could not parse is a 422 that says why it may be."""
    if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:
        message = "the request body could not be read as JSON: it is not UTF-8, or it is nested too deeply"
        if is_openai(request):
            return openai_error(422, message, None)
        return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "json_invalid"}]}, 422)
    if is_openai(request):
        return openai_error(exc.status_code, str(exc.detail), None, exc.headers)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


class BodyLimit:
    """Refuse (413) a request body longer than `max_bytes`, by its Content-Length or as it streams in,
    before the whole of it is read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is longer than the server's limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = (openai_error(413, message, None) if scope["path"] in OPENAI_PATHS
                        else JSONResponse({"detail": message}, 413))
            return await response(scope, receive, send)
        seen = 0

        async def counted():  # a body without Content-Length (chunked): refused once it grows past the limit
            nonlocal seen
            received = await receive()
            seen += len(received.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, message)
            return received

        return await self.app(scope, counted, send)


class CountRequests:
    """Count every HTTP response by route and status, and time it (`ServerMetrics`). A request answered
    before routing (a 413 by its Content-Length) is counted under the route its path matches, from
    `routes` (the app's, read at each such request)."""

    def __init__(self, app, metrics: ServerMetrics, routes: list | None = None):
        self.app, self.metrics, self.routes = app, metrics, routes or []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope.get("route") or self._matching(scope)
            endpoint = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)

    def _matching(self, scope):
        from starlette.routing import Match

        return next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)

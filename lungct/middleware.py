"""ASGI middleware guarding the upload endpoints before BentoML parses them (and aliasing paths).

BentoML turns several malformed uploads into 500s (a wrong field name, a text value where a
file is expected) and would read a server path sent as JSON. This guard buffers the body up
to a size limit (413 beyond it), requires multipart/form-data (415 otherwise), checks that
the form holds exactly the expected file field(s) (400 otherwise), then replays the body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request


@dataclass(frozen=True)
class UploadRoute:
    field: str
    max_files: int


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _form_problem(form, route: UploadRoute) -> str | None:
    names = set(form.keys())
    if route.field not in names:
        found = ", ".join(sorted(names)) or "none"
        return f"multipart field {route.field!r} is required (fields received: {found})"
    if names - {route.field}:
        return f"unexpected multipart field(s): {', '.join(sorted(names - {route.field}))}; send only {route.field!r}"
    values = form.getlist(route.field)
    if not all(isinstance(v, UploadFile) for v in values):
        return f"field {route.field!r} must be a file upload, not a text value"
    if len(values) > route.max_files:
        if route.max_files == 1:
            return f"send exactly one file in {route.field!r} (received {len(values)}); use /predict_batch for several"
        return f"at most {route.max_files} files per request (received {len(values)})"
    return None


class UploadGuard:
    def __init__(self, app, routes: dict[str, UploadRoute], max_bytes: int, aliases: dict[str, str] | None = None) -> None:
        self.app, self.routes, self.max_bytes, self.aliases = app, routes, max_bytes, aliases or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.aliases:
            scope = {**scope, "path": self.aliases[scope["path"]]}
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not headers.get("content-type", "").startswith("multipart/form-data"):
            return await send_error(send, 415, f"send the image as multipart/form-data in field {route.field!r}")
        if int(headers.get("content-length") or 0) > self.max_bytes:
            return await send_error(send, 413, f"upload larger than the limit of {self.max_bytes} bytes")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await send_error(send, 413, f"upload larger than the limit of {self.max_bytes} bytes")
            if not message.get("more_body"):
                break
        problem = await self._check_form(scope, bytes(body), route)
        if problem:
            return await send_error(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _check_form(self, scope, body: bytes, route: UploadRoute) -> str | None:
        async def once():
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(scope, receive=once)
        try:
            form = await request.form(max_files=route.max_files + 1, max_part_size=1024 * 1024)
        except (MultiPartException, ValueError, KeyError, AssertionError) as exc:
            return f"malformed multipart body: {exc}"
        try:
            return _form_problem(form, route)
        finally:
            await form.close()

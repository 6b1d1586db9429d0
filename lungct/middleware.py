"""ASGI middleware guarding the upload endpoints before BentoML parses them (and aliasing paths).

BentoML turns several malformed uploads into 500s (a wrong field name, a text value where a
file is expected) and would read a server path sent as JSON. This guard buffers the body up
to a size limit (413 beyond it), requires multipart/form-data (400 otherwise: BentoML's OpenAPI
document lists 400, not 415), checks that
the form holds exactly the expected file field(s) (400 otherwise), then passes the files on
re-encoded under fixed file names.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
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
            return await send_error(send, 400, f"send the image as multipart/form-data in field {route.field!r}")
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
        try:
            files = await self._read_form(scope, bytes(body), route)
        except ValueError as exc:
            return await send_error(send, 400, str(exc))
        boundary, clean = encode_form(route.field, files)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                    (b"content-length", str(len(clean)).encode())]
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": clean, "more_body": False}
            return await receive()

        return await self.app({**scope, "headers": headers}, replay, send)

    async def _read_form(self, scope, body: bytes, route: UploadRoute) -> list[bytes]:
        """The uploaded files' bytes, or ValueError saying what is wrong with the form."""

        async def once():
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(scope, receive=once)
        try:
            form = await request.form(max_files=route.max_files + 1, max_part_size=1024 * 1024)
        except (MultiPartException, HTTPException, ValueError, KeyError, AssertionError) as exc:
            raise ValueError(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from exc
        try:
            problem = _form_problem(form, route)
            if problem:
                raise ValueError(problem)
            return [await upload.read() for upload in form.getlist(route.field)]
        finally:
            await form.close()


def encode_form(field: str, files: list[bytes]) -> tuple[str, bytes]:
    """Re-encode the uploads under fixed, safe file names: a client's file name never reaches the disk."""
    boundary = secrets.token_hex(16)
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"upload-{i}.bin\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(files)
    ]
    return boundary, b"".join(parts) + f"--{boundary}--\r\n".encode()


class Stopping:
    """Set once the process has been asked to stop (SIGTERM)."""

    def __init__(self) -> None:
        self.set = False


class CloseWhenStopping:
    """After SIGTERM, every response carries `Connection: close`, so keep-alive clients reconnect
    (and are refused) instead of sending more requests on a connection of a stopping worker."""

    def __init__(self, app, stopping: Stopping) -> None:
        self.app, self.stopping = app, stopping

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message) -> None:
            if message["type"] == "http.response.start" and self.stopping.set:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)

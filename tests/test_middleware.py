"""CloseWhenStopping: keep-alive connections of a stopping worker are closed after their response."""

from __future__ import annotations

import asyncio

from lungct.middleware import CloseWhenStopping, Stopping


async def _app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _headers(stopping: Stopping) -> list[tuple[bytes, bytes]]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    asyncio.run(CloseWhenStopping(_app, stopping)({"type": "http"}, None, send))
    return sent[0]["headers"]


def test_responses_close_the_connection_only_once_stopping():
    stopping = Stopping()
    assert _headers(stopping) == [(b"connection", b"keep-alive")]
    stopping.set = True
    assert _headers(stopping) == [(b"connection", b"close")]

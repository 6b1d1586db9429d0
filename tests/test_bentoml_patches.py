"""The TimeoutMiddleware work-around: no timer outlives its request; an app that fails does not hang."""

import asyncio

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from lungct.bentoml_patches import patch_timeout_middleware

patch_timeout_middleware()


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def failing_app(scope, receive, send):
    raise RuntimeError("boom")


async def call(app, timeout=60):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await TimeoutMiddleware(app, timeout)({"type": "http", "path": "/"}, receive, send)
    return sent


def test_no_timer_outlives_the_request():
    async def scenario():
        loop = asyncio.get_running_loop()
        for _ in range(50):
            assert (await call(ok_app))[0]["status"] == 200
        return [h for h in loop._scheduled if not h.cancelled()]

    assert asyncio.run(scenario()) == []


def test_failing_app_raises_at_once_instead_of_waiting_for_the_timeout():
    async def scenario():
        return await asyncio.wait_for(call(failing_app, timeout=60), 5)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario())


def test_slow_app_still_gets_a_504():
    async def slow_app(scope, receive, send):
        await asyncio.sleep(10)

    sent = asyncio.run(call(slow_app, timeout=0.2))
    assert sent[0]["status"] == 504

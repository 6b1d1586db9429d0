"""Work-arounds for BentoML 1.4.40.

TimeoutMiddleware (bentoml/_internal/server/http/traffic.py):

1. It schedules `loop.call_later(timeout, ...)` for every request and never cancels it: the timer
   handle keeps the request's contextvars Context (the Request, its upload, the whole ASGI cycle)
   alive for `traffic.timeout` seconds after the answer; and with hundreds of live timers in the heap
   asyncio never purges the cancelled uvicorn keep-alive timers, which hold the same contexts for 75 s.
   Under load that is 60-75 s worth of requests in memory (about 1 GB at 125 req/s).
2. It waits for the first `send`; when the app raises before sending, nothing is sent until the
   timer fires (a 60 s hang, then no answer).

The client behind `bentoml.depends` (_bentoml_impl/client/proxy2.py) pools its connections to a
dependency for aiohttp's default 15 s, while the dependency's uvicorn closes idle ones after 5 s
(BentoML passes no keep-alive to dependency processes):
3. a pooled connection can be closed by the dependency just as it is reused (a lost call);
4. a connection the dependency has closed stays in the pool, with its buffers, until the pool's
   clean-up runs 15 s after the last call (3-16 MB of a front process's RSS after a burst of 1,000
   requests).
"""

from __future__ import annotations

import asyncio

from _bentoml_impl.client import proxy2
from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


async def _timeout_call(self, scope, receive, send) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    fut.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                               status_code=504)(scope, receive, send)
    else:
        await fut  # re-raises the app's exception: ServerErrorMiddleware answers 500
    finally:
        timer.cancel()


def patch_timeout_middleware() -> None:
    traffic.TimeoutMiddleware.__call__ = _timeout_call


def patch_dependency_keepalive(seconds: float) -> None:
    """Pool connections to dependencies for `seconds` (below uvicorn's 5 s keep-alive) instead of 15 s."""
    make_client = proxy2.SessionManager._make_client

    def _make_client(self):
        session = make_client(self)
        session.connector._keepalive_timeout = seconds  # aiohttp takes it only as a constructor argument
        return session

    proxy2.SessionManager._make_client = _make_client

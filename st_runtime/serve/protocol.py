"""uvicorn's HTTP protocol (httptools) with the connection limits it lacks, each with a clear answer:

- a deadline for a request's headers (`--header-timeout`): uvicorn has none, so a client that sends a header byte now
  and then holds its connection forever (408, then the connection is closed);
- a size limit for the request line and headers (MAX_HEADER_BYTES; 431, closed);
- a cap on open connections (`--max-connections`): the connections past it are answered 503 in st-serve's error
  format once their headers are in, and closed. uvicorn's own `limit_concurrency` answers a plain-text 503; this one
  speaks the endpoint's dialect and counts connections only.

The body's deadline (`--body-timeout`) is the app's (`PostEndpoint._body`), which knows the path and answers 408 in
its dialect. The limits come from the app's ServeConfig, which its lifespan hands to uvicorn as lifespan state
(`app.CONFIG_STATE`), so they reach every worker process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from st_runtime.serve.app import CONFIG_STATE, ApiError, ServeConfig, error_answer, send_error

MAX_HEADER_BYTES = 64 << 10  # request line and headers of one request
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


async def overloaded(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of a connection past --max-connections: 503, then the connection is closed."""
    await send_error(send, ApiError(503, "Too many open connections (--max-connections); retry in a moment.",
                                    headers={"Retry-After": "1", "Connection": "close"}), scope["path"])


class ServeProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a header deadline, a header size limit and a connection cap (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.app_state.get(CONFIG_STATE)
        self._config: ServeConfig = config if isinstance(config, ServeConfig) else ServeConfig(models=())
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._config.max_connections:
            self.app = overloaded
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self.transport.is_closing():  # refused (431) earlier in the same data: the parser still calls back
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._refuse(431, f"The request line and headers are larger than {MAX_HEADER_BYTES} bytes.")

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._config.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:  # a pipelined request behind a running one
            self._arm()
            return
        self._refuse(408, f"The request headers did not arrive within --header-timeout "
                          f"{self._config.header_timeout:g} s.")

    def _refuse(self, status: int, message: str) -> None:
        """Answer (TEI's error format: the path is not known yet) and close the connection."""
        self._disarm()
        body, _ = error_answer(ApiError(status, message), "/")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()

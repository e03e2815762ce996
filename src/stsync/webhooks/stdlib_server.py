"""The HTTP adapter: the standard library's ``ThreadingHTTPServer`` in front of a handler.

All it does is framing: read a request (its body only with a ``Content-Length`` of at most
``max_body``, answered 413/411/400 otherwise), pass a ``handler.Request`` to ``handle``, and
write the ``handler.Response`` back with ``Connection: close``. Every other behaviour lives
in ``handler``, so another server library replaces this one module.

A thread per connection, each with a 30 s socket timeout; ``stop()`` stops accepting and
waits for the requests in flight (no daemon threads), so none can queue a delivery after the
worker was told to finish. The request line holds the token: the access log is redacted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stsync.errors import UsageError
from stsync.logs import get_logger, redact
from stsync.webhooks.handler import Request, Response, body_too_large, rejection

log = get_logger(__name__)

Handle = Callable[[Request], Response]


class StdlibServer:
    """``bind()`` → ``serve()`` → ``stop()``; ``address`` once bound."""

    def __init__(self, handle: Handle, *, host: str, port: int, max_body: int) -> None:
        self.handle = handle
        self.host = host
        self.port = port
        self.max_body = max_body
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address bound (the actual port when 0 was asked for)."""
        assert self._address is not None, "bind() first"
        return self._address

    def bind(self) -> None:
        """Take the port (``UsageError`` when it cannot); nothing is answered before ``serve()``."""
        try:
            httpd = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                hint="choose another --port (or stop what is using it)",
            ) from None
        httpd.adapter = self
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self._address = (str(host), int(port))

    def serve(self) -> None:
        """Answer requests on a thread of its own, until ``stop()``."""
        assert self._httpd is not None, "bind() first"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="stsync-webhook-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and wait for the requests in flight; releases the port. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
            self._thread = None
        httpd.server_close()


class _Server(ThreadingHTTPServer):
    # Not daemon threads: server_close() then waits for requests in flight.
    daemon_threads = False
    adapter: StdlibServer


class _BodyRefused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.body.get("error"))
        self.response = response


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "stsync-serve"
    sys_version = ""
    timeout = 30  # a slow or silent client cannot hold a thread for ever

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        adapter = self.server.adapter
        try:
            body = self._read_body(adapter.max_body) if self.command != "GET" else b""
        except _BodyRefused as refused:
            self._answer(refused.response)
            return
        self._answer(adapter.handle(Request.build(self.command, self.path, self.headers.items(), body)))

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").casefold():
            raise _BodyRefused(rejection(411, "send a Content-Length (chunked bodies are not accepted)"))
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _BodyRefused(rejection(400, "bad Content-Length")) from None
        if length < 0:
            raise _BodyRefused(rejection(400, "bad Content-Length"))
        if length > limit:
            raise _BodyRefused(body_too_large(length, limit))
        return self.rfile.read(length)

    def _answer(self, response: Response) -> None:
        data = response.encoded()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender hung up; its delivery (if accepted) is queued all the same
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds the token: never write it as is.
        log.debug("serve http: %s", redact(format % args))

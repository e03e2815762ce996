"""HTTP plumbing: a threaded HTTP/1.1 server with keep-alive, routing and a request log.

Stdlib only (``http.server``). Each connection gets a thread; a response is written in one
``send`` with ``Content-Length`` (and ``TCP_NODELAY``), so keep-alive clients such as httpx
never wait on Nagle's algorithm. A client that disconnects mid-request or mid-answer ends
its connection's thread quietly (no traceback on the console). The server knows nothing about ServiceTitan or Referral
Factory: it parses a request into ``Request``, hands it to ``dispatch``, and writes the
``Response`` it gets back.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY_BYTES = 10 * 1024 * 1024


class BadJson(ValueError):
    """The body is not JSON (or not UTF-8)."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lowercased
    body: bytes
    client_ip: str

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadJson(str(exc)) from None

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def query_record(self) -> dict[str, Any]:
        return {key: values[0] if len(values) == 1 else list(values) for key, values in self.query.items()}


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, bytes, or None for no body
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str | None]:
        if self.body is None:
            return b"", None
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/octet-stream")
        return (
            json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            "application/json; charset=utf-8",
        )


class HttpError(Exception):
    """Raised by a handler to answer with ``response`` at once."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class RequestRecord:
    """One request as the sandbox saw it (no headers or bodies: they carry secrets)."""

    service: str  # "auth" | "servicetitan" | "referral_factory" | "admin"
    method: str
    path: str
    query: dict
    status: int
    at: float  # time.time() when the answer was sent

    def to_dict(self) -> dict:
        return {
            "service": self.service,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "at": self.at,
        }


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def count(self, *, service: str | None = None, method: str | None = None, path_contains: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self._records
                if (service is None or r.service == service)
                and (method is None or r.method == method.upper())
                and (path_contains is None or path_contains in r.path)
            )


Handler = Callable[..., Response]


class NoRoute(Exception):
    def __init__(self, *, method_not_allowed: bool, allowed: tuple[str, ...] = ()) -> None:
        super().__init__("no route")
        self.method_not_allowed = method_not_allowed
        self.allowed = allowed


class Router:
    """``(method, path pattern) → handler``. Patterns use ``{name}`` (a path segment) and
    ``{name:int}`` (digits only: a non-numeric id matches no route, as ASP.NET's ``long``
    constraint does)."""

    _PARAM = re.compile(r"\{(\w+)(?::(int))?\}")

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        def group(match: re.Match[str]) -> str:
            name, kind = match.group(1), match.group(2)
            return f"(?P<{name}>-?\\d+)" if kind == "int" else f"(?P<{name}>[^/]+)"

        regex = "^" + self._PARAM.sub(group, re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")) + "/?$"
        self._routes.append((method.upper(), re.compile(regex), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed: list[str] = []
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            if route_method == method:
                return handler, found.groupdict()
            allowed.append(route_method)
        raise NoRoute(method_not_allowed=bool(allowed), allowed=tuple(dict.fromkeys(allowed)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stsync-sandbox"
    sys_version = ""
    server: _Server  # the server that made this handler, with its dispatch

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log records requests
        return

    def _read_body(self) -> bytes | None:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._write(Response(400, {"message": "malformed request body"}), head=False)
            self.close_connection = True
            return
        if body is None:
            self._write(Response(413, {"message": "request body too large"}), head=False)
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command.upper(),
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            client_ip=self.client_address[0],
        )
        response = self.server.dispatch(request)
        self._write(response, head=self.command == "HEAD")

    def _write(self, response: Response, *, head: bool) -> None:
        payload, content_type = response.encoded()
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Date: {self.date_time_string()}",
            f"Server: {self.server_version}",
        ]
        headers = dict(response.headers)
        if content_type and "Content-Type" not in headers:
            headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(payload))
        if self.close_connection:
            headers["Connection"] = "close"
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (b"" if head else payload)
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatch: Callable[[Request], Response]) -> None:
        self.dispatch = dispatch
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request or mid-answer is not an error of the sandbox:
        say nothing (socketserver would print a traceback). Anything else keeps the default."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class HttpServer:
    """Serves ``dispatch`` on ``host:port`` (0 = any free port) in a background thread."""

    def __init__(self, dispatch: Callable[[Request], Response], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._dispatch = dispatch
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server((self._host, self._port), self._dispatch)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() waits, name="stsync-sandbox", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None


def sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)

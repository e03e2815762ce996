"""The HTTP server in front of ``handler``: waitress, with the limits an internet endpoint needs.

Why waitress (pure Python, no dependencies of its own, long in production use): its I/O runs
on one thread over ``poll()`` and only *complete* requests reach its few request threads, so
a slow or idle connection costs a socket and a buffer, never a thread; it buffers a body
before the application sees it, caps connections, and honours ``X-Forwarded-*`` only from a
configured trusted proxy. What it lacks is added here by subclassing its documented classes
(``channel_class``, ``parser_class``, ``task_class``, ``error_task_class``):

- **The head is screened before the body is read.** As soon as a request's head is parsed,
  ``handler.screen`` decides: a wrong or missing token (401), an unknown path (404), a
  declared body over ``max_body`` (413), a delivery while stopping (503) is answered at
  once and the connection closed; not a byte of its body is buffered.
- **A deadline per connection.** A connection must have sent its whole request within
  ``request_timeout`` seconds of being accepted, however it drips (a byte every few
  seconds keeps waitress's own inactivity timer alive, not this one); it is then closed.
- **Limits.** At most ``max_connections`` open connections (the rest wait in a listen
  backlog of ``backlog``); the head at most ``max_header`` bytes; the body at most
  ``max_body`` (chunked bodies too, counted as they come).
- **Every answer is JSON and closes the connection**, waitress's own errors included.
- **Trusted proxy.** With ``trusted_proxy`` (an IP address, or ``*``), that peer's
  ``X-Forwarded-For/-Proto/-Host/-Port`` give the client's address (what the log shows);
  from anyone else those headers are dropped.
- **Bounded stop.** ``stop(grace)`` stops listening, closes every connection without a
  request being answered at once (idle, slow, half-sent), gives the requests being answered
  up to ``grace`` seconds, then closes the rest and ends the request threads.

The access log (DEBUG) never shows the token: ``handler.loggable_target``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.proxy_headers import MalformedProxyHeader, parse_proxy_headers
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import Error

from stsync.errors import UsageError
from stsync.logs import get_logger
from stsync.webhooks.handler import Endpoint, Request, Response, loggable_target, rejection

if sys.platform != "win32":
    import resource

log = get_logger(__name__)
# waitress's own messages (connection limit reached, a socket error) go to stsync's log,
# redacted like every other line; its per-task "queue depth" warnings are flood noise.
_waitress_log = get_logger("webhooks.waitress")
_queue_log = get_logger("webhooks.waitress.queue")
_queue_log.setLevel(logging.ERROR)

# Descriptors kept free of connections: the ledger, the log, locks, the API clients' sockets.
RESERVED_DESCRIPTORS = 64
PROXY_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"})


@dataclass(frozen=True)
class ServerLimits:
    """What one ``serve`` allows; the defaults suit a Referral Factory endpoint on the internet."""

    max_connections: int = 1000
    backlog: int = 1024
    threads: int = 4  # request threads: they only run complete requests (a ledger write each)
    max_body: int = 1_000_000
    max_header: int = 32 * 1024
    request_timeout: float = 15.0  # from accept to the last byte of the request
    stop_grace: float = 2.0  # for requests being answered when stop() is called
    trusted_proxy: str | None = None


class HttpServer:
    """``bind()`` → ``serve()`` → ``stop()``; ``address`` once bound."""

    def __init__(self, endpoint: Endpoint, *, host: str, port: int, limits: ServerLimits = ServerLimits()) -> None:
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.limits = limits
        self._server: _Server | None = None
        self._map: dict[int, Any] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = threading.Event()
        # Held while the loop closes its descriptors: nobody pulls the trigger of a closed
        # loop (its pipe's number may already belong to something else).
        self.trigger_lock = threading.Lock()
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address bound (the actual port when 0 was asked for)."""
        assert self._address is not None, "bind() first"
        return self._address

    @property
    def open_connections(self) -> int:
        server = self._server
        return len(server.active_channels) if server is not None else 0

    def bind(self) -> None:
        """Take the port and listen (``UsageError`` when it cannot); nothing is read before ``serve()``."""
        limits = self.limits
        max_connections = _descriptors_for(limits.max_connections)
        dispatcher = _Dispatcher()
        try:
            adjustments = Adjustments(
                host=self.host,
                port=self.port,
                ipv6=":" in self.host,
                threads=limits.threads,
                connection_limit=max_connections,
                backlog=limits.backlog,
                max_request_header_size=limits.max_header,
                # waitress refuses a body of exactly its limit; ours is "at most max_body"
                max_request_body_size=limits.max_body + 1,
                channel_timeout=max(1, int(limits.request_timeout)),
                cleanup_interval=1,
                asyncore_use_poll=True,  # select() stops at 1,024 descriptors
                asyncore_loop_timeout=1,
                clear_untrusted_proxy_headers=True,
                log_socket_errors=False,  # a sender hanging up is not stsync's error
                ident="stsync-serve",
                **(
                    {"trusted_proxy": limits.trusted_proxy, "trusted_proxy_headers": set(PROXY_HEADERS), "trusted_proxy_count": 1}
                    if limits.trusted_proxy
                    else {}
                ),
            )
            server = _Server(
                self._wsgi, map=self._map, _start=False, dispatcher=dispatcher, adj=adjustments, sockinfo=adjustments.listen[0]
            )
            server.http = self
            server.accept_connections()
        except (OSError, ValueError) as exc:
            wasyncore.close_all(self._map, ignore_all=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(
                f"cannot listen on {self.host}:{self.port}: {reason}",
                hint="choose another --port (or stop what is using it)",
            ) from None
        dispatcher.set_thread_count(limits.threads)
        self._server = server
        host, port = server.socket.getsockname()[:2]
        self._address = (str(host), int(port))

    def serve(self) -> None:
        """Answer requests on a thread of its own, until ``stop()``."""
        assert self._server is not None, "bind() first"
        self._thread = threading.Thread(target=self._loop, name="stsync-webhook-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; close idle and slow connections at once and the rest after at most
        ``limits.stop_grace`` seconds; end the request threads. Safe to call twice."""
        server = self._server
        if server is None:
            return
        if self._thread is None:  # bound, never served
            self._server = None
            server.task_dispatcher.shutdown(timeout=1)
            with self.trigger_lock:
                wasyncore.close_all(self._map, ignore_all=True)
            return
        self._stop.set()
        server.pull_trigger()
        self._stopped.wait(self.limits.stop_grace + 5)
        self._thread.join(timeout=1)
        self._thread = None
        self._server = None

    # -- the I/O thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        server = self._server
        assert server is not None
        try:
            while not self._stop.is_set():
                try:
                    wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
                except Exception:  # one bad turn must not end serving
                    log.exception("serve: error in the HTTP loop; going on")
                    time.sleep(0.05)
            self._drain(server)
        except Exception:  # the loop must end in a closed server, whatever happened
            log.exception("serve: the HTTP loop failed")
        finally:
            # Request threads first: one finishing a request pulls the trigger, whose pipe must
            # still be open then (a closed descriptor's number may already be someone else's).
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=max(0.5, self.limits.stop_grace))
            with self.trigger_lock:
                wasyncore.close_all(self._map, ignore_all=True)
            self._stopped.set()

    def _drain(self, server: _Server) -> None:
        """Stop listening; let the requests being answered finish within the grace."""
        server.accepting = False
        server.del_channel()
        server.socket.close()
        deadline = time.monotonic() + self.limits.stop_grace
        while True:
            busy = False
            for channel in list(server.active_channels.values()):
                if channel.requests or channel.total_outbufs_len:
                    busy = True
                else:
                    channel.handle_close()
            if not busy or time.monotonic() >= deadline:
                return
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)

    # -- requests ---------------------------------------------------------------------------------
    def screen_head(self, parser: _Parser, peer: tuple[str, int]) -> _Answered | None:
        """``endpoint.screen`` for a parsed head (I/O thread: it only decides)."""
        headers = _header_pairs(parser.headers)
        head = Request.build(parser.command, parser.request_uri, headers, client=self._client(peer, parser.headers))
        try:
            answer = self.endpoint.screen(head)
        except Exception:
            log.exception("serve: unexpected error screening a request")
            answer = rejection(500, "internal error; details are in stsync's log")
        return _Answered(answer, head) if answer is not None else None

    def _client(self, peer: tuple[str, int], headers: dict[str, str]) -> str:
        """The sender's address as waitress's proxy middleware would set REMOTE_ADDR."""
        trusted = self.limits.trusted_proxy
        if not trusted or (trusted != "*" and peer[0] != trusted):
            return peer[0]
        environ = {"REMOTE_ADDR": peer[0], "REMOTE_PORT": str(peer[1]), "wsgi.url_scheme": "http", "SERVER_PORT": "0",
                   **{f"HTTP_{name}": value for name, value in headers.items()}}
        try:
            parse_proxy_headers(environ, trusted_proxy_count=1, trusted_proxy_headers=set(PROXY_HEADERS), logger=_waitress_log)
        except MalformedProxyHeader:
            return peer[0]
        return str(environ["REMOTE_ADDR"])

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        headers = _header_pairs({k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")})
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers.append((name.replace("_", "-"), environ[name]))
        request = Request.build(environ["REQUEST_METHOD"], environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/"),
                                headers, body, client=environ.get("REMOTE_ADDR"))
        response = self.endpoint.handle(request)
        _access_log(request, response.status)
        data = response.encoded()
        headers_out = [("Content-Type", response.content_type), ("Content-Length", str(len(data)))]
        start_response(_status_line(response.status), headers_out)
        return [data]


def _descriptors_for(connections: int) -> int:
    """Raise the soft limit on open files so ``connections`` sockets fit beside the ledger, the
    log and the API clients; → the connection cap that fits (lower, with a warning, when the
    hard limit is too low: at the limit, accept() would fail in a busy loop)."""
    if sys.platform == "win32":  # no such limit to raise
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitting = max(1, soft - RESERVED_DESCRIPTORS)
        log.warning("serve: open files are limited to %d; holding at most %d connections, not %d", soft, fitting, connections)
        return fitting
    return connections


def _header_pairs(waitress_headers: dict[str, str]) -> list[tuple[str, str]]:
    """waitress's ``CONTENT_TYPE``-style names back to ``Content-Type`` pairs."""
    return [(name.replace("_", "-"), value) for name, value in waitress_headers.items()]


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _access_log(request: Request, status: int) -> None:
    log.debug("serve http: %s %s %s %s", request.client or "-", request.method, loggable_target(request.target), status)


# -- waitress, extended ---------------------------------------------------------------------------
class _Answered(Error):
    """A request answered from its head (``head``: then the endpoint hears of it on a request
    thread) or one of waitress's own errors, as JSON."""

    def __init__(self, response: Response, head: Request | None = None) -> None:
        super().__init__(response.body.get("error", ""))
        self.response = response
        self.head = head
        self.code = response.status

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        return _status_line(self.response.status), [("Content-Type", self.response.content_type)], self.response.encoded()


class _Parser(HTTPRequestParser):
    """Screens the head as soon as it is parsed; a refused request's body is never read."""

    def __init__(self, adj: Adjustments, channel: _Channel) -> None:
        super().__init__(adj)
        self.channel = channel

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        answer = self.channel.server.http.screen_head(self, self.channel.addr)
        if answer is not None:
            self.error = answer
            # No body: the request is complete with its head, answered, and the connection closed.
            self.body_rcv = None
            self.content_length = 0
            self.chunked = False
            self.expect_continue = False

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.completed and self.error is not None:
            return len(data)  # the connection closes after the answer: whatever follows is dropped
        return consumed


class _Task(WSGITask):
    logger = _waitress_log

    def execute(self) -> None:
        self.set_close_on_finish()  # one request per connection: slots free up at once
        super().execute()


class _ErrorTask(ErrorTask):
    logger = _waitress_log

    def execute(self) -> None:
        error = self.request.error
        if not isinstance(error, _Answered):
            error = self.request.error = _Answered(rejection(error.code, f"{error.reason}: {error.body}"))
        if error.head is not None:
            try:
                self.channel.server.http.endpoint.refused(error.head, error.response)
            except Exception:
                log.exception("serve: could not record a refused request")
            _access_log(error.head, error.response.status)
        else:
            log.debug("serve http: %s - - %s", self.channel.addr[0], error.response.status)
        super().execute()


class _Channel(HTTPChannel):
    task_class = _Task
    error_task_class = _ErrorTask
    logger = _waitress_log
    server: _Server

    def __init__(self, server: _Server, sock: Any, addr: Any, adj: Adjustments, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.deadline = time.monotonic() + server.http.limits.request_timeout

    def parser_class(self, adj: Adjustments) -> _Parser:
        return _Parser(adj, self)


class _Dispatcher(ThreadedTaskDispatcher):
    logger = _waitress_log
    queue_logger = _queue_log

    def start_new_thread(self, target: Callable[..., Any], thread_no: int) -> None:
        thread = threading.Thread(target=target, name=f"stsync-webhook-request-{thread_no}", args=(thread_no,), daemon=True)
        thread.start()


class _Server(TcpWSGIServer):
    channel_class = _Channel
    logger = _waitress_log
    http: HttpServer

    def pull_trigger(self) -> None:
        """Wake the loop (stop(), a request thread done) — unless it has closed already."""
        with self.http.trigger_lock:
            if not self.trigger._closed:
                super().pull_trigger()

    def handle_error(self) -> None:
        # wasyncore's default closes the listening socket (and waitress's, the trigger with it):
        # a server that stops listening on one odd error is worse than a logged error.
        log.exception("serve: error accepting a connection")

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # waitress: inactive for channel_timeout
        monotonic = time.monotonic()
        for channel in list(self.active_channels.values()):
            if not channel.requests and monotonic > channel.deadline:
                channel.will_close = True

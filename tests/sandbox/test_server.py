"""The HTTP plumbing: a client that hangs up mid-request or mid-answer leaves no traceback."""

from __future__ import annotations

import socket
import struct
import time

import pytest


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


HALF_REQUESTS = [
    b"GET /crm/v2/ten",  # half a request line
    b"GET /crm/v2/tenant/1/customers HTTP/1.1\r\nHost: x\r\n",  # headers not finished
    b'POST /api/v2/users HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"a":',  # half a body
    b"POST /api/v2/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",  # half a chunk
]


@pytest.mark.parametrize("request_bytes", HALF_REQUESTS)
@pytest.mark.parametrize("hang_up", [reset, socket.socket.close])
def test_a_client_hanging_up_mid_request_prints_no_traceback(make_sandbox, capfd, request_bytes, hang_up):
    sb = make_sandbox()
    host, port = sb.base_url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(request_bytes)
    time.sleep(0.05)
    hang_up(client)
    time.sleep(0.2)
    sb.stop()  # joins the server thread: every connection thread has had its chance to complain
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out and "Exception occurred" not in err + out
    assert not sb.internal_errors


@pytest.mark.parametrize("path", [b"/_sandbox/state", b"/crm/v2/tenant/1/customers"])
def test_a_client_hanging_up_mid_answer_prints_no_traceback(make_sandbox, capfd, path):
    sb = make_sandbox(customers=400, latency=0.2)  # a long answer, and time to hang up before it
    host, port = sb.base_url.removeprefix("http://").split(":")
    for read_first in (False, True):
        client = socket.create_connection((host, int(port)))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        if read_first:
            assert client.recv(16).startswith(b"HTTP/1.1")
        reset(client)
    time.sleep(0.5)
    sb.stop()
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out and "Exception occurred" not in err + out
    assert not sb.internal_errors

"""Asking llama.cpp RPC servers for their memory: the wire format against a real
ggml-rpc-server on 127.0.0.1, and every failure as one line (a fake server in a thread)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from kvgui.core.devices.hardware import rpc

GiB = 1 << 30


def test_endpoints_are_read_as_llama_cpp_reads_them() -> None:
    assert rpc.parse_endpoint(" 192.168.1.20:50052 ") == ("192.168.1.20", 50052)
    assert rpc.split_endpoints("a:1, b:2,") == ("a:1", "b:2")
    assert rpc.split_endpoints(["a:1,b:2", "c:3"]) == ("a:1", "b:2", "c:3")
    for bad in ("host", "host:", ":50052", "host:0", "host:65536", "[::1]:50052", "a b:1",
                "host:12x"):
        with pytest.raises(ValueError, match="RPC server"):
            rpc.parse_endpoint(bad)


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A one-connection TCP server on 127.0.0.1 that runs ``handler`` on the connection."""
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Callable[[socket.socket], None]) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        servers.append(srv)

        def run() -> None:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                handler(conn)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        return f"127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()
    for t in threads:
        t.join(5)


def _read_request(conn: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 9:
        chunk = conn.recv(9 - len(head))
        if not chunk:
            raise OSError("closed")
        head += chunk
    cmd, size = struct.unpack("<BQ", head)
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return cmd, body


def _reply(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(struct.pack("<Q", len(payload)) + payload)


def _serve(version: tuple[int, int, int], devices: list[tuple[int, int]]
           ) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        cmd, body = _read_request(conn)
        assert cmd == rpc.CMD_HELLO and body == bytes(rpc.CONN_CAPS_SIZE)
        _reply(conn, bytes([*version, 0]) + bytes(rpc.CONN_CAPS_SIZE))
        while True:
            cmd, body = _read_request(conn)
            if cmd == rpc.CMD_DEVICE_COUNT:
                _reply(conn, struct.pack("<I", len(devices)))
            elif cmd == rpc.CMD_GET_DEVICE_MEMORY:
                (i,) = struct.unpack("<I", body)
                _reply(conn, struct.pack("<QQ", *devices[i]))
            elif cmd == rpc.CMD_GET_ALIGNMENT:
                _reply(conn, struct.pack("<Q", 128))
            else:
                return

    return handler


def test_a_server_with_two_devices(fake_server) -> None:
    ep = fake_server(_serve((7, 0, 0), [(20 * GiB, 24 * GiB), (7 * GiB, 8 * GiB)]))
    info = rpc.query_server(ep)
    assert info.version == (7, 0, 0)
    assert [(d.index, d.free, d.total, d.alignment) for d in info.devices] == [
        (0, 20 * GiB, 24 * GiB, 128), (1, 7 * GiB, 8 * GiB, 128)]


def test_another_protocol_version_is_refused_as_llama_cpp_refuses_it(fake_server) -> None:
    ep = fake_server(_serve((8, 0, 0), [(GiB, GiB)]))
    with pytest.raises(rpc.RpcQueryError, match=r"speaks protocol 8\.0\.0.*same llama\.cpp"):
        rpc.query_server(ep)
    ep = fake_server(_serve((7, 1, 0), [(GiB, GiB)]))  # a newer minor: llama.cpp refuses too
    with pytest.raises(rpc.RpcQueryError, match=r"7\.1\.0"):
        rpc.query_server(ep)


def test_a_silent_server_times_out(fake_server) -> None:
    ep = fake_server(lambda conn: conn.recv(1 << 16) and threading.Event().wait(1))
    with pytest.raises(rpc.RpcQueryError, match=r"no reply within 0\.3 s"):
        rpc.query_server(ep, timeout=0.3)


def test_not_an_rpc_server(fake_server) -> None:
    ep = fake_server(lambda conn: conn.recv(64) and conn.sendall(b"HTTP/1.1 400 Bad\r\n\r\n"))
    with pytest.raises(rpc.RpcQueryError, match=r"unexpected reply|closed the connection"):
        rpc.query_server(ep)


def test_nobody_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(rpc.RpcQueryError, match=rf"127\.0\.0\.1:{port}: cannot connect.*"
                                                 rf"ggml-rpc-server -H 0\.0\.0\.0 -p {port}"):
        rpc.query_server(f"127.0.0.1:{port}")


@pytest.mark.llama
def test_a_real_ggml_rpc_server(llama_tools) -> None:
    """What llama.cpp's own client reads: the size the server's device reports."""
    from kvgui.testing.rpc import RpcDevices

    with RpcDevices(llama_tools, [12 * GiB, 8 * GiB]) as devs:
        infos = rpc.query_servers(devs.endpoints)
    assert [(i.version[0], len(i.devices)) for i in infos] == [(7, 1), (7, 1)]
    assert [i.devices[0].total for i in infos] == [12 * GiB, 8 * GiB]
    assert all(0 < i.devices[0].free <= i.devices[0].total for i in infos)
    assert all(i.devices[0].alignment == 32 for i in infos)  # the CPU backend's

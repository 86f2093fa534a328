"""llama.cpp's RPC servers (``ggml-rpc-server``) as devices: how much memory each one offers.

A machine that outgrows one computer adds others with ``--rpc HOST:PORT,…``: llama.cpp puts
every device of every server *before* its local GPUs (src/llama.cpp: "add RPC servers at the
front of the list to minimize network transfers") and names them RPC0, RPC1, … in that order.
To plan for them kvgui asks each server what llama.cpp itself asks (ggml-rpc.cpp, protocol
7.0 of the bundled llama.cpp), with a timeout, over a plain TCP socket:

    HELLO              | 14 | u64 24 | 24 zero bytes (conn caps: no RDMA) |
                       -> | u64 28 | major u8 | minor u8 | patch u8 | pad u8 | 24 caps bytes |
    DEVICE_COUNT       | 15 | u64 0 |                     -> | u64 4 | u32 count |
    GET_DEVICE_MEMORY  | 11 | u64 4 | u32 device |        -> | u64 16 | u64 free | u64 total |
    GET_ALIGNMENT      |  1 | u64 4 | u32 device |        -> | u64 8 | u64 alignment |

(all little-endian; a request is the command byte, its size and its bytes; a reply is its
size and its bytes). llama.cpp's client refuses a server whose major version differs or whose
minor version is newer than its own; kvgui says so the same way. The server's answer for its
CPU device is that machine's RAM; for a GPU, that GPU's free and total memory.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# ggml/include/ggml-rpc.h of the bundled llama.cpp
RPC_PROTO_MAJOR = 7
RPC_PROTO_MINOR = 0
CONN_CAPS_SIZE = 24  # ggml-rpc/transport.h RPC_CONN_CAPS_SIZE

CMD_GET_ALIGNMENT = 1
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15

DEFAULT_TIMEOUT = 3.0  # seconds per connection and per reply: a LAN answers in milliseconds
MAX_DEVICES = 16  # ggml-rpc-server takes a device list; more than this is not a real server

_ENDPOINT = re.compile(r"^(?P<host>[^\s:,=\[\]]+):(?P<port>\d{1,5})$")


class RpcQueryError(RuntimeError):
    """A server could not be asked (refused, timed out, not an RPC server, another protocol):
    one line that names the endpoint and what to do."""


@dataclass(frozen=True)
class RpcDeviceMemory:
    """One device of a server, as llama.cpp will see it."""

    endpoint: str
    index: int  # the device's number on its server
    free: int
    total: int
    alignment: int = 0  # its buffer type's alignment (0: not asked)


@dataclass(frozen=True)
class RpcServerInfo:
    endpoint: str
    version: tuple[int, int, int]
    devices: tuple[RpcDeviceMemory, ...]


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as llama.cpp's parse_endpoint reads it (the first colon splits, so an
    IPv6 literal cannot be given: llama.cpp could not connect to it either)."""
    value = text.strip()
    m = _ENDPOINT.match(value)
    if not m:
        raise ValueError(f"RPC server {text!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"RPC server {text!r}: port {port} is not 1-65535")
    return m.group("host"), port


def split_endpoints(text: str | Sequence[str]) -> tuple[str, ...]:
    """llama.cpp's ``--rpc`` value (comma-separated, or several values): each checked."""
    parts = text.split(",") if isinstance(text, str) else [
        p for item in text for p in item.split(",")]
    out = []
    for p in parts:
        if not p.strip():
            continue
        host, port = parse_endpoint(p)
        out.append(f"{host}:{port}")
    return tuple(out)


class _Conn:
    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        host, port = parse_endpoint(endpoint)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise RpcQueryError(f"RPC server {endpoint}: no answer within {timeout:g} s "
                                "(is ggml-rpc-server running there, and the port open?)"
                                ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise RpcQueryError(f"RPC server {endpoint}: cannot connect ({reason}); start it "
                                f"with: ggml-rpc-server -H 0.0.0.0 -p {port}") from None
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                raise RpcQueryError(f"RPC server {self.endpoint}: no reply within "
                                    f"{self.sock.gettimeout():g} s") from None
            except OSError as exc:
                raise RpcQueryError(f"RPC server {self.endpoint}: connection lost "
                                    f"({exc.strerror or type(exc).__name__})") from None
            if not chunk:
                raise RpcQueryError(f"RPC server {self.endpoint} closed the connection: not a "
                                    "ggml-rpc-server, or one of another protocol version")
            buf += chunk
        return bytes(buf)

    def call(self, cmd: int, payload: bytes, reply_size: int) -> bytes:
        try:
            self.sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
        except OSError as exc:
            raise RpcQueryError(f"RPC server {self.endpoint}: cannot send "
                                f"({exc.strerror or type(exc).__name__})") from None
        (size,) = struct.unpack("<Q", self._recv(8))
        if size != reply_size:
            raise RpcQueryError(f"RPC server {self.endpoint}: unexpected reply ({size} bytes, "
                                f"not {reply_size}): not a ggml-rpc-server of protocol "
                                f"{RPC_PROTO_MAJOR}.x")
        return self._recv(size)


def query_server(endpoint: str, timeout: float = DEFAULT_TIMEOUT) -> RpcServerInfo:
    """Ask one server for its devices' free and total memory (and alignment)."""
    conn = _Conn(endpoint, timeout)
    try:
        hello = conn.call(CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
        version = (hello[0], hello[1], hello[2])
        if version[0] != RPC_PROTO_MAJOR or version[1] > RPC_PROTO_MINOR:
            raise RpcQueryError(
                f"RPC server {endpoint} speaks protocol {'.'.join(map(str, version))}; the "
                f"bundled llama.cpp speaks {RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR} and would refuse "
                "it: run a ggml-rpc-server of the same llama.cpp version")
        (count,) = struct.unpack("<I", conn.call(CMD_DEVICE_COUNT, b"", 4))
        if not 0 < count <= MAX_DEVICES:
            raise RpcQueryError(f"RPC server {endpoint} reports {count} devices")
        devices = []
        for i in range(count):
            free, total = struct.unpack(
                "<QQ", conn.call(CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
            (align,) = struct.unpack(
                "<Q", conn.call(CMD_GET_ALIGNMENT, struct.pack("<I", i), 8))
            devices.append(RpcDeviceMemory(endpoint, i, min(free, total), total, align))
        return RpcServerInfo(endpoint, version, tuple(devices))
    finally:
        conn.close()


def query_servers(endpoints: Sequence[str], timeout: float = DEFAULT_TIMEOUT
                  ) -> tuple[RpcServerInfo, ...]:
    """Every server, in the order given (llama.cpp's device order)."""
    return tuple(query_server(e, timeout) for e in endpoints)

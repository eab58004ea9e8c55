"""A small TCP fault proxy for tests.

It forwards ``127.0.0.1:<port>`` to ``target`` and can, at any moment:

- ``reset()``   reset every open connection (RST both ways); new connections are accepted;
- ``cut()``     reset every connection and refuse new ones until ``restore()``;
- ``stall()``   blackhole: connections stay open, nothing crosses in either direction (not even
                a close) until ``restore()``; new connections are accepted and hang the same way;
- ``slow(s)``   deliver every chunk ``s`` seconds after it was received (latency, in order);
- ``restore()`` back to plain forwarding; what a stall held back is delivered then.

Each direction of a connection has a reader (socket → queue, stamped with its due time) and a
writer (queue → socket), so latency delays data without capping throughput.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator

_EOF = b""


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.upstream_port = int(upstream.getsockname()[1])
        self.closed = threading.Event()
        self._resetting = False

    def reset(self) -> None:
        # Flagged first: a writer that wakes to the end of its stream must not send a FIN ahead
        # of the RST.
        self._resetting = True
        self.closed.set()
        _reset(self.client, self.upstream)

    def shutdown(self) -> None:
        if self._resetting:
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """See the module docstring. ``accepted`` counts connections forwarded so far."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self.delayed_chunks = 0
        self._accepting = threading.Event()
        self._accepting.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._latency_s = 0.0
        self._closing = False
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    # -- faults ----------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            doomed, self._links = self._links, set()
        for link in doomed:
            link.reset()

    def cut(self) -> None:
        self._accepting.clear()
        self.reset()

    def stall(self) -> None:
        self._flowing.clear()

    def slow(self, latency_s: float) -> None:
        self._latency_s = latency_s

    def restore(self) -> None:
        self._latency_s = 0.0
        self._accepting.set()
        self._flowing.set()

    def upstream_ports(self) -> set[int]:
        """Local ports of the open connections to the target (the broker sees them as peers)."""
        with self._lock:
            return {link.upstream_port for link in self._links if not link.closed.is_set()}

    def close(self) -> None:
        self._closing = True
        self.restore()
        self.cut()
        # Closing a listening socket does not wake a thread blocked in accept() on Linux;
        # shutting it down does (accept fails at once).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    # -- forwarding ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._accepting.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
                threading.Thread(target=self._read, args=(source, chunks), daemon=True).start()
                threading.Thread(target=self._write, args=(link, sink, chunks), daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                chunks.put((time.monotonic() + self._latency_s, data))
        chunks.put((time.monotonic() + self._latency_s, _EOF))

    def _write(
        self, link: _Link, sink: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]
    ) -> None:
        try:
            while True:
                due, data = chunks.get()
                # A stall holds everything back, the end of the stream included.
                while not self._flowing.wait(0.1):
                    if link.closed.is_set() or self._closing:
                        return
                wait = due - time.monotonic()
                if wait > 0:
                    self.delayed_chunks += 1
                    time.sleep(wait)
                if data == _EOF or link.closed.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._links.discard(link)
        link.shutdown()


_ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # l_onoff=1, l_linger=0: close() sends an RST


def _reset(*sockets: socket.socket) -> None:
    """Abort ``sockets`` with an RST, now, even while a reader is blocked in ``recv()``.

    The kernel releases a socket (and sends the RST) only when no thread still uses it, so a
    blocked reader must be woken first: ``SHUT_RD`` makes its ``recv()`` return and sends nothing
    (``SHUT_WR`` would send a FIN ahead of the RST).
    """
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def tcp_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()

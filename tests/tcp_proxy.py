"""A TCP proxy on 127.0.0.1 between a client and a loopback server, that can be switched off.

Used to take the S3 server away from the engine mid-run: ``down()`` resets every open
connection (RST, as a dropped network path looks to the client) and from then on resets each
new one as soon as it is accepted; ``up()`` forwards again. ``down_after_requests(n)`` goes
down by itself once n HTTP requests have started (counted on request lines from the client).
Only loopback addresses, bounded by the sockets' lifetime; stopped by ``close()``.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import threading

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|PUT|POST|HEAD|DELETE) /[^ ]* HTTP/1\.[01]\r\n")


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        if not target_host.startswith("127.") and target_host != "localhost":
            raise ValueError("the proxy only targets loopback addresses")
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._up = True
        self._closed = False
        self._down_after: int | None = None
        self.requests = 0  # HTTP requests forwarded
        self.refused = 0  # connections reset while down
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._up

    def down(self) -> None:
        with self._lock:
            self._up = False
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def up(self) -> None:
        with self._lock:
            self._up = True
            self._down_after = None

    def down_after_requests(self, n: int) -> None:
        """Forward n more HTTP requests, then go down (the (n+1)th request's connection is reset)."""
        with self._lock:
            self._down_after = self.requests + n

    def close(self) -> None:
        self._closed = True
        self.down()
        try:
            self._listener.close()
        except OSError:
            pass
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ internals

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while self._up and not self._closed:
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        starts = len(_REQUEST_LINE.findall(data))
                        if starts:
                            with self._lock:
                                if self._down_after is not None and self.requests + starts > self._down_after:
                                    self._up = False
                                else:
                                    self.requests += starts
                            if not self._up:
                                self.refused += 1
                                self.down()
                                return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # reset by down() meanwhile
            return
        finally:
            with self._lock:
                if (client, server) in self._pairs:
                    self._pairs.remove((client, server))
            for s in (client, server):
                try:
                    s.close()
                except OSError:
                    pass

"""Real loopback HTTP servers that misbehave, for the deadline tests.

``HostileServer(mode)`` accepts connections on 127.0.0.1 and, after reading the request head:

* ``silent``: never answers (keeps the connection open);
* ``half-close``: shuts its sending side (the client sees EOF, no response) and keeps reading;
* ``drip``: sends a 200 head with ``Content-Length: 100000`` and then one byte every 0.2 s.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Literal

Mode = Literal["silent", "half-close", "drip"]


class HostileServer:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        head = b""
        while b"\r\n\r\n" not in head and not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            head += chunk
        self.requests += 1
        try:
            if self.mode == "half-close":
                conn.shutdown(socket.SHUT_WR)
            elif self.mode == "drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n{")
                while not self._stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(0.2)
            while not self._stop.is_set():  # silent / after the half-close: hold the connection
                time.sleep(0.05)
        except OSError:
            return

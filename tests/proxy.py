"""A loopback TCP proxy that can lose a reply: the fault of a connection that drops after the server ran a command
but before its answer reached the client (a network partition, a NAT timeout, a socket timeout on a busy host).

The client cannot tell that from a command that never arrived; whatever it retries must not do the work twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

# How long the server's side must stay quiet before a reply being dropped counts as whole: the server has then
# answered everything the request held (a MULTI of many commands may be answered in several writes).
QUIET_S = 0.3


class ReplyDroppingProxy:
    """Forwards every connection on `port` to `upstream_port` on 127.0.0.1, both ways, until `drop_reply_to` is
    armed: the next request containing its marker is delivered to the server, the server's whole answer is read
    and thrown away, and the client's connection is closed, so the client sees a lost connection after the server
    did the work. `dropped` counts the replies thrown away."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._marker = b""
        self._armed = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        """A redis:// URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_reply_to(self, marker: bytes, times: int = 1) -> None:
        """Lose the reply to the next `times` requests whose bytes contain `marker` (e.g. b"EXEC")."""
        with self._lock:
            self._marker, self._armed = marker, times

    def _take(self, seen: bytes) -> bool:
        with self._lock:
            if self._armed and self._marker and self._marker in seen:
                self._armed -= 1
                return True
            return False

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, server]
            dropping = threading.Event()
            threading.Thread(target=self._requests, args=(client, server, dropping), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, dropping), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, dropping: threading.Event) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                # The marker may straddle two reads: look at the end of the previous one too.
                if self._take(tail + chunk):
                    dropping.set()  # before the request goes on, so its reply is already the one dropped
                server.sendall(chunk)
                tail = chunk[-64:]
        _close(client, server)

    def _replies(self, server: socket.socket, client: socket.socket, dropping: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                if not dropping.is_set():
                    client.sendall(chunk)
                    continue
                server.settimeout(QUIET_S)  # the rest of the answer, until the server has said everything
                with contextlib.suppress(TimeoutError):
                    while server.recv(65536):
                        pass
                self.dropped += 1
                break
        _close(client, server)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        for sock in self._sockets:
            _close(sock)

    def __enter__(self) -> ReplyDroppingProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def wait_for_drop(proxy: ReplyDroppingProxy, timeout_s: float = 30.0) -> None:
    """Block until the proxy has dropped a reply; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not proxy.dropped:
        assert time.monotonic() < deadline, "no reply was dropped: the marked request never came"
        time.sleep(0.02)

"""A TCP proxy on 127.0.0.1 between psycopg and the PostgreSQL server that loses the answer to a COMMIT for
real: armed with a needle (a statement's text), it watches the connection that sends it until the server
ends that statement's transaction (a ReadyForQuery saying "idle": the COMMIT of a transaction, or the
statement itself in autocommit), swallows that answer and cuts both connections. The server has
committed; the client sees a broken connection and cannot tell whether it did.

Frozen (`freeze()`), it models a peer that stops answering while the kernel keeps the connection open (the
server's host lost, a cable pulled, a NAT that dropped the connection's state, a server frozen): the bytes
of either side stay where they are, nothing is relayed and nothing is closed, so a client waits for an
answer that never comes. New connections are accepted and held the same way. `freeze_at(needle)` freezes
when a message holding `needle` comes from the client (held too): the server goes silent mid-conversation.
`thaw()` relays again (what was held first).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading


class LossyProxy:
    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._needle: bytes | None = None
        self._freeze_needle: bytes | None = None
        self._thawed = threading.Event()
        self._thawed.set()
        self.cut = 0  # answers lost so far
        self._stopped = False
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="lossy-proxy", daemon=True)]
        self._threads[0].start()

    def dsn(self, dsn: str) -> str:
        """`dsn` (a postgresql:// URL on the server's port) through this proxy."""
        return dsn.replace(f":{self.server[1]}/", f":{self.port}/")

    def lose_answer_to(self, needle: bytes) -> None:
        """The next message holding `needle` (on any connection) is carried out, its answer lost."""
        with self._lock:
            self._needle = needle

    def freeze(self) -> None:
        """From now on nothing is relayed, on any connection, and none is closed (see the module's docstring)."""
        self._thawed.clear()

    def freeze_at(self, needle: bytes) -> None:
        """Freeze when the next message holding `needle` (on any connection) comes, before it is relayed."""
        with self._lock:
            self._freeze_needle = needle

    def thaw(self) -> None:
        self._thawed.set()

    def _take_needle(self, chunk: bytes) -> bool:
        with self._lock:
            if self._needle is not None and self._needle in chunk:
                self._needle = None
                return True
            return False

    def _freezes_at(self, chunk: bytes) -> bool:
        with self._lock:
            if self._freeze_needle is not None and self._freeze_needle in chunk:
                self._freeze_needle = None
                self._thawed.clear()
                return True
            return False

    def close(self) -> None:
        self._stopped = True
        self._thawed.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.server)
            self._sockets += [client, server]
            pump = threading.Thread(target=self._pump, args=(client, server), name="lossy-proxy-pump", daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        cutting = False
        answer = b""  # the server's messages since the armed message (from a message boundary)
        try:
            while True:
                self._thawed.wait()
                if self._stopped:
                    return
                readable, _, _ = select.select([client, server], [], [], 0.05)  # a freeze takes effect at once
                if not self._thawed.is_set():
                    continue  # frozen meanwhile: what is readable stays unread
                if client in readable:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    if self._freezes_at(chunk):  # held until thawed
                        self._thawed.wait()
                        if self._stopped:
                            return
                    if not cutting and self._take_needle(chunk):
                        cutting = True  # psycopg sent it and waits: the server's next bytes answer it
                        answer = b""
                    server.sendall(chunk)
                if server in readable:
                    chunk = server.recv(65536)
                    if not chunk:
                        return
                    if not cutting:
                        client.sendall(chunk)
                        continue
                    answer += chunk
                    status, end = _ready_for_query(answer)
                    if status == b"I":  # the transaction ended (committed): its answer never arrives
                        with self._lock:
                            self.cut += 1
                        return
                    if status is not None:  # an answer inside the transaction: passed on
                        client.sendall(answer[:end])
                        answer = answer[end:]
        except OSError:
            return
        finally:
            client.close()
            server.close()


def _ready_for_query(data: bytes) -> tuple[bytes | None, int]:
    """The status of the first ReadyForQuery ('Z') in `data` (whole backend messages from a boundary on)
    and where it ends; (None, 0) while none has come."""
    at = 0
    while at + 5 <= len(data):
        kind, length = data[at:at + 1], struct.unpack("!i", data[at + 1:at + 5])[0]
        if at + 1 + length > len(data):
            break
        if kind == b"Z":
            return data[at + 5:at + 6], at + 1 + length
        at += 1 + length
    return None, 0

"""The engine's socket as `params.docker_socket` services get it: every byte forwarded, the image pulls noted.

A test suite that starts its own containers (Testcontainers) asks the engine to pull what is not
there; with no registry reachable the pull fails inside the test, in the words of whichever client
library it uses, often without the image's name. Forwarding the socket through here costs a copy
and lets the put say which images were asked for and never arrived: the fix is to pass them in
`params.images`.

The forwarding is byte for byte in both directions, half-closes included (`docker attach` and
`exec` signal the end of stdin that way), so hijacked and streamed calls work as on the real socket.
Only the request lines of what services send are read, for `POST …/images/create?fromImage=…`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qs

from compose_env.errors import RuntimeFailure

CHUNK = 64 * 1024
#: A pull request's line, wherever it falls in a connection's bytes (after an earlier request or body).
PULL_REQUEST = re.compile(rb"POST /(?:v[0-9.]+/)?images/create\?([^ \r\n]*) HTTP/1\.[01]\r\n")
#: Bytes kept from the end of one read for the next, so that a request line split between reads is seen.
OVERLAP = 4096


def pulled_reference(query: str) -> str | None:
    """`fromImage=redis&tag=7` → `redis:7` (a digest tag → `redis@sha256:…`); None for an import (`fromSrc`)."""
    fields = parse_qs(query)
    image = (fields.get("fromImage") or [""])[0]
    if not image:
        return None
    tag = (fields.get("tag") or [""])[0]
    if not tag or "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}@{tag}" if tag.startswith("sha256:") else f"{image}:{tag}"


class SocketWatch:
    """A unix socket at `path` whose connections go to the engine's socket at `target`."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self._pulls: dict[str, None] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        #: Every socket of a live connection (both ends), so that `close` ends them too.
        self._open: set[socket.socket] = set()

    def start(self) -> None:
        """Listen at `path`; a socket that cannot be made is a runtime failure, with nothing left behind."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            listener.bind(str(self.path))
            os.chmod(self.path, 0o666)  # a service's non-root user too: the engine is the put's alone, and goes with it
            listener.listen(64)
        except OSError as error:
            listener.close()
            self._unlink()
            raise RuntimeFailure(
                f"params.docker_socket: cannot make the socket the services get at {self.path}: {error}"
            ) from None
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="socket-watch", daemon=True).start()

    def pulls(self) -> list[str]:
        """The images services asked the engine to pull, in the order first asked."""
        with self._lock:
            return list(self._pulls)

    def close(self) -> None:
        """No new connection, and the live ones ended; never raises (the teardown goes on after it)."""
        listener, self._listener = self._listener, None
        with self._lock:
            open_sockets, self._open = [*self._open, *([listener] if listener is not None else [])], set()
        for end in open_sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()
        self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), name="socket-watch-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._open |= {client, engine}
        try:
            engine.connect(self.target)
        except OSError:
            self._forget(client, engine)  # the client sees the connection refused, as it would the engine's
            return
        answers = threading.Thread(
            target=self._pump, args=(engine, client, False), name="socket-watch-back", daemon=True
        )
        answers.start()
        self._pump(client, engine, True)
        answers.join()
        self._forget(client, engine)

    def _forget(self, *ends: socket.socket) -> None:
        with self._lock:
            self._open -= set(ends)
        for end in ends:
            with contextlib.suppress(OSError):
                end.close()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        """Copy until the source ends, then half-close the sink: the other direction goes on."""
        carried = b""
        try:
            while chunk := source.recv(CHUNK):
                if requests:
                    carried = self._note_pulls(carried + chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _note_pulls(self, data: bytes) -> bytes:
        for match in PULL_REQUEST.finditer(data):
            reference = pulled_reference(match.group(1).decode(errors="replace"))
            if reference:
                with self._lock:
                    self._pulls[reference] = None
        return data[-OVERLAP:]

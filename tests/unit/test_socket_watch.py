"""The socket docker_socket services get: bytes forwarded both ways (half-closes too), pulls noted (a fake engine, no
Docker)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_env.errors import RuntimeFailure
from compose_env.run.socket_watch import SocketWatch, pulled_reference


@pytest.mark.parametrize(
    ("query", "reference"),
    [
        ("fromImage=redis&tag=7", "redis:7"),
        ("tag=6&fromImage=redis", "redis:6"),
        ("fromImage=redis%3A7", "redis:7"),
        ("fromImage=localhost%3A5000%2Fapp&tag=ci", "localhost:5000/app:ci"),
        ("fromImage=redis&tag=sha256%3Aabc", "redis@sha256:abc"),
        ("fromImage=redis", "redis"),
        ("fromSrc=-&repo=x", None),
    ],
)
def test_a_pull_request_names_its_image(query: str, reference: str | None) -> None:
    assert pulled_reference(query) == reference


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A fake engine: reads a connection to its end (the client's half-close), then answers with what it got."""
    path = str(tmp_path / "engine.sock")
    received: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            data = b""
            while chunk := connection.recv(4096):
                data += chunk
            received.append(data)
            connection.sendall(b"HTTP/1.1 200 OK\r\n\r\ngot " + str(len(data)).encode())
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    yield path, received
    listener.close()


def _ask(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    return answer


def test_requests_go_through_byte_for_byte_and_pulls_are_noted(tmp_path: Path, engine: tuple[str, list[bytes]]) -> None:
    target, received = engine
    watch = SocketWatch(tmp_path / "run" / "watch.sock", target)
    watch.start()
    body = bytes(range(256)) * 1000  # a build context, say: binary, larger than one read
    requests = [
        b"GET /v1.45/_ping HTTP/1.1\r\nHost: docker\r\n\r\n",
        b"POST /v1.45/images/create?tag=6&fromImage=redis HTTP/1.1\r\nHost: docker\r\n\r\n",
        b"POST /build HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"POST /images/create?fromImage=postgres&tag=16 HTTP/1.1\r\nHost: docker\r\n\r\n",
    ]
    try:
        answer = _ask(watch.path, b"".join(requests))
    finally:
        watch.close()

    assert received == [b"".join(requests)]
    assert answer == b"HTTP/1.1 200 OK\r\n\r\ngot %d" % len(b"".join(requests))
    assert watch.pulls() == ["redis:6", "postgres:16"]
    assert not watch.path.exists()


def test_a_service_of_any_user_may_connect(tmp_path: Path, engine: tuple[str, list[bytes]]) -> None:
    watch = SocketWatch(tmp_path / "watch.sock", engine[0])
    watch.start()
    try:
        assert watch.path.stat().st_mode & 0o777 == 0o666
    finally:
        watch.close()


def test_close_ends_the_live_connections_too(tmp_path: Path) -> None:
    """A connection the engine keeps open (a log stream, an attach): closing the watch ends it, and nothing is left."""
    path = str(tmp_path / "engine.sock")
    engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    engine.bind(path)
    engine.listen(1)
    watch = SocketWatch(tmp_path / "watch.sock", path)
    watch.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(watch.path))
    client.sendall(b"GET /containers/x/logs?follow=1 HTTP/1.1\r\n\r\n")
    held, _ = engine.accept()  # the engine holds the stream open

    watch.close()

    client.settimeout(5)
    try:
        ended = client.recv(10) == b""
    except ConnectionResetError:
        ended = True
    assert ended, "the watch left the connection open"
    assert not watch.path.exists()
    for end in (client, held, engine):
        end.close()


def test_a_socket_that_cannot_be_made_is_a_clear_failure(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")

    with pytest.raises(RuntimeFailure, match=r"params.docker_socket: cannot make the socket the services get at"):
        SocketWatch(tmp_path / "not-a-directory" / "watch.sock", str(tmp_path / "engine.sock")).start()

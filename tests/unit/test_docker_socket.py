"""params.docker_socket: the compose override that hands services the engine, and its checks (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from compose_env.config.model import BuildMetadata, parse_put_request
from compose_env.errors import UserError
from compose_env.run.docker_socket import check_services, describe, override, write_override

SERVICES = {
    "tests": {"environment": {"A": "1"}},
    "redis": {},
    "own-ryuk": {"environment": {"TESTCONTAINERS_RYUK_DISABLED": "false"}},
}


def test_each_service_gets_the_socket_docker_host_and_ryuk_off() -> None:
    document = override(["tests"], SERVICES, {}, "/run/compose-env/watch.sock")

    assert document == {
        "services": {
            "tests": {
                "volumes": [
                    {"type": "bind", "source": "/run/compose-env/watch.sock", "target": "/var/run/docker.sock"}
                ],
                "environment": {"DOCKER_HOST": "unix:///var/run/docker.sock", "TESTCONTAINERS_RYUK_DISABLED": "true"},
            }
        }
    }


def test_ryuk_is_left_to_a_service_that_sets_it_and_params_env_decides_for_the_others() -> None:
    document = override(["own-ryuk", "tests"], SERVICES, {"TESTCONTAINERS_RYUK_DISABLED": "false"}, "/w.sock")

    assert "TESTCONTAINERS_RYUK_DISABLED" not in document["services"]["own-ryuk"]["environment"]
    assert document["services"]["tests"]["environment"]["TESTCONTAINERS_RYUK_DISABLED"] == "false"


def test_unknown_services_are_all_named_with_a_did_you_mean() -> None:
    with pytest.raises(UserError) as raised:
        check_services(["test", "tests", "nothing-like-it"], SERVICES, "params.docker_socket")

    assert [problem[0] for problem in raised.value.problems] == ["params.docker_socket[0]", "params.docker_socket[2]"]
    assert raised.value.problems[0][1:] == ("unknown service 'test'", "did you mean 'tests'?")
    assert raised.value.problems[1][2] == "services: own-ryuk, redis, tests"


def test_the_override_is_a_compose_file_named_in_one_line(tmp_path: Path) -> None:
    document = override(["tests"], SERVICES, {}, "/run/compose-env/watch.sock")

    path = write_override(document, tmp_path / "run" / "docker-socket.compose.yml")

    assert path.read_text().startswith("{")
    assert describe(document, path) == (
        "params.docker_socket: tests get the engine: its socket at /var/run/docker.sock, "
        "DOCKER_HOST=unix:///var/run/docker.sock, "
        f"TESTCONTAINERS_RYUK_DISABLED=true ({path}, after the compose files)"
    )


def test_a_remote_engine_cannot_be_handed_out(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text("services: {}\n")
    request = {
        "source": {"docker_host": "tcp://engine:2375"},
        "params": {"compose_files": "compose.yml", "docker_socket": ["tests"]},
    }

    with pytest.raises(UserError) as raised:
        parse_put_request(request, tmp_path, BuildMetadata())

    assert raised.value.path == "params.docker_socket"
    assert "cannot hand out the engine at tcp://engine:2375 (source.docker_host)" in raised.value.message


def test_docker_socket_is_a_list_of_distinct_names(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text("services: {}\n")

    with pytest.raises(UserError) as raised:
        parse_put_request(
            {"params": {"compose_files": "compose.yml", "docker_socket": "tests"}}, tmp_path, BuildMetadata()
        )

    assert raised.value.path == "params.docker_socket"

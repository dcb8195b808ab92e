"""Compose's progress lines: the container it could not create or start, and the engine's reason (no engine)."""

from __future__ import annotations

from compose_env.report import ServiceState
from compose_env.run.command import analyse_command
from compose_env.run.outcome import NOT_CREATED, failing_services, ps_table, with_compose_failures
from compose_env.run.progress import ContainerFailure, ContainerProgress

#: `docker compose --progress plain run --rm tests` (2.26) when the engine refuses to create a dependency.
NO_COMMAND = [
    " Network p_default  Creating",
    " Network p_default  Created",
    " Container p-db-1  Creating",
    " Container p-db-1  Created",
    " Container p-server-1  Creating",
    "Error response from daemon: no command specified",
]


SERVICES = {"db": {}, "server": {}, "tests": {}}


def _progress(lines: list[str]) -> ContainerProgress:
    progress = ContainerProgress()
    for line in lines:
        progress.see(line)
    return progress


def test_a_container_left_creating_failed_with_the_error_that_followed() -> None:
    failures = _progress(NO_COMMAND).failures()

    assert failures == [
        ContainerFailure("p-server-1", "could not be created", "Error response from daemon: no command specified")
    ]
    assert failures[0].service("p", {"db": {}, "server": {}}) == "server"


def test_finished_steps_are_no_failure() -> None:
    lines = [
        " Container p-db-1  Starting",
        " Container p-db-1  Started",
        " Container p-db-1  Waiting",
        " Container p-db-1  Healthy",
    ]

    assert _progress(lines).failures() == []


def test_an_unhealthy_dependency_is_named_with_composes_reason() -> None:
    lines = [
        " Container p-db-1  Waiting",
        " Container p-db-1  Error",
        "dependency failed to start: container p-db-1 is unhealthy",
    ]

    assert _progress(lines).failures() == [
        ContainerFailure("p-db-1", "failed", "dependency failed to start: container p-db-1 is unhealthy")
    ]


def test_a_service_name_with_dashes_survives_the_project_prefix() -> None:
    assert (
        ContainerFailure("my-project-app-db-2", "could not start").service("my-project", {"app": {}, "app-db": {}})
        == "app-db"
    )


def test_a_container_name_of_the_users_and_a_one_off_run_container_name_their_service() -> None:
    services = {"db": {"container_name": "my-db"}, "tests": {}}

    assert ContainerFailure("my-db", "could not start").service("p", services) == "db"
    assert ContainerFailure("p-tests-run-5f2e9c1a", "could not start").service("p", services) == "tests"


def test_a_dependency_that_was_never_created_fails_first_and_shows_in_the_table() -> None:
    failures = _progress(NO_COMMAND).failures()
    states = with_compose_failures(
        [ServiceState("db", "running", container="p-db-1"), ServiceState("tests", NOT_CREATED)], failures, "p", SERVICES
    )

    assert [s.summary() for s in states] == ["db=running", "server=not-created", "tests=not-created"]
    assert failing_services(analyse_command(["run", "--rm", "tests"]), 1, states, timed_out=False) == [
        "server",
        "tests",
    ]
    assert ps_table(states)[2].endswith(
        "not-created                could not be created: Error response from daemon: no command specified"
    )


def test_a_container_that_could_not_start_keeps_its_engine_state_and_gets_the_reason() -> None:
    failures = _progress(
        [" Container p-db-1  Starting", "Error response from daemon: failed to create task"]
    ).failures()

    states = with_compose_failures([ServiceState("db", "created", container="p-db-1")], failures, "p", SERVICES)

    assert states == [
        ServiceState(
            "db",
            "created",
            container="p-db-1",
            error="could not start: Error response from daemon: failed to create task",
        )
    ]
    assert states[0].failed

"""The compose command without an engine (run/command, outcome, logs, project): argv, environment, command analysis,
ps/events parsing, exit codes."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path

import docker
import pytest
import requests
from compose_env.config.model import PutParams
from compose_env.console import Console
from compose_env.errors import UserError
from compose_env.redaction import Redactor
from compose_env.report import ServiceState
from compose_env.run.command import analyse_command, services_started
from compose_env.run.logs import (
    COMPOSE_OWN_LINE,
    PrefixedLine,
    ServiceLogs,
    engine_log_lines,
    output_source,
    split_prefixed,
)
from compose_env.run.outcome import (
    decide_exit_code,
    failing_services,
    ps_row,
    ps_table,
    service_states,
    stopped_by_compose,
)
from compose_env.run.project import ComposeProject, compose_environment, compose_settings_in
from compose_env.run.states import ps_rows


def make_project(tmp_path: Path, inherited: dict[str, str] | None = None, **overrides: object) -> ComposeProject:
    (tmp_path / "src").mkdir(exist_ok=True)
    values: dict[str, object] = {
        "compose_files": (tmp_path / "src/a.yml", tmp_path / "src/b.yml"),
        "project_directory": tmp_path / "src",
        "project_name": "pipe-job-7",
    }
    values.update(overrides)
    return ComposeProject(
        PutParams(**values), Console(), ServiceLogs(tmp_path / "logs"), inherited or {"PATH": "/usr/bin:/bin"}
    )  # type: ignore[arg-type]


# -- argv and environment


def test_argv_names_project_every_file_env_file_and_profile_and_turns_off_ansi_and_tty_progress(tmp_path: Path) -> None:
    project = make_project(tmp_path, env_files=(tmp_path / "one.env", tmp_path / "two.env"), profiles=("db", "extra"))

    argv = project.base_argv()

    assert argv[:2] == ["docker", "compose"]
    pairs = list(itertools.pairwise(argv))
    assert ("--ansi", "never") in pairs and ("--progress", "plain") in pairs
    assert ("-p", "pipe-job-7") in pairs
    assert ("--project-directory", str(tmp_path / "src")) in pairs
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "-f"] == [
        str(tmp_path / "src/a.yml"),
        str(tmp_path / "src/b.yml"),
    ]
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--env-file"] == [
        str(tmp_path / "one.env"),
        str(tmp_path / "two.env"),
    ]
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--profile"] == ["db", "extra"]


def test_the_projects_dotenv_is_passed_explicitly_only_when_no_env_files_are_given(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (tmp_path / "src/.env").write_text("A=1\n")
    assert project.env_files() == [tmp_path / "src/.env"]
    assert "--env-file" in project.base_argv()

    chosen = make_project(tmp_path, env_files=(tmp_path / "ci.env",))
    assert chosen.env_files() == [tmp_path / "ci.env"]


def test_the_project_inherits_the_environment_it_is_given_not_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_OS_ENVIRON", "1")
    project = make_project(
        tmp_path, inherited={"PATH": "/bin", "GIVEN": "yes", "COMPOSE_FILE": "evil.yml"}, env={"APP": "ci"}
    )

    assert project.env == {"PATH": "/bin", "GIVEN": "yes", "APP": "ci", "BUILDKIT_PROGRESS": "plain"}
    project.use_engine({"DOCKER_HOST": "unix:///run/inner.sock"})
    assert project.env == {
        "PATH": "/bin",
        "GIVEN": "yes",
        "APP": "ci",
        "DOCKER_HOST": "unix:///run/inner.sock",
        "BUILDKIT_PROGRESS": "plain",
    }


def test_inherited_compose_docker_and_buildkit_variables_are_dropped_and_the_engine_wins_over_params_env() -> None:
    inherited = {
        "PATH": "/bin",
        "COMPOSE_FILE": "evil.yml",
        "COMPOSE_PROFILES": "x",
        "DOCKER_HOST": "tcp://elsewhere",
        "BUILDKIT_PROGRESS": "tty",
    }
    params_env = {"APP_MODE": "ci", "COMPOSE_PARALLEL_LIMIT": "2", "DOCKER_HOST": "tcp://user"}

    env = compose_environment(inherited, params_env, {"DOCKER_HOST": "unix:///run/inner.sock"})

    assert env["PATH"] == "/bin" and env["APP_MODE"] == "ci"
    assert "COMPOSE_FILE" not in env and "COMPOSE_PROFILES" not in env
    assert env["COMPOSE_PARALLEL_LIMIT"] == "2"  # asked for explicitly
    assert env["DOCKER_HOST"] == "unix:///run/inner.sock"
    assert env["BUILDKIT_PROGRESS"] == "plain"


def test_compose_settings_in_an_env_file_are_found(tmp_path: Path) -> None:
    env_file = tmp_path / "ci.env"
    env_file.write_text("# COMPOSE_IGNORED=1\nCOMPOSE_PROFILES=db\nexport COMPOSE_PARALLEL_LIMIT = 3\nOTHER=1\n")

    assert compose_settings_in(env_file) == ["COMPOSE_PROFILES", "COMPOSE_PARALLEL_LIMIT"]
    assert compose_settings_in(tmp_path / "missing.env") == []


# -- command analysis


@pytest.mark.parametrize(
    ("command", "subcommand", "services", "exit_code_from", "run_service"),
    [
        (["up", "--abort-on-container-exit"], "up", (), None, None),
        (["up", "--exit-code-from", "tests"], "up", (), "tests", None),
        (["up", "--exit-code-from=tests", "redis", "tests"], "up", ("redis", "tests"), "tests", None),
        (["up", "-t", "3", "web"], "up", ("web",), None, None),
        (["run", "--rm", "-e", "A=1", "tests", "pytest", "-x"], "run", ("tests",), None, "tests"),
        (["run", "--rm", "--", "tests"], "run", ("tests",), None, "tests"),
        (["config"], "config", (), None, None),
    ],
)
def test_analyse_command_finds_the_services_it_names(
    command: list[str], subcommand: str, services: tuple[str, ...], exit_code_from: str | None, run_service: str | None
) -> None:
    shape = analyse_command(command)

    assert (shape.subcommand, shape.services, shape.exit_code_from, shape.run_service) == (
        subcommand,
        services,
        exit_code_from,
        run_service,
    )


def test_only_an_attached_up_follows_the_output_of_its_services() -> None:
    assert analyse_command(["up"]).follows_output_of("db")
    assert not analyse_command(["up", "-d"]).follows_output_of("db")
    assert not analyse_command(["up", "--wait"]).follows_output_of("db")
    assert not analyse_command(["run", "db"]).follows_output_of("db")
    assert analyse_command(["up", "--attach", "tests"]).follows_output_of("tests")
    assert not analyse_command(["up", "--attach", "tests"]).follows_output_of("db")
    assert not analyse_command(["up", "--no-attach=db"]).follows_output_of("db")


def test_exit_code_from_is_a_named_service_but_does_not_limit_what_up_starts() -> None:
    shape = analyse_command(["up", "--exit-code-from", "tests"])
    services = {"redis": {}, "tests": {"depends_on": {"redis": {"condition": "service_healthy"}}}, "docs": {}}

    assert shape.named_services == ("tests",)
    assert sorted(services_started(shape, services)) == ["docs", "redis", "tests"]


def test_run_starts_its_service_and_the_dependencies_unless_no_deps() -> None:
    services = {
        "db": {},
        "cache": {},
        "api": {"depends_on": {"db": {}}},
        "tests": {"depends_on": {"api": {}, "cache": {}}},
        "docs": {},
    }

    assert sorted(services_started(analyse_command(["run", "tests"]), services)) == ["api", "cache", "db", "tests"]
    assert services_started(analyse_command(["run", "--no-deps", "tests"]), services) == ["tests"]
    assert services_started(analyse_command(["ps"]), services) == []


# -- ps and events


PS_ROWS = [
    {"Name": "p-redis-1", "Service": "redis", "State": "exited", "ExitCode": 0, "Health": ""},
    {"Name": "p-tests-1", "Service": "tests", "State": "exited", "ExitCode": 143, "Health": ""},
    {"Name": "p-db-1", "Service": "db", "State": "running", "ExitCode": 0, "Health": "healthy"},
]


def inspected(name: str, service: str, status: str, exit_code: int, health: str | None = None) -> dict[str, object]:
    """The parts of the engine's container inspect that ps rows come from."""
    state: dict[str, object] = {"Status": status, "ExitCode": exit_code, "Running": status == "running"}
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    labels = {"com.docker.compose.service": service, "com.docker.compose.project": "p"}
    return {"Id": "0" * 64, "Name": f"/{name}", "State": state, "Config": {"Labels": labels}}


def test_ps_rows_are_read_from_the_engine_as_compose_ps_shows_them() -> None:
    containers = [
        inspected("p-redis-1", "redis", "exited", 0),
        inspected("p-tests-1", "tests", "exited", 143),
        inspected("p-db-1", "db", "running", 0, "healthy"),
    ]

    assert [ps_row(container) for container in containers] == PS_ROWS
    # as compose shows them: no health once a container stopped, no exit code while it runs
    assert ps_row(inspected("p-redis-1", "redis", "exited", 0, "unhealthy"))["Health"] == ""
    assert ps_row(inspected("p-db-1", "db", "running", 137))["ExitCode"] == 0
    assert ps_row({"Name": "/x", "State": {}, "Config": {"Labels": None}}) == {
        "Name": "x",
        "Service": "",
        "State": "",
        "ExitCode": 0,
        "Health": "",
    }


def event(action: str, name: str, at: int, **attributes: str) -> dict[str, object]:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"Attributes": {"name": name, **attributes}},
        "timeNano": at,
    }


def test_a_container_signalled_before_it_died_was_stopped_by_compose_the_others_exited_by_themselves() -> None:
    events = [
        event("die", "p-tests-1", 3, exitCode="3"),
        event("start", "p-redis-1", 1),
        event("kill", "p-redis-1", 4, signal="15"),
        event("die", "p-redis-1", 5, exitCode="0"),
        event("kill", "p-slow-1", 4, signal="15"),
        event("kill", "p-slow-1", 6, signal="9"),
        event("die", "p-slow-1", 7, exitCode="137"),
        # killed in an earlier life, then restarted and exited by itself
        event("kill", "p-again-1", 1),
        event("die", "p-again-1", 2),
        event("start", "p-again-1", 3),
        event("die", "p-again-1", 4),
    ]

    assert stopped_by_compose(events) == {"p-redis-1", "p-slow-1"}


def test_service_states_mark_stopped_containers_from_events_or_else_from_signal_exit_codes() -> None:
    from_events = {s.name: s for s in service_states(PS_ROWS, {"p-tests-1"})}
    assert from_events["tests"].stopped and not from_events["tests"].failed
    assert from_events["db"].summary() == "db=running(healthy)"

    guessed = {s.name: s for s in service_states(PS_ROWS, None)}
    assert guessed["tests"].stopped


# -- exit codes


def states(*items: tuple[str, int, bool]) -> list[ServiceState]:
    return [
        ServiceState(name, "exited", code, container=f"p-{name}-1", stopped=stopped) for name, code, stopped in items
    ]


def test_run_reports_the_containers_exit_code_which_compose_returns() -> None:
    assert decide_exit_code(analyse_command(["run", "--rm", "tests"]), 3, []) == 3


def test_exit_code_from_reports_the_services_real_code_even_when_compose_says_0_after_the_cascade() -> None:
    shape = analyse_command(["up", "--exit-code-from", "tests"])
    cascade = states(("other", 0, False), ("tests", 143, True))

    assert decide_exit_code(shape, 0, cascade) == 143
    assert decide_exit_code(shape, 0, states(("tests", 0, False))) == 0
    assert decide_exit_code(shape, 1, []) == 1  # never started: compose's word


def test_plain_up_fails_when_a_container_exited_non_zero_by_itself_but_not_for_one_compose_stopped() -> None:
    shape = analyse_command(["up", "--abort-on-container-exit"])

    assert decide_exit_code(shape, 0, states(("migrate", 0, False), ("tests", 4, False))) == 4
    assert decide_exit_code(shape, 0, states(("tests", 0, False), ("redis", 137, True))) == 0
    assert decide_exit_code(shape, 2, states(("tests", 2, False))) == 2


def test_failing_services_put_the_command_target_first_then_own_failures_then_on_timeout_the_running_ones() -> None:
    shape = analyse_command(["up", "--exit-code-from", "tests"])
    result_states = [
        *states(("tests", 143, True), ("worker", 5, False)),
        ServiceState("redis", "running", 0, "unhealthy"),
    ]

    assert failing_services(shape, 143, result_states, False) == ["tests", "worker", "redis"]
    assert failing_services(analyse_command(["up"]), 124, [ServiceState("slow", "running", 0)], True) == ["slow"]


# -- streaming


def test_prefixed_lines_are_split_by_known_service_even_with_replica_numbers_and_bars_in_the_text() -> None:
    known = {"tests", "db-2", "redis"}

    assert split_prefixed("tests-1  | ok | fine", known) == PrefixedLine("tests", "tests-1", "ok | fine")
    assert split_prefixed("db-2-1   | ready", known) == PrefixedLine("db-2", "db-2-1", "ready")
    assert split_prefixed("redis-1  |", known) == PrefixedLine("redis", "redis-1", "")
    assert split_prefixed("web-3 | up", set()) == PrefixedLine("web", "web-3", "up")
    assert split_prefixed("tests-1 exited with code 0", known) is None
    assert split_prefixed("Attaching to redis-1, tests-1", known) is None
    assert split_prefixed("nginx-1  | x", known) is None


def test_service_logs_are_redacted_and_tailed_from_the_end(tmp_path: Path) -> None:
    logs = ServiceLogs(tmp_path / "logs", Redactor(["hunter22"]))
    for number in range(5000):
        logs.append("tests", f"line {number} pw=hunter22")
    logs.write_whole("redis", "a\nb hunter22\n")
    logs.close()

    assert logs.tail("tests", 2) == ["line 4998 pw=***", "line 4999 pw=***"]
    assert logs.tail("redis", 5) == ["a", "b ***"]
    assert logs.services() == ["redis", "tests"]
    assert "hunter22" not in (tmp_path / "logs/tests.log").read_text()


def test_ps_table_aligns_columns_and_says_which_containers_compose_stopped() -> None:
    rows = ps_table(
        [
            ServiceState("redis", "exited", 0, "", "project-redis-1", True),
            ServiceState("tests", "exited", 3, "", "project-tests-1"),
        ]
    )

    assert rows[0].split() == ["SERVICE", "CONTAINER", "STATE", "EXIT", "HEALTH", "NOTE"]
    assert rows[1].split() == ["redis", "project-redis-1", "exited", "0", "stopped", "by", "compose"]
    assert rows[2].split() == ["tests", "project-tests-1", "exited", "3", "failed"]
    assert rows[1].index("exited") == rows[2].index("exited") == rows[0].index("STATE")


class FakeLogClient:
    """Stands in for docker.APIClient.logs(stream=True, timestamps=True): frames that do not align with lines."""

    def __init__(self, stdout: list[bytes], stderr: list[bytes]) -> None:
        self.streams = {"stdout": stdout, "stderr": stderr}

    def logs(self, container: str, stdout: bool, stderr: bool, **_options: object) -> object:
        return iter(self.streams["stdout" if stdout else "stderr"])


def test_engine_log_lines_skip_what_compose_printed_of_each_stream_and_merge_the_rest_in_time_order() -> None:
    client = FakeLogClient(
        stdout=[b"2026-11-28T01:00:00.1Z one\n2026-11-28T01:00:00.3Z tw", b"o\r\n2026-11-28T01:00:00.5Z three\n"],
        stderr=[b"2026-11-28T01:00:00.25Z err-a\n2026-11-28T01:00:00.45Z err-b"],
    )

    assert list(engine_log_lines(client, "id", 0, 0)) == ["one", "err-a", "two", "err-b", "three"]  # type: ignore[arg-type]
    assert list(engine_log_lines(client, "id", 2, 1)) == ["err-b", "three"]  # type: ignore[arg-type]
    assert list(engine_log_lines(client, "id", 3, 2)) == []  # type: ignore[arg-type]


def test_the_source_of_a_container_is_service_and_number_unless_it_has_its_own_name() -> None:
    labels = {
        "com.docker.compose.project": "p",
        "com.docker.compose.service": "web",
        "com.docker.compose.container-number": "2",
    }

    assert output_source({"Labels": labels, "Names": ["/p-web-2"]}) == "web-2"
    assert output_source({"Labels": labels, "Names": ["/my-web"]}) == "my-web"


def test_composes_own_stderr_lines_are_told_from_a_run_containers_stderr() -> None:
    assert COMPOSE_OWN_LINE.match(" Container p-redis-1  Creating")
    assert COMPOSE_OWN_LINE.match(" Network p_default  Created")
    assert COMPOSE_OWN_LINE.match('WARN[0000] The "X" variable is not set. Defaulting to a blank string.')
    assert not COMPOSE_OWN_LINE.match("Traceback (most recent call last):")
    assert not COMPOSE_OWN_LINE.match("Container tests failed")


def fake_docker(tmp_path: Path, script: str) -> dict[str, str]:
    """A `docker` on PATH that runs `script` (for compose config started while the daemon starts)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_compose_config_started_early_gives_its_answer_later(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, inherited=fake_docker(tmp_path, """echo '{"name": "p", "services": {"api": {}}}'""")
    )
    project.start_config()
    assert project.load_config() == {"name": "p", "services": {"api": {}}}
    assert project.services() == {"api": {}} and not project.started


def test_a_project_compose_rejects_is_a_user_error_naming_the_files(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        inherited=fake_docker(tmp_path, "echo 'services.api Additional property nope is not allowed' >&2; exit 15"),
    )
    project.start_config()
    with pytest.raises(UserError, match="nope is not allowed"):
        project.load_config()


def test_kill_ends_a_pending_compose_config_and_its_children_at_once(tmp_path: Path) -> None:
    """The docker CLI runs compose as a child that holds the pipes: the whole group goes.

    And kill does not wait for it.
    """
    pids = tmp_path / "pids"
    project = make_project(tmp_path, inherited=fake_docker(tmp_path, f"sleep 30 & echo $$ $! > {pids}; wait"))
    project.start_config()
    while not pids.exists() or not pids.read_text().strip():
        time.sleep(0.01)
    started = time.monotonic()
    project.kill()
    assert time.monotonic() - started < 2
    for pid in map(int, pids.read_text().split()):
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split(")")[-1].split()[0] == "Z"


class Inspector:
    """The engine after a run: one container inspected, one removed since it was listed, one the engine cannot answer
    for."""

    def inspect_container(self, container_id: str) -> dict[str, object]:
        if container_id == "gone":
            raise docker.errors.NotFound("No such container")
        if container_id == "stuck":
            raise requests.ReadTimeout("read timed out")
        return inspected("p-tests-1", "tests", "exited", 3)


def test_ps_rows_skip_a_removed_container_and_keep_the_listed_state_of_one_that_cannot_be_inspected(
    tmp_path: Path,
) -> None:
    listed = [
        {"Id": "ok", "Names": ["/p-tests-1"], "State": "exited", "Labels": {"com.docker.compose.service": "tests"}},
        {"Id": "gone", "Names": ["/p-old-1"], "State": "exited", "Labels": {"com.docker.compose.service": "old"}},
        {"Id": "stuck", "Names": ["/p-db-1"], "State": "running", "Labels": {"com.docker.compose.service": "db"}},
    ]
    rows = ps_rows(Inspector(), listed, Console(io.StringIO()))  # type: ignore[arg-type]

    assert rows == [
        {"Name": "p-tests-1", "Service": "tests", "State": "exited", "ExitCode": 3, "Health": ""},
        {"Name": "p-db-1", "Service": "db", "State": "running", "ExitCode": None, "Health": ""},
    ]

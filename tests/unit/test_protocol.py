"""check/in/out in-process with injected streams: exit codes, empty stdout on error, no tracebacks."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from compose_env import protocol
from compose_env.errors import EXIT_ABORTED, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Aborted, RuntimeFailure
from compose_env.protocol import run_command
from compose_env.report import RunResult

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, ANSI.sub("", stderr)

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run(name: str, stdin: Any, argv: list[str] | None = None, env: dict[str, str] | None = None) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    code = run_command(name, io.StringIO(text), stdout, stderr, argv or [name, "/nonexistent/put"], env or {})
    return Run(code, stdout.getvalue(), stderr.getvalue())


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "error: stdin: is empty"),
        (
            "{not json",
            "error: stdin: is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)",
        ),
        ("[]", "error: stdin: must be a JSON object with source and params, got list"),
        ('"source"', "error: stdin: must be a JSON object with source and params, got str"),
        ("[" * 100000, "error: stdin: is not valid JSON"),
    ],
)
@pytest.mark.parametrize("command", ["check", "in", "out"])
def test_stdin_that_is_not_a_json_object_is_a_configuration_error(command: str, stdin: str, message: str) -> None:
    result = run(command, stdin)

    assert result.code == EXIT_CONFIG
    assert result.stdout == ""
    assert result.errors[0].startswith(message)
    assert "hint: " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["out", "task"])
def test_a_put_or_task_log_opens_with_the_version_even_when_it_fails_at_once(command: str) -> None:
    result = run(command, "")

    assert result.stderr.splitlines()[0] == "compose-env dev (unknown)"


@pytest.mark.parametrize("command", ["check", "in"])
def test_check_and_in_print_no_version_line(command: str) -> None:
    assert not run(command, "").stderr.startswith("compose-env ")


def test_stdin_that_is_not_utf8_is_a_configuration_error() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(b'{"source": "\xff"}'), encoding="utf-8")

    code = run_command("out", stdin, stdout, stderr, ["out", "/tmp"], {})

    assert (code, stdout.getvalue()) == (EXIT_CONFIG, "")
    assert "error: stdin: is not UTF-8 text" in stderr.getvalue()


def test_out_reports_every_problem_one_line_each_before_any_daemon() -> None:
    result = run(
        "out",
        {"source": {"dockerd": {"storage_drvier": "vfs"}}, "params": {"compose_file": "x.yml", "images": ["a", 42]}},
    )

    assert result.code == EXIT_CONFIG
    assert result.stdout == ""
    assert result.errors == [
        "error: source.dockerd.storage_drvier: unknown key",
        "error: params.compose_file: unknown key",
        "error: params.compose_files: is required",
        "error: params.images[1]: expected a path or {path, tag}, got 42",
    ]
    assert "hint: did you mean 'compose_files'?" in result.stderr


def test_out_refuses_paths_outside_the_put_directory(tmp_path: Path) -> None:
    result = run("out", {"params": {"compose_files": "../x.yml"}}, ["out", str(tmp_path)])

    assert result.code == EXIT_CONFIG
    assert result.errors == [
        f"error: params.compose_files: '../x.yml' is a path that leads outside the put directory {tmp_path}"
    ]


def test_out_without_a_directory_says_how_it_is_called() -> None:
    result = run("out", {"params": {}}, ["out"])
    assert (result.code, result.errors) == (
        EXIT_CONFIG,
        ["error: argv: usage: out DIR (Concourse passes the put directory)"],
    )


def test_check_echoes_the_version_and_validates_the_source() -> None:
    assert run("check", {"source": {}}).stdout == "[]\n"
    assert json.loads(run("check", {"source": {}, "version": {"id": "1"}}).stdout) == [{"id": "1"}]

    result = run("check", {"source": {"startup_timout": 5}})
    assert (result.code, result.stdout) == (EXIT_CONFIG, "")
    assert result.errors == ["error: source.startup_timout: unknown key"]


def test_check_checks_the_default_params_too() -> None:
    result = run("check", {"source": {"params": {"compose_file": "x"}}})
    assert result.errors == ["error: source.params.compose_file: unknown key"]


def test_in_writes_the_version(tmp_path: Path) -> None:
    result = run("in", {"source": {}, "version": {"id": "7-x", "exit_code": "3"}, "params": {}}, ["in", str(tmp_path)])

    assert result.code == EXIT_OK
    assert json.loads(result.stdout)["version"] == {"id": "7-x", "exit_code": "3"}
    assert (tmp_path / "exit_code").read_text() == "3\n"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"source": {}}, "error: version: is required"),
        ({"version": {"id": 1}}, "error: version.id: must be a string, got a number (1)"),
        ({"version": {"id": "1"}, "params": {"skip_download": True}}, "error: params.skip_download: unknown key"),
    ],
)
def test_in_refuses_a_bad_request(tmp_path: Path, request_: dict[str, Any], message: str) -> None:
    result = run("in", request_, ["in", str(tmp_path / "get")])

    assert (result.code, result.stdout) == (EXIT_CONFIG, "")
    assert result.errors == [message]
    assert not (tmp_path / "get").exists()


def test_secrets_are_masked_in_error_messages() -> None:
    result = run(
        "out",
        {
            "source": {
                "registries": [{"host": "r", "username": "u", "password": "s3cr3t-pw"}],
                "params": {"env": {"API_TOKEN": 987654321}},
            },
            "params": {"compose_files": "a", "env": {"DB_PASSWORD": ["hunter22"]}, "images": [{"path": "s3cr3t-pw"}]},
        },
    )

    assert result.code == EXIT_CONFIG
    for secret in ("s3cr3t-pw", "987654321", "hunter22"):
        assert secret not in result.stderr
    assert "params.env.DB_PASSWORD: expected a string, number or boolean, got ***" in result.stderr


def test_a_runtime_failure_exits_1_with_its_diagnosis(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args: Any) -> int:
        raise RuntimeFailure(
            "the inner Docker daemon did not start: dockerd exited with code 1", "diagnosis: check source.dockerd.args"
        )

    monkeypatch.setitem(protocol.COMMANDS, "out", failing)
    result = run("out", {})

    assert (result.code, result.stdout) == (EXIT_FAILED, "")
    assert result.stderr.splitlines()[1:3] == [
        "error: the inner Docker daemon did not start: dockerd exited with code 1",
        "  diagnosis: check source.dockerd.args",
    ]


def test_an_abort_exits_143(monkeypatch: pytest.MonkeyPatch) -> None:
    def aborted(*_args: Any) -> int:
        raise Aborted()

    monkeypatch.setitem(protocol.COMMANDS, "out", aborted)
    result = run("out", {})

    assert (result.code, result.stdout) == (EXIT_ABORTED, "")
    assert "aborted" in result.stderr


def test_an_internal_bug_asks_for_a_report_then_shows_the_traceback_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(stdin: Any, stdout: Any, console: Any, argv: Any, env: Any) -> int:
        protocol.read_request(stdin, console)
        raise KeyError("the-registry-password")

    monkeypatch.setitem(protocol.COMMANDS, "out", buggy)
    result = run(
        "out", {"source": {"registries": [{"host": "r", "username": "u", "password": "the-registry-password"}]}}
    )

    lines = result.stderr.splitlines()[1:]  # after the version line
    assert (result.code, result.stdout) == (EXIT_FAILED, "")
    assert "internal error in compose-env (KeyError): please report it" in lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    assert "the-registry-password" not in result.stderr


def test_the_fd1_guard_sends_child_output_to_stderr_and_keeps_stdout_for_the_response() -> None:
    script = (
        "import os, sys, json\n"
        "from compose_env.protocol import guard_stdout, write_json\n"
        "response = guard_stdout()\n"
        "print('from print')\n"
        "os.system('echo from a child')\n"
        "write_json(response, {'version': {'id': '1'}})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "resource")},
        check=True,
    )

    assert result.stdout == '{"version": {"id": "1"}}\n'
    assert "from print" in result.stderr and "from a child" in result.stderr


def test_a_failed_put_ends_with_what_happened_and_what_to_change() -> None:
    failed = RunResult(("run", "--rm", "tests"), 3, "failed", failing_services=["tests"])
    timed_out = RunResult(("up",), 124, "timed_out")

    assert protocol.why_the_put_fails(failed, None).splitlines() == [
        "error: the put fails: `docker compose run --rm tests` exited with code 3 (failing: tests)",
        "  hint: its output and the failing services' logs are above; set params.fail_on_error: false to report the "
        "exit code instead of failing",
    ]
    assert (
        protocol.why_the_put_fails(timed_out, 90).splitlines()[0]
        == "error: the put fails: `docker compose up` timed out after 1m30.0s (params.timeout)"
    )
    assert "raise params.timeout" in protocol.why_the_put_fails(timed_out, 90)

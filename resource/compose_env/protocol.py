"""Concourse I/O: the check/in/out/task commands, the fd-1 guard, exit codes, signals.

Only this module knows about stdin, stdout and argv. Commands take their streams
as arguments, and `run_command` turns every failure into its exit code and a
message, so that tests drive check/in/out in-process.

The put and the task import their flow when they run (and docker-py later still, while dockerd
starts: see lazy_imports): a check or an in, which Concourse runs far more often, needs only the
request's validation.

Exit codes: 0 success; 1 the command failed, timed out, or a runtime error
(or an internal bug); 2 a configuration error; 143 aborted (SIGTERM).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from compose_env import lazy_imports
from compose_env.config.model import BuildMetadata, parse_put_request, parse_source
from compose_env.config.schema import validate
from compose_env.console import Console
from compose_env.errors import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, Aborted, RuntimeFailure, UserError
from compose_env.redaction import Redactor, secrets_in_request
from compose_env.report import RunResult, RunStatus, format_seconds, version_metadata
from compose_env.signals import ABORT
from compose_env.version import RESOURCE_VERSION

if TYPE_CHECKING:  # imported by the put when it runs: check and in need none of it
    from compose_env.images.layerstore import StoreHooks

Command = Callable[[TextIO, TextIO, Console, Sequence[str], Mapping[str, str]], int]
EXAMPLE_REQUEST = '{"source": {}, "params": {"compose_files": ["repo/docker-compose.yml"]}}'


def read_request(stdin: TextIO, console: Console, schema_name: str = "request") -> dict[str, Any]:
    """Parse and validate the request; its secrets are masked in everything printed from now on."""
    try:
        text = stdin.read()
    except UnicodeDecodeError as error:
        raise UserError(
            "stdin",
            f"is not UTF-8 text ({error.reason} at byte {error.start})",
            f"expected a JSON request such as {EXAMPLE_REQUEST}",
        ) from None
    if not text.strip():
        raise UserError("stdin", "is empty", f"expected a JSON request such as {EXAMPLE_REQUEST}")
    try:
        request = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        where = (
            f" ({error.msg} at line {error.lineno} column {error.colno})"
            if isinstance(error, json.JSONDecodeError)
            else ""
        )
        raise UserError(
            "stdin", f"is not valid JSON{where}", f"expected a JSON request such as {EXAMPLE_REQUEST}"
        ) from None
    if not isinstance(request, dict):
        raise UserError(
            "stdin",
            f"must be a JSON object with source and params, got {type(request).__name__}",
            f"for example {EXAMPLE_REQUEST}",
        )
    console.set_redactor(Redactor(secrets_in_request(request)))
    validate(request, schema_name, "")
    return request


def write_json(stdout: TextIO, value: Any) -> None:
    stdout.write(json.dumps(value) + "\n")
    stdout.flush()


def check(stdin: TextIO, stdout: TextIO, console: Console, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Out-only resource: no versions of its own; echo the one asked about.

    The source is validated anyway: a mistake then shows on the resource page at
    the first check, before any build runs.
    """
    request = read_request(stdin, console)
    parse_source(request.get("source"))
    version = request.get("version")
    write_json(stdout, [version] if version else [])
    return EXIT_OK


def get(stdin: TextIO, stdout: TextIO, console: Console, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`in`: write the version into DIR and show its fields as metadata; nothing to fetch."""
    if len(argv) < 2:
        raise UserError("argv", "usage: in DIR")
    request = read_request(stdin, console, "in_request")
    parse_source(request.get("source"))
    version = request["version"]
    directory = Path(argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version.json").write_text(json.dumps(version) + "\n")
    if "exit_code" in version:
        (directory / "exit_code").write_text(version["exit_code"] + "\n")
    write_json(stdout, {"version": version, "metadata": version_metadata(version)})
    return EXIT_OK


def put(
    stdin: TextIO,
    stdout: TextIO,
    console: Console,
    argv: Sequence[str],
    env: Mapping[str, str],
    store_hooks: StoreHooks | None = None,
) -> int:
    """`store_hooks`: what a test faults the image store's writer with (`compose_env/testing`); None in production."""
    if len(argv) < 2:
        raise UserError("argv", "usage: out DIR (Concourse passes the put directory)")
    lazy_imports.defer()
    from compose_env.images.layerstore import NO_HOOKS
    from compose_env.run.put import PutExtras, PutWorld, redactor_for, run_put

    request = read_request(stdin, console)
    config = parse_put_request(request, Path(argv[1]), BuildMetadata.from_env(env))
    redact = redactor_for(config)
    console.set_redactor(redact)
    outcome = run_put(config, console, redact, env, ABORT, PutExtras(), PutWorld(store_hooks=store_hooks or NO_HOOKS))
    if outcome.exit_code == EXIT_OK:
        write_json(stdout, outcome.response)
    else:
        console.error(why_the_put_fails(outcome.result, config.params.timeout))
    return outcome.exit_code


def why_the_put_fails(result: RunResult, timeout: float | None) -> str:
    """The last line of a failed put: what happened and what to change (the details are above it)."""
    command = f"`docker compose {' '.join(result.command)}`"
    if result.status == RunStatus.TIMED_OUT:
        return (
            f"error: the put fails: {command} timed out after {format_seconds(timeout or 0)} (params.timeout)\n"
            "  hint: raise params.timeout, or see in the logs above what kept it from finishing"
        )
    failing = f" (failing: {', '.join(result.failing_services)})" if result.failing_services else ""
    text = f"error: the put fails: {command} exited with code {result.exit_code}{failing}\n"
    if result.diagnoses:
        return text + "\n".join(f"  diagnosis: {diagnosis}" for diagnosis in result.diagnoses)
    return (
        text + "  hint: its output and the failing services' logs are above;"
        " set params.fail_on_error: false to report the exit code instead of failing"
    )


def task(
    stdin: TextIO,
    stdout: TextIO,
    console: Console,
    argv: Sequence[str],
    env: Mapping[str, str],
    store_hooks: StoreHooks | None = None,
) -> int:
    """Task mode: configuration from COMPOSE_ENV, outputs into the working directory (see task.py)."""
    lazy_imports.defer()
    from compose_env.run.task import run_task

    return run_task(env, Path.cwd(), console, ABORT, store_hooks=store_hooks)


COMMANDS: dict[str, Command] = {"check": check, "in": get, "out": put, "task": task}
#: Commands whose log is a build log: it opens with the version, so a log says what ran it.
ANNOUNCED = ("out", "task")


def run_command(
    name: str,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    argv: Sequence[str],
    env: Mapping[str, str],
    commands: Mapping[str, Command] = COMMANDS,
) -> int:
    """Run one command and map every way it can end to an exit code; stdout is written only on success.

    A user mistake is one message per problem, never a traceback. An internal bug is
    one line asking for a report, then the traceback: on stderr only, secrets masked.
    """
    console = Console(stderr)
    if name in ANNOUNCED:
        console.line(RESOURCE_VERSION.describe())
    try:
        return commands[name](stdin, stdout, console, argv, env)
    except (UserError, RuntimeFailure) as error:
        console.error(error.render())
        return error.exit_code
    except Aborted:
        console.error("aborted: cleaned up, exiting 143")
        return EXIT_ABORTED
    except Exception as error:
        console.error(
            f"internal error in compose-env ({type(error).__name__}): please report it with the traceback below"
        )
        console.line(traceback.format_exc().rstrip())
        return EXIT_FAILED


def guard_stdout() -> TextIO:
    """Keep fd 1 for the one JSON response: everything else written to fd 1 goes to stderr.

    Concourse reads only the first JSON value on stdout, so a stray line from us, a
    library or a child process (docker, compose) would break the step. Redirecting at
    the OS level covers children too; the real stdout is kept on a private fd.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(saved, "w")


def main(name: str, store_hooks: StoreHooks | None = None) -> None:
    """The entry point of `/opt/resource/<name>`; `store_hooks`: the integration tests' faults, which only the entry
    point wires in."""
    response_stream = guard_stdout()
    ABORT.install()
    commands = dict(COMMANDS)
    if store_hooks is not None:
        commands.update({"out": partial(put, store_hooks=store_hooks), "task": partial(task, store_hooks=store_hooks)})
    code = run_command(name, sys.stdin, response_stream, sys.stderr, sys.argv, os.environ, commands)
    sys.stderr.flush()
    response_stream.flush()
    # The interpreter's last garbage collections then skip every object alive now: with
    # docker-py, requests and jsonschema loaded, exiting takes 0.02 s instead of 0.1 s.
    gc.freeze()
    sys.exit(code)

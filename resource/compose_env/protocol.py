"""Concourse I/O: the check/in/out/task commands, the fd-1 guard, exit codes, signals.

Only this module knows about stdin, stdout and argv. Commands take their streams
as arguments so that tests drive them in-process.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .config import BuildMetadata, parse_put_request
from .console import Console
from .errors import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, Aborted, RuntimeFailure, UserError
from .put import redactor_for, run_put
from .report import version_metadata
from .schema import validate
from .signals import ABORT


def read_request(stdin: TextIO) -> dict[str, Any]:
    text = stdin.read()
    if not text.strip():
        raise UserError("stdin", 'is empty: expected a JSON request such as {"source": {}, "params": {...}}')
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError("stdin", f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(request, dict):
        raise UserError("stdin", f"must be a JSON object with source/params, got {type(request).__name__}")
    validate(request, "request", "")
    return request


def write_json(stdout: TextIO, value: Any) -> None:
    stdout.write(json.dumps(value) + "\n")
    stdout.flush()


def check(stdin: TextIO, stdout: TextIO, stderr: TextIO, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Out-only resource: no versions of its own; echo the one asked about."""
    request = read_request(stdin)
    version = request.get("version")
    write_json(stdout, [version] if version else [])
    return EXIT_OK


def get(stdin: TextIO, stdout: TextIO, stderr: TextIO, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`in`: write the version into DIR and show its fields as metadata; nothing to fetch."""
    if len(argv) < 2:
        raise UserError("argv", "usage: in DIR")
    request = read_request(stdin)
    version = request.get("version")
    if not version:
        raise UserError("version", "is missing: `in` needs the version a put produced")
    directory = Path(argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version.json").write_text(json.dumps(version) + "\n")
    if "exit_code" in version:
        (directory / "exit_code").write_text(version["exit_code"] + "\n")
    write_json(stdout, {"version": version, "metadata": version_metadata(version)})
    return EXIT_OK


def put(stdin: TextIO, stdout: TextIO, stderr: TextIO, argv: Sequence[str], env: Mapping[str, str]) -> int:
    if len(argv) < 2:
        raise UserError("argv", "usage: out DIR (Concourse passes the put directory)")
    request = read_request(stdin)
    config = parse_put_request(request, Path(argv[1]), BuildMetadata.from_env(env))
    redact = redactor_for(config)
    console = Console(stderr, redact)
    outcome = run_put(config, console, redact)
    if outcome.exit_code == EXIT_OK:
        write_json(stdout, outcome.response)
    else:
        console.error(f"the put fails: {outcome.result.status} (exit code {outcome.result.exit_code}); set fail_on_error: false to report it instead")
    return outcome.exit_code


def task(stdin: TextIO, stdout: TextIO, stderr: TextIO, argv: Sequence[str], env: Mapping[str, str]) -> int:
    from .task import run_task

    return run_task(env, Path.cwd(), stderr)


COMMANDS = {"check": check, "in": get, "out": put, "task": task}


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


def main(name: str) -> None:
    response_stream = guard_stdout()
    ABORT.install()
    stderr = sys.stderr
    try:
        code = COMMANDS[name](sys.stdin, response_stream, stderr, sys.argv, os.environ)
    except UserError as error:
        Console(stderr).error(error.render())
        code = error.exit_code
    except RuntimeFailure as error:
        Console(stderr).error(error.render())
        code = error.exit_code
    except Aborted:
        Console(stderr).error("aborted: cleaned up, exiting 143")
        code = EXIT_ABORTED
    except Exception:
        Console(stderr).error("internal error in compose-env: please report it with the log below")
        traceback.print_exc(file=stderr)
        code = EXIT_FAILED
    stderr.flush()
    response_stream.flush()
    sys.exit(code)

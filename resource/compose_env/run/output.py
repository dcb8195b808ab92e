"""compose's output during the run: printed live, filed under each service, completed from the engine's log."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import IO, Any

import docker

from compose_env.console import Console
from compose_env.engine.start_failures import diagnose_start_failure
from compose_env.run.command import CommandShape
from compose_env.run.logs import (
    COMPOSE_OWN_LINE,
    ERASE_AT_START,
    ServiceLogs,
    compose_label,
    engine_log_lines,
    output_source,
    split_prefixed,
)
from compose_env.run.progress import ContainerProgress

#: Compose has ended but its output still arrives: wait as long as lines keep coming this often.
STREAM_STALL_SECONDS = 5
#: A port compose could not publish, in its own error lines.
PORT_TAKEN = re.compile(
    r"(?:Bind for \S*?:(?P<bind>\d+) failed: port is already allocated|listen tcp\S*?:(?P<listen>\d+): bind: address "
    r"already in use)"
)


class CommandOutput:
    """What the compose command prints, as it prints it: two reader threads, one per pipe."""

    def __init__(self, console: Console, logs: ServiceLogs, shape: CommandShape, known: set[str]) -> None:
        self.console = console
        self.logs = logs
        self.shape = shape
        #: the services whose prefixed lines are filed under them
        self.known = known
        self._lines = 0
        self._lock = threading.Lock()
        #: lines compose printed per source (`service-N`) and stream (stdout?), to find what it did not print
        self._streamed: dict[tuple[str, bool], int] = {}
        #: host ports compose could not publish, seen in its output
        self.ports_taken: set[str] = set()
        #: Diagnoses of containers the worker's container kept from starting, in order (a dict as an ordered set).
        self.start_failures: dict[str, None] = {}
        #: Each container's last step in compose's progress lines: which one it could not create or start.
        self.progress = ContainerProgress()

    def follow(self, stdout: IO[bytes], stderr: IO[bytes]) -> list[threading.Thread]:
        """Start reading both pipes; `drain` waits for the readers."""
        readers = [
            threading.Thread(target=self._pump, args=(stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(stderr, False), daemon=True),
        ]
        for reader in readers:
            reader.start()
        return readers

    def drain(self, readers: Sequence[threading.Thread]) -> None:
        """Wait until the readers have printed all of compose's output (megabytes can lag behind its exit).

        Give up only when the output stops moving: a process that inherited the pipes
        could otherwise hold us forever.
        """
        while True:
            alive = [reader for reader in readers if reader.is_alive()]
            if not alive:
                return
            before = self._lines
            alive[0].join(STREAM_STALL_SECONDS)
            if alive[0].is_alive() and self._lines == before:
                self.console.warn(
                    f"compose's output stalled for {STREAM_STALL_SECONDS}s after it ended: not waiting for the rest"
                )
                return

    def _pump(self, stream: IO[bytes], is_stdout: bool) -> None:
        """Print each line as it comes, and file the containers' lines under their service.

        `up` prefixes every container line (stdout and stderr alike) with its source; `run`
        passes the container's stdout and stderr through unprefixed, compose's own progress
        lines being mixed into stderr.
        """
        filing = True
        for raw in iter(stream.readline, b""):
            self._lines += 1  # progress for _drain; an approximate count is enough
            line = ERASE_AT_START.sub("", raw.decode(errors="replace").rstrip("\r\n"))
            self.console.line(line)
            if not filing:
                continue
            try:
                self._file_line(line, is_stdout)
            except Exception as error:
                # Keep draining: a reader that stops would fill the pipe and hang compose.
                filing = False
                self.console.warn(f"could not keep the service logs any more ({error}); the build log goes on")

    def _file_line(self, line: str, is_stdout: bool) -> None:
        """File one line of compose's output under its service (and note a port compose could not publish)."""
        if not is_stdout and (taken := PORT_TAKEN.search(line)):
            self.ports_taken.add(taken.group("bind") or taken.group("listen"))
        if not is_stdout and (diagnosis := diagnose_start_failure(line)):
            self.start_failures[diagnosis] = None
        if not is_stdout and self.progress.see(line):
            return
        if self.shape.run_service:
            if is_stdout or not COMPOSE_OWN_LINE.match(line):
                self.logs.append(self.shape.run_service, line)
            return
        prefixed = split_prefixed(line, self.known)
        if prefixed:
            self.logs.append(prefixed.service, prefixed.text)
            with self._lock:
                key = (prefixed.source, is_stdout)
                self._streamed[key] = self._streamed.get(key, 0) + 1

    def complete_from_engine_log(self, containers: list[dict[str, Any]], client: docker.APIClient) -> None:
        """Print what compose did not print of each followed container, and file every line in time order.

        Compose 2.26's `up` returns as soon as the containers have exited, before its log
        stream has caught up: with fast output the last lines (the test summary!) are lost.
        The engine's log has them all: print what compose did not, with the same prefix,
        and add it to the service's log file. (Between stdout and stderr no order is certain:
        they are separate pipes all the way, so compose and the engine may each interleave them
        differently; within each stream the order is kept.)
        """
        for container in sorted(containers, key=output_source):
            source, service = output_source(container), compose_label(container, "service")
            printed_out, printed_err = self._streamed.get((source, True), 0), self._streamed.get((source, False), 0)
            for count, line in enumerate(engine_log_lines(client, container["Id"], printed_out, printed_err)):
                if count == 0:
                    self.console.info(
                        f"(compose stopped following {source} after {printed_out + printed_err} lines: the rest from "
                        "the engine's log)"
                    )
                self.console.line(f"{source} | {line}")
                self.logs.append(service, line)

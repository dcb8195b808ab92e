"""Waiting for containerd and dockerd to serve, each check as soon as it can succeed; a failed start with its logs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from compose_env.engine.daemon_argv import DOCKER_SOCKET
from compose_env.engine.diagnosis import diagnose, error_lines
from compose_env.engine.handle import ping
from compose_env.errors import DaemonStartFailure
from compose_env.logtail import last_lines


class Readiness:
    """The waits of one start, within source.startup_timeout; a daemon that exits or does not answer fails the start."""

    def __init__(self, log_dir: str, startup_timeout: float) -> None:
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout

    def wait_for(self, condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
        """Poll `condition` every 2 ms while `process` lives, within source.startup_timeout."""
        deadline = time.monotonic() + self.startup_timeout
        while not condition():
            if process.poll() is not None:
                self.fail_start(f"containerd exited with code {process.returncode} while starting", "containerd")
            if time.monotonic() > deadline:
                self.fail_start(f"{what} within source.startup_timeout ({self.startup_timeout:g}s)", "containerd")
            time.sleep(0.002)

    def wait_ready(self, containerd: subprocess.Popen[bytes], dockerd: subprocess.Popen[bytes]) -> str:
        """dockerd's API version once it answers; a daemon that exits or does not answer in time fails the start."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            for name, process in (("containerd", containerd), ("dockerd", dockerd)):
                if process.poll() is not None:
                    self.fail_start(f"{name} exited with code {process.returncode} while starting", name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail_start(
                    f"dockerd did not answer within source.startup_timeout ({self.startup_timeout:g}s)",
                    "dockerd",
                )
            attempt = time.monotonic()
            version = ping(DOCKER_SOCKET, min(0.25, remaining)) if os.path.exists(DOCKER_SOCKET) else None
            if version:
                return version
            if time.monotonic() - attempt < 0.004:
                time.sleep(0.004)

    def fail_start(self, message: str, name: str) -> None:
        logs = {
            n: "\n".join(last_lines(f"{self.log_dir}/{n}.log", 25, window=16 * 1024)) for n in ("containerd", "dockerd")
        }
        other = "containerd" if name == "dockerd" else "dockerd"
        shown = f"last lines of the {name} log ({self.log_dir}/{name}.log):\n{logs[name]}"
        if error_lines(logs[other]):
            shown += f"\n\nerrors in the {other} log:\n" + "\n".join(error_lines(logs[other])[-5:])
        raise DaemonStartFailure(
            f"the inner Docker daemon did not start: {message}",
            f"{shown}\n\ndiagnosis: {diagnose(logs['dockerd'] + logs['containerd'])}",
        )

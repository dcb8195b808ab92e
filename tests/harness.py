"""Run the resource image the way Concourse does: a privileged container, then exec of /opt/resource/*.

Three runtimes make that container (`--runtime`, or HARNESS_RUNTIME for `make try`):

- `docker`: `docker run --privileged` with its own init, a fresh volume at /scratch and the
  inputs under /tmp/build/put; scripts run with the put directory as their working directory.
- `concourse`: plain runc with the OCI spec of Concourse's containerd runtime (worker_spec.py):
  no cgroup namespace, few devices, 38 capabilities, gdn-init as PID 1, `out` exec'd with cwd
  `/`, an abort signalling only `out`.
- `guardian`: the same with Guardian's differences: `/sys` read-only and no cgroup mount, cwd
  `/root`, an abort signalling every process in the container each second.

So the tests, `make try` and the benchmarks drive the real image through the real entry points,
in the container a worker really makes.

    python3 tests/harness.py out --image compose-env:dev --put-dir example/put --request example/request.json [--runtime
    concourse]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_container import WorkerContainer, cgroup_dir_of

PUT_DIR = "/tmp/build/put"
RUNTIMES = ("docker", "concourse", "guardian")
DEFAULT_RUNTIME = os.environ.get("HARNESS_RUNTIME", "docker")
#: The capability set that runs Docker-in-Docker where --privileged cannot (a bounding
#: set without CAP_SYS_RESOURCE makes `--privileged` fail with "unable to apply caps").
PRIVILEGED_FALLBACK = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
]  # fmt: skip
DEFAULT_BUILD_ENV = {
    "BUILD_ID": "42",
    "BUILD_NAME": "7",
    "BUILD_JOB_NAME": "integration",
    "BUILD_PIPELINE_NAME": "compose-env-tests",
    "BUILD_TEAM_NAME": "main",
    "ATC_EXTERNAL_URL": "http://concourse.example",
}
# What runs and what is mounted in the container; compared with the same list taken when the
# container was new, so whatever a script leaves behind shows (the harness's own keep-alive excepted).
STATE_PROBE = r"""
import os
me = os.getpid()
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) in (1, me):
        continue
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        continue
    if cmdline and cmdline != "sleep infinity":
        print(f"process {pid} {cmdline}")
for line in open("/proc/self/mountinfo"):
    print("mount " + line.split()[4])
"""


@dataclass
class RunOutcome:
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    leftovers: list[str] = field(default_factory=list)
    signal_to_exit: float | None = None

    @property
    def response(self) -> Any:
        text = self.stdout.strip()
        return json.loads(text) if text else None

    def metadata(self) -> dict[str, str]:
        return {item["name"]: item["value"] for item in (self.response or {}).get("metadata", [])}


_privilege_flags: list[str] | None = None


def privilege_flags(image: str, docker: str = "docker") -> list[str]:
    """`--privileged` where the engine allows it, else the equivalent capability set."""
    global _privilege_flags
    if _privilege_flags is None:
        probe = subprocess.run(
            [docker, "run", "--rm", "--privileged", "--entrypoint", "true", image], capture_output=True, text=True
        )
        _privilege_flags = ["--privileged"] if probe.returncode == 0 else PRIVILEGED_FALLBACK
    return list(_privilege_flags)


class ResourceContainer:
    """A long-lived resource container into which scripts are exec'd (the runtimes differ in how)."""

    runtime = ""
    #: What the script's working directory is when the caller does not say.
    default_workdir = "/"
    #: What the container left on the host once removed (runtimes that can tell).
    host_leftovers: list[str]

    def __init__(self) -> None:
        self.host_leftovers = []
        self._baseline: set[str] = set()

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        workdir: str | None = None,
        stdin: str | None = None,
        sigterm_when: str | None = None,
        at_line: Mapping[str, Callable[[], None]] = {},
        timeout: float = 900,
    ) -> RunOutcome:
        """Run a script; SIGTERM it (as this runtime's abort does) once its log shows a line.

        `at_line` calls each function once, the first time its text shows in the log (before a
        `sigterm_when` on the same line signals).
        """
        pid_file = f"/tmp/harness-exec-{uuid.uuid4().hex[:8]}.pid"
        command = self.exec_argv(argv, env, workdir or self.default_workdir, pid_file)
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        signalled_at: list[float] = []
        lock = threading.Lock()

        def abort_once() -> None:
            with lock:
                if signalled_at or process.poll() is not None:
                    return
                signalled_at.append(time.monotonic())
            self.abort(argv[0], pid_file, process)

        stderr_lines: list[str] = []
        waiting = dict(at_line)

        def read_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                stderr_lines.append(line)
                for text in [text for text in waiting if text in line]:
                    waiting.pop(text)()
                if sigterm_when is not None and sigterm_when in line:
                    abort_once()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(stdin or "")
            process.stdin.close()
            stdout = process.stdout.read()
            process.wait()
            reader.join()
        finally:
            killer.cancel()
            if os.path.exists(pid_file):
                os.unlink(pid_file)
        ended = time.monotonic()
        signal_to_exit = ended - signalled_at[0] if signalled_at else None
        return RunOutcome(
            process.returncode, stdout, "".join(stderr_lines), ended - started, self.leftovers(), signal_to_exit
        )

    def exec_argv(self, argv: Sequence[str], env: Mapping[str, str], workdir: str, pid_file: str) -> list[str]:
        raise NotImplementedError

    def abort(self, script: str, pid_file: str, process: subprocess.Popen[str]) -> None:
        raise NotImplementedError

    def probe(self, code: str) -> list[str]:
        raise NotImplementedError

    def host_cgroup(self) -> Path:
        """The container's cgroup as the host sees it (v2, or the pids hierarchy on v1)."""
        raise NotImplementedError

    def take_baseline(self) -> None:
        self._baseline = set(self.probe(STATE_PROBE))

    def leftovers(self) -> list[str]:
        """Processes and mounts in the container that were not there when it was new."""
        return [line for line in self.probe(STATE_PROBE) if line not in self._baseline]

    def remove(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ResourceContainer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


class Container(ResourceContainer):
    """The `docker` runtime: `docker run --privileged --init`, then `docker exec`."""

    runtime = "docker"
    default_workdir = PUT_DIR

    def __init__(
        self,
        image: str,
        mounts: Sequence[tuple[str, str, bool]] = (),
        privileged: bool = True,
        docker: str = "docker",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.docker = docker
        self.name = f"compose-env-harness-{uuid.uuid4().hex[:10]}"
        argv = [
            docker,
            "run",
            "-d",
            "--init",
            "--name",
            self.name,
            "--mount",
            "type=volume,dst=/scratch",
            "--label",
            "compose-env-harness=1",
        ]
        if privileged:
            argv += privilege_flags(image, docker)
        for host, target, read_only in mounts:
            argv += [
                "--mount",
                f"type=bind,src={os.path.abspath(host)},dst={target}" + (",readonly" if read_only else ""),
            ]
        argv += [*extra_args, "--entrypoint", "sleep", image, "infinity"]
        started = subprocess.run(argv, capture_output=True, text=True)
        if started.returncode != 0:
            raise RuntimeError(f"docker run of the resource container failed: {started.stderr.strip()}")
        self.take_baseline()

    def exec_argv(self, argv: Sequence[str], env: Mapping[str, str], workdir: str, pid_file: str) -> list[str]:
        command = [self.docker, "exec", "-i", "-w", workdir]
        for key, value in env.items():
            command += ["-e", f"{key}={value}"]
        return [*command, self.name, *argv]

    def abort(self, script: str, pid_file: str, process: subprocess.Popen[str]) -> None:
        """SIGTERM to the script's process only, as Concourse's containerd runtime does."""
        finder = (
            "for p in /proc/[0-9]*; do "
            f'if tr "\\0" " " < $p/cmdline 2>/dev/null | grep -q "^python3 {script}\\|^/usr/bin/python3 {script}"; '
            "then kill -TERM ${p#/proc/}; fi; done"
        )
        subprocess.run([self.docker, "exec", self.name, "sh", "-c", finder], capture_output=True)

    def probe(self, code: str) -> list[str]:
        result = subprocess.run([self.docker, "exec", self.name, "python3", "-c", code], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"probing the container failed: {result.stderr.strip()}")
        return [line for line in result.stdout.splitlines() if line.strip()]

    def host_cgroup(self) -> Path:
        pid = subprocess.run(
            [self.docker, "inspect", "-f", "{{.State.Pid}}", self.name], capture_output=True, text=True, check=True
        ).stdout
        return cgroup_dir_of(int(pid))

    def remove(self) -> None:
        subprocess.run([self.docker, "rm", "-f", "-v", self.name], capture_output=True)


class WorkerRuntimeContainer(ResourceContainer):
    """The `concourse` and `guardian` runtimes: runc with a worker's spec (worker_container.py)."""

    def __init__(
        self,
        image: str,
        mounts: Sequence[tuple[str, str, bool]] = (),
        *,
        runtime: str,
        docker: str = "docker",
        strict_devices: bool = False,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.worker = WorkerContainer(image, mounts, flavour=runtime, docker=docker, strict_devices=strict_devices)
        self.default_workdir = "/" if runtime == "concourse" else "/root"
        self.take_baseline()

    def exec_argv(self, argv: Sequence[str], env: Mapping[str, str], workdir: str, pid_file: str) -> list[str]:
        return self.worker.exec_argv(argv, env, workdir, pid_file)

    def abort(self, script: str, pid_file: str, process: subprocess.Popen[str]) -> None:
        self.worker.abort(pid_file, process)

    def probe(self, code: str) -> list[str]:
        return self.worker.probe(code)

    def host_cgroup(self) -> Path:
        return self.worker.cgroup_dir()

    def remove(self) -> None:
        self.worker.remove()
        self.host_leftovers = self.worker.host_leftovers


def open_container(
    image: str,
    mounts: Sequence[tuple[str, str, bool]] = (),
    *,
    runtime: str = DEFAULT_RUNTIME,
    privileged: bool = True,
    extra_args: Sequence[str] = (),
    strict_devices: bool = False,
) -> ResourceContainer:
    """A resource container made by `runtime` (docker, concourse or guardian)."""
    if runtime == "docker":
        return Container(image, mounts, privileged, extra_args=extra_args)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    if not privileged or extra_args:
        raise ValueError(f"the {runtime} runtime makes privileged containers only, with no docker flags")
    return WorkerRuntimeContainer(image, mounts, runtime=runtime, strict_devices=strict_devices)


@contextmanager
def removed_after(container: ResourceContainer, outcomes: list[RunOutcome]) -> Iterator[ResourceContainer]:
    """Remove the container at the end, and add what it left on the host to each outcome's leftovers."""
    try:
        yield container
    finally:
        container.remove()
        for outcome in outcomes:
            outcome.leftovers += [f"host: {item}" for item in container.host_leftovers]


def run_script(
    image: str,
    script: str,
    request: Mapping[str, Any] | str | None,
    *,
    put_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    privileged: bool = True,
    sigterm_when: str | None = None,
    dest_dir: str = "/tmp/build/get",
    runtime: str = DEFAULT_RUNTIME,
    strict_devices: bool = False,
    at_line: Mapping[str, Callable[[ResourceContainer], None]] = {},
) -> RunOutcome:
    """Run check, in or out once in a fresh container, like one Concourse step.

    `at_line`: functions called with the container the first time their text shows in the log.
    """
    mounts = [(put_dir, PUT_DIR, True)] if put_dir else []
    stdin = request if isinstance(request, str) else json.dumps(request if request is not None else {})
    build_env = {} if script == "check" else {**DEFAULT_BUILD_ENV, **(env or {})}
    argv = {
        "check": ["/opt/resource/check"],
        "in": ["/opt/resource/in", dest_dir],
        "out": ["/opt/resource/out", PUT_DIR],
    }[script]
    outcomes: list[RunOutcome] = []
    container = open_container(image, mounts, runtime=runtime, privileged=privileged, strict_devices=strict_devices)
    with removed_after(container, outcomes):
        workdir = None if put_dir or runtime != "docker" else "/"
        calls = {text: functools.partial(function, container) for text, function in at_line.items()}
        outcomes.append(
            container.exec(argv, env=build_env, stdin=stdin, sigterm_when=sigterm_when, workdir=workdir, at_line=calls)
        )
    return outcomes[0]


def run_task(
    image: str,
    inputs: Mapping[str, str],
    output_dir: str,
    compose_env: Mapping[str, Any],
    *,
    output_name: str = "compose-env-output",
    env: Mapping[str, str] | None = None,
    runtime: str = DEFAULT_RUNTIME,
    caches: Mapping[str, str] = {},
) -> RunOutcome:
    """Like `fly execute -c tasks/compose-env.yml -i NAME=DIR -o OUTPUT=DIR`: inputs, the output and caches under the
    working dir.

    Concourse gives tasks no BUILD_* variables, so neither does this (unless `env` sets them).
    `caches` maps a task cache's path to the host directory that holds it (a volume on the worker's disk).
    """
    workdir = "/tmp/build/task"
    mounts = [(host, f"{workdir}/{name}", True) for name, host in inputs.items()]
    mounts.append((output_dir, f"{workdir}/{output_name}", False))
    mounts += [(host, f"{workdir}/{path}", False) for path, host in caches.items()]
    task_env = {**(env or {}), "COMPOSE_ENV": json.dumps(compose_env)}
    outcomes: list[RunOutcome] = []
    with removed_after(open_container(image, mounts, runtime=runtime), outcomes) as container:
        outcomes.append(container.exec(["/opt/resource/task"], env=task_env, workdir=workdir))
    return outcomes[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", choices=["check", "in", "out"])
    parser.add_argument("--image", default=os.environ.get("IMAGE", "compose-env:dev"))
    parser.add_argument("--put-dir", help="the directory mounted at /tmp/build/put (the put's inputs)")
    parser.add_argument("--request", required=True, help="a JSON file with source/params (and version)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=DEFAULT_RUNTIME,
        help="who makes the container (default: docker, or $HARNESS_RUNTIME)",
    )
    args = parser.parse_args()
    outcome = run_script(
        args.image, args.script, Path(args.request).read_text(), put_dir=args.put_dir, runtime=args.runtime
    )
    sys.stderr.write(outcome.stderr)
    sys.stdout.write(outcome.stdout)
    print(
        f"harness: exit code {outcome.exit_code} in {outcome.duration:.1f}s ({args.runtime} runtime)"
        + (f"; left behind: {outcome.leftovers}" if outcome.leftovers else ""),
        file=sys.stderr,
    )
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())

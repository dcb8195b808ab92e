"""Run the resource image the way Concourse does: a privileged container, then exec of /opt/resource/*.

Concourse (containerd runtime) creates the container with its own init, mounts a fresh
volume at /scratch and every input under /tmp/build/put, then execs the script with the
request on stdin. This harness does the same against any Docker engine, so the tests,
`make try` and the benchmarks drive the real image through the real entry points.

    python3 tests/harness.py out --image compose-env:dev --put-dir example/put --request example/request.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PUT_DIR = "/tmp/build/put"
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
# Lists what is still running or mounted inside the container after the script exits.
LEFTOVER_PROBE = r"""
import os
names = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy", "docker", "fuse-overlayfs", "runc")
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        continue
    if comm in names:
        print(f"process {pid} {comm}")
for line in open("/proc/self/mountinfo"):
    point = line.split()[4]
    if point.startswith(("/scratch/", "/run/compose-env", "/var/lib/docker")):
        print(f"mount {point}")
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
        probe = subprocess.run([docker, "run", "--rm", "--privileged", "--entrypoint", "true", image], capture_output=True, text=True)
        _privilege_flags = ["--privileged"] if probe.returncode == 0 else PRIVILEGED_FALLBACK
    return list(_privilege_flags)


class Container:
    """A long-lived resource container (init + sleep), into which scripts are exec'd."""

    def __init__(
        self, image: str, mounts: Sequence[tuple[str, str, bool]] = (), privileged: bool = True, docker: str = "docker", extra_args: Sequence[str] = ()
    ) -> None:
        self.docker = docker
        self.name = f"compose-env-harness-{uuid.uuid4().hex[:10]}"
        argv = [docker, "run", "-d", "--init", "--name", self.name, "--mount", "type=volume,dst=/scratch", "--label", "compose-env-harness=1"]
        if privileged:
            argv += privilege_flags(image, docker)
        for host, target, read_only in mounts:
            argv += ["--mount", f"type=bind,src={os.path.abspath(host)},dst={target}" + (",readonly" if read_only else "")]
        argv += [*extra_args, "--entrypoint", "sleep", image, "infinity"]
        started = subprocess.run(argv, capture_output=True, text=True)
        if started.returncode != 0:
            raise RuntimeError(f"docker run of the resource container failed: {started.stderr.strip()}")

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        workdir: str = PUT_DIR,
        stdin: str | None = None,
        sigterm_after: float | None = None,
        timeout: float = 900,
    ) -> RunOutcome:
        command = [self.docker, "exec", "-i", "-w", workdir]
        for key, value in env.items():
            command += ["-e", f"{key}={value}"]
        command += [self.name, *argv]
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        signalled_at: list[float] = []
        if sigterm_after is not None:
            timer = threading.Timer(sigterm_after, self._terminate, args=(argv[0], signalled_at))
            timer.start()
        stdout, stderr = process.communicate(stdin or "", timeout=timeout)
        ended = time.monotonic()
        signal_to_exit = ended - signalled_at[0] if signalled_at else None
        return RunOutcome(process.returncode, stdout, stderr, ended - started, self.leftovers(), signal_to_exit)

    def _terminate(self, script: str, signalled_at: list[float]) -> None:
        """SIGTERM to the script's process only, as Concourse's containerd runtime does."""
        finder = (
            "for p in /proc/[0-9]*; do "
            f'if tr "\\0" " " < $p/cmdline 2>/dev/null | grep -q "^python3 {script}\\|^/usr/bin/python3 {script}"; '
            "then kill -TERM ${p#/proc/}; fi; done"
        )
        signalled_at.append(time.monotonic())
        subprocess.run([self.docker, "exec", self.name, "sh", "-c", finder], capture_output=True)

    def leftovers(self) -> list[str]:
        probe = subprocess.run([self.docker, "exec", self.name, "python3", "-c", LEFTOVER_PROBE], capture_output=True, text=True)
        return [line for line in probe.stdout.splitlines() if line.strip()]

    def remove(self) -> None:
        subprocess.run([self.docker, "rm", "-f", "-v", self.name], capture_output=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


def run_script(
    image: str,
    script: str,
    request: Mapping[str, Any] | str | None,
    *,
    put_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    privileged: bool = True,
    sigterm_after: float | None = None,
    dest_dir: str = "/tmp/build/get",
) -> RunOutcome:
    """Run check, in or out once in a fresh container, like one Concourse step."""
    mounts = [(put_dir, PUT_DIR, True)] if put_dir else []
    stdin = request if isinstance(request, str) else json.dumps(request if request is not None else {})
    build_env = {} if script == "check" else {**DEFAULT_BUILD_ENV, **(env or {})}
    argv = {"check": ["/opt/resource/check"], "in": ["/opt/resource/in", dest_dir], "out": ["/opt/resource/out", PUT_DIR]}[script]
    with Container(image, mounts, privileged) as container:
        return container.exec(argv, env=build_env, stdin=stdin, sigterm_after=sigterm_after, workdir=PUT_DIR if put_dir else "/")


def run_task(
    image: str,
    inputs: Mapping[str, str],
    output_dir: str,
    compose_env: Mapping[str, Any],
    *,
    output_name: str = "compose-env-output",
    env: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Like `fly execute -c tasks/compose-env.yml -i NAME=DIR -o OUTPUT=DIR`: inputs and the output under the working dir.

    Concourse gives tasks no BUILD_* variables, so neither does this (unless `env` sets them).
    """
    workdir = "/tmp/build/task"
    mounts = [(host, f"{workdir}/{name}", True) for name, host in inputs.items()]
    mounts.append((output_dir, f"{workdir}/{output_name}", False))
    task_env = {**(env or {}), "COMPOSE_ENV": json.dumps(compose_env)}
    with Container(image, mounts) as container:
        return container.exec(["/opt/resource/task"], env=task_env, workdir=workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", choices=["check", "in", "out"])
    parser.add_argument("--image", default=os.environ.get("IMAGE", "compose-env:dev"))
    parser.add_argument("--put-dir", help="the directory mounted at /tmp/build/put (the put's inputs)")
    parser.add_argument("--request", required=True, help="a JSON file with source/params (and version)")
    args = parser.parse_args()
    outcome = run_script(args.image, args.script, Path(args.request).read_text(), put_dir=args.put_dir)
    sys.stderr.write(outcome.stderr)
    sys.stdout.write(outcome.stdout)
    print(
        f"harness: exit code {outcome.exit_code} in {outcome.duration:.1f}s" + (f"; left running: {outcome.leftovers}" if outcome.leftovers else ""),
        file=sys.stderr,
    )
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())

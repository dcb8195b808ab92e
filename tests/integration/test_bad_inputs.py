"""Every bad input gets a clear answer: exit code, the key phrase and the parameter path on
stderr, nothing on stdout, no traceback, and nothing left running.

The rows run against the real image. Rows that fail before the daemon starts are cheap and
share one container; rows that get as far as starting the daemon (runtime rows) run a real
put each, in the same container, and the leftovers probe runs after every one of them.
A row with `needs` expects a message that another module does not give yet: it is an
expected failure (strict) until that module says it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import PUT_DIR, Container, ResourceContainer, RunOutcome, open_container, run_script
from image_fixtures import parts_from_docker_save
from producers import docker_image_resource_dir

DATA = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
TINY = "compose-env-test/tiny:ci"
APP = {"compose_files": ["app/docker-compose.yml"], "images": ["tiny.tar"]}
SMALL_TMPFS = "/small"
SMALL_TMPFS_BYTES = 32 * 2**20
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Row:
    name: str
    stdin: dict[str, Any] | str
    exit_code: int
    phrases: tuple[str, ...]
    script: str = "out"
    #: "module: the message it must give", for a message another module does not give yet.
    needs: str = ""
    env: dict[str, str] = field(default_factory=dict)


def put(params: dict[str, Any] | None = None, source: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"source": source or {}, **extra}
    if params is not None:
        request["params"] = params
    return request


BEFORE_DAEMON_ROWS = [
    # stdin and the request itself
    Row(
        "stdin-not-json",
        "compose_files: app/docker-compose.yml",
        2,
        ("stdin: is not valid JSON", "expected a JSON request"),
    ),
    Row("stdin-a-list", "[1, 2]", 2, ("stdin: must be a JSON object",)),
    Row("stdin-empty", "", 2, ("stdin: is empty",)),
    Row("request-unknown-key", {"source": {}, "parms": APP}, 2, ("parms: unknown key", "did you mean 'params'?")),
    # source
    Row(
        "source-unknown-nested-key",
        put(APP, {"dockerd": {"storage_drvier": "vfs"}}),
        2,
        ("source.dockerd.storage_drvier: unknown key", "'storage_driver'"),
    ),
    Row(
        "source-wrong-type",
        put(APP, {"startup_timeout": "60"}),
        2,
        ("source.startup_timeout: must be a number, got a string",),
    ),
    Row(
        "source-bad-choice",
        put(APP, {"dockerd": {"data_root_medium": "ram"}}),
        2,
        ("source.dockerd.data_root_medium: must be one of auto, memory, disk",),
    ),
    Row(
        "source-registry-no-password",
        put(APP, {"registries": [{"host": "r.example", "username": "ci"}]}),
        2,
        ("source.registries[0].password: is required",),
    ),
    Row(
        "source-docker-host-no-scheme",
        put(APP, {"docker_host": "localhost:2375"}),
        2,
        ("source.docker_host: expected an engine address",),
    ),
    Row(
        "source-tls-without-host",
        put(APP, {"tls": {"ca": "x"}}),
        2,
        ("source.tls: is only used with source.docker_host",),
    ),
    Row(
        "source-mtu-too-small",
        put(APP, {"dockerd": {"mtu": 100}}),
        2,
        ("source.dockerd.mtu: must be at least 576, got 100",),
    ),
    Row(
        "source-params-unknown-key",
        put(APP, {"params": {"compose_file": "x.yml"}}),
        2,
        ("source.params.compose_file: unknown key", "'compose_files'"),
    ),
    Row(
        "source-params-not-object",
        put(APP, {"params": ["x.yml"]}),
        2,
        ("source.params: expected an object of default put params",),
    ),
    Row(
        "check-validates-source",
        {"source": {"dockerd": {"storage_drvier": "vfs"}}},
        2,
        ("source.dockerd.storage_drvier: unknown key",),
        "check",
    ),
    # params
    Row("params-missing", put(None), 2, ("params.compose_files: is required", "name the compose file(s)")),
    Row(
        "params-typo",
        put({"compose_file": "app/docker-compose.yml"}),
        2,
        ("params.compose_file: unknown key", "did you mean 'compose_files'?"),
    ),
    Row(
        "params-image-not-path",
        put({**APP, "images": ["tiny.tar", "tiny.tar", 42]}),
        2,
        ("params.images[2]: expected a path or {path, tag}, got 42",),
    ),
    Row(
        "params-image-tag-typo",
        put({**APP, "images": [{"path": "tiny.tar", "tags": TINY}]}),
        2,
        ("params.images[0].tags: unknown key", "'tag'"),
    ),
    Row(
        "params-image-tag-number",
        put({**APP, "images": [{"path": "tiny.tar", "tag": 5}]}),
        2,
        ("params.images[0].tag: expected a string or a list of strings",),
    ),
    Row(
        "params-image-tag-invalid",
        put({**APP, "images": [{"path": "tiny.tar", "tag": "Not Valid:1"}]}),
        2,
        ("params.images[0].tag", "not a valid image reference"),
    ),
    Row(
        "params-timeout-words",
        put({**APP, "timeout": "soon"}),
        2,
        ('params.timeout: expected a duration such as "90s"',),
    ),
    Row("params-timeout-zero", put({**APP, "timeout": 0}), 2, ("params.timeout: must be more than 0",)),
    Row(
        "params-env-null",
        put({**APP, "env": {"PORT": None}}),
        2,
        ("params.env.PORT: expected a string, number or boolean, got null",),
    ),
    Row(
        "params-docker-socket-remote",
        put({**APP, "docker_socket": ["app"]}, {"docker_host": "tcp://engine:2375"}),
        2,
        ("params.docker_socket: cannot hand out the engine at tcp://engine:2375 (source.docker_host)",),
    ),
    Row("params-command-empty", put({**APP, "command": ""}), 2, ("params.command: must not be empty",)),
    Row(
        "params-command-quotes",
        put({**APP, "command": "run 'app"}),
        2,
        ("params.command: cannot split", "check the quotes"),
    ),
    Row("params-logs-typo", put({**APP, "logs": {"tial": 5}}), 2, ("params.logs.tial: unknown key", "'tail'")),
    Row(
        "params-project-name",
        put({**APP, "project_name": "My Project"}),
        2,
        ("params.project_name: expected a compose project name",),
    ),
    Row(
        "params-bool-as-string", put({**APP, "fail_on_error": "false"}), 2, ("params.fail_on_error: must be a boolean",)
    ),
    Row(
        "task-compose-env-typo",
        "",
        2,
        ("COMPOSE_ENV.compose_file: unknown key", "did you mean 'compose_files'?"),
        "task",
        env={"COMPOSE_ENV": json.dumps({"compose_file": "app/docker-compose.yml"})},
    ),
    Row("in-without-version", {"source": {}}, 2, ("version: is required",), "in"),
    Row(
        "in-with-params",
        {"source": {}, "version": {"id": "1"}, "params": {"skip_download": True}},
        2,
        ("params.skip_download: unknown key",),
        "in",
    ),
    # files
    Row(
        "path-dotdot",
        put({"compose_files": "../../../etc/hostname"}),
        2,
        ("params.compose_files: '../../../etc/hostname' is a path that leads outside the put directory",),
    ),
    Row(
        "path-absolute",
        put({"compose_files": ["/etc/hostname"]}),
        2,
        ("params.compose_files[0]: '/etc/hostname' is an absolute path outside the put directory",),
    ),
    Row(
        "path-symlink-out",
        put({"compose_files": ["escape.yml"]}),
        2,
        ("params.compose_files[0]: 'escape.yml' is a symlink that leads outside the put directory",),
    ),
    Row(
        "path-image-symlink-out",
        put({**APP, "images": ["usr-link"]}),
        2,
        ("params.images[0]: 'usr-link' is a symlink that leads outside",),
    ),
    Row(
        "path-typo",
        put({"compose_files": ["app/docker-compose.yaml"]}),
        2,
        ("params.compose_files[0]: no such file", "did you mean app/docker-compose.yml?"),
    ),
    Row(
        "path-input-missing",
        put({"compose_files": ["repo/docker-compose.yml"]}),
        2,
        ("no such file: repo/docker-compose.yml", "Is 'repo' among the put's `inputs`?"),
    ),
    Row(
        "path-directory-not-file",
        put({"compose_files": ["app"]}),
        2,
        ("params.compose_files[0]: app is not a file but a directory",),
    ),
    Row(
        "path-env-file-missing",
        put({**APP, "env_files": ["app/missing.env"]}),
        2,
        ("params.env_files[0]: no such file: app/missing.env",),
    ),
    Row(
        "path-project-dir-a-file",
        put({**APP, "project_directory": "app/good.env"}),
        2,
        ("params.project_directory: app/good.env is not a directory",),
    ),
    Row(
        "path-source-params-outside",
        put(None, {"params": {"compose_files": "/etc/hostname"}}),
        2,
        ("source.params.compose_files: '/etc/hostname' is an absolute path outside",),
    ),
    Row(
        "image-not-a-tar",
        put({**APP, "images": ["not-an-image.txt"]}),
        2,
        ("params.images[0]", "not an image: not a tar archive"),
    ),
    Row(
        "image-dir-without-image",
        put({**APP, "images": ["not-an-image-dir"]}),
        2,
        ("params.images[0]", "is not an image: no image.tar"),
    ),
    Row(
        "image-rootfs-bad-metadata",
        put({**APP, "images": ["rootfs-bad"]}),
        2,
        ("params.images[0]", "metadata.json is not valid JSON"),
    ),
    Row(
        "image-truncated",
        put({**APP, "images": ["truncated.tar"]}),
        1,
        ("params.images[0] (truncated.tar)", "is truncated", "re-run the step that produced it"),
    ),
    Row(
        "image-truncated-beside-rootfs",
        put({**APP, "images": ["docker-image-cut"]}),
        1,
        (
            "params.images[0] (docker-image-cut): image is truncated",
            "re-run the step that produced it",
            "the rootfs/ beside it is not used in its place: it is not the image the step saved",
        ),
    ),
    Row(
        "compose-invalid-yaml",
        put({"compose_files": ["broken-yaml/docker-compose.yml"]}),
        2,
        ("error: params.compose_files[0] (broken-yaml/docker-compose.yml), line 2: did not find expected",),
    ),
    Row(
        "compose-second-of-two-files-invalid-yaml",
        put({"compose_files": ["app/docker-compose.yml", "broken-yaml/docker-compose.yml"]}),
        2,
        ("error: params.compose_files[1] (broken-yaml/docker-compose.yml), line 2: did not find expected ',' or ']'",),
    ),
    Row(
        "env-file-invalid",
        put({**APP, "env_files": ["app/good.env", "app/broken.env"]}),
        2,
        ('error: params.env_files[1] (app/broken.env), line 2: unexpected character "\\"" in variable name',),
    ),
    Row(
        "containerd-snapshotter-with-direct-writes",
        put(APP, {"dockerd": {"args": ["--feature", "containerd-snapshotter"]}}),
        2,
        (
            "error: source.dockerd.args: --feature containerd-snapshotter cannot be used with direct writes",
            "direct_load: false",
        ),
    ),
    Row(
        "command-unknown-service",
        put({**APP, "command": ["run", "--rm", "nope"]}),
        2,
        ("params.command: unknown service 'nope'", "services in the project: app"),
    ),
    Row(
        "docker-socket-unknown-service",
        put({**APP, "docker_socket": ["apq"]}),
        2,
        ("params.docker_socket[0]: unknown service 'apq'", "did you mean 'app'?"),
    ),
]

SCRATCH_DATA_ROOT = {"data_root": f"{SMALL_TMPFS}/docker", "data_root_medium": "disk"}
DAEMON_ROWS = [
    Row(
        "daemon-rejects-flag",
        put(APP, {"dockerd": {"args": ["--bogus-flag"]}}),
        1,
        (
            "the inner Docker daemon did not start",
            "unknown flag: --bogus-flag",
            "dockerd rejected a flag: check source.dockerd.args",
        ),
    ),
    Row(
        "data-root-out-of-space",
        put({**APP, "images": ["big.tar"]}, {"dockerd": SCRATCH_DATA_ROOT}),
        1,
        ("the data root /small/docker is out of space", "params.images", "MiB free", "source.dockerd.data_root"),
    ),
    Row(
        "tarball-corrupt",
        put({**APP, "images": ["corrupt.tar"]}),
        1,
        (
            "params.images[0] (corrupt.tar): docker load failed",
            "the file is damaged",
            "re-run the step that produced it",
        ),
    ),
    Row(
        "service-image-missing",
        put({"compose_files": ["missing-image/docker-compose.yml"], "images": ["tiny.tar"]}),
        2,
        (
            "params.images: service app needs image compose-env-test/absent:1.0",
            "add the artifact that holds it to params.images",
        ),
    ),
    Row(
        "port-conflict",
        put({"compose_files": ["ports/docker-compose.yml"], "images": ["tiny.tar"]}),
        1,
        ("port is already allocated", "host port 18080", "change or remove one of the published ports"),
    ),
    Row(
        "timeout",
        put({**APP, "command": ["run", "--rm", "app", "sleep", "60"], "timeout": "3s"}),
        1,
        ("timed out after 3s (params.timeout)", "timed_out", "raise params.timeout"),
    ),
]


def _rows(rows: list[Row]) -> list[Any]:
    return [
        pytest.param(row, id=row.name, marks=[pytest.mark.xfail(reason=row.needs, strict=True)] if row.needs else [])
        for row in rows
    ]


def _save(image: str, target: Path) -> None:
    subprocess.run(["docker", "save", image, "-o", str(target)], check=True, capture_output=True)


def _corrupt_layers(source: Path, target: Path) -> None:
    """The same tar with every layer's bytes overwritten: the structure is intact, the content is not."""
    with tarfile.open(source) as original, tarfile.open(target, "w") as corrupt:
        for member in original:
            data = original.extractfile(member) if member.isfile() else None
            if data is not None and member.name.endswith("layer.tar"):
                corrupt.addfile(member, _Repeating(b"\xde\xad\xbe\xef", member.size))
            else:
                corrupt.addfile(member, data)


class _Repeating:
    def __init__(self, pattern: bytes, size: int) -> None:
        self.data = (pattern * (size // len(pattern) + 1))[:size]
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk, self.offset = self.data[self.offset : end], min(end, len(self.data))
        return chunk


def build_put_dir(put_dir: Path) -> Path:
    """tests/data/bad_inputs/put plus what cannot live in git: image tarballs (built from the base image), damaged
    copies of them, a docker-image-resource output, symlinks."""
    shutil.copytree(DATA / "put", put_dir)
    for target in ("tiny", "big"):
        subprocess.run(
            ["docker", "build", "-q", "--target", target, "-t", f"compose-env-test/{target}:ci", str(DATA)],
            check=True,
            capture_output=True,
        )
        _save(f"compose-env-test/{target}:ci", put_dir / f"{target}.tar")
    _corrupt_layers(put_dir / "tiny.tar", put_dir / "corrupt.tar")
    whole = (put_dir / "tiny.tar").read_bytes()
    (put_dir / "truncated.tar").write_bytes(whole[: len(whole) // 2])
    # A docker-image-resource get with `save: true` whose `image` was cut short: its rootfs/ is whole.
    parts = parts_from_docker_save(put_dir / "tiny.tar", put_dir.parent / "tiny-parts")
    cut = docker_image_resource_dir(parts, put_dir / "docker-image-cut", "compose-env-test/tiny", "ci")
    shutil.copyfile(put_dir / "truncated.tar", cut / "image")
    os.symlink("/etc/hostname", put_dir / "escape.yml")
    os.symlink("/usr", put_dir / "usr-link")
    return put_dir


@pytest.fixture(scope="module")
def bad_put_dir(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return build_put_dir(tmp_path_factory.mktemp("bad-inputs") / "put")


def resource_container(image: str, put_dir: Path) -> Container:
    """A privileged resource container: the put dir read-only as Concourse mounts inputs, and a small tmpfs for the
    out-of-space row."""
    tmpfs = f"type=tmpfs,dst={SMALL_TMPFS},tmpfs-size={SMALL_TMPFS_BYTES}"
    return Container(image, [(str(put_dir), PUT_DIR, True)], extra_args=["--mount", tmpfs])


@pytest.fixture(scope="module")
def shared_resource(image: str, bad_put_dir: Path) -> Iterator[Container]:
    """One container for every row that fails before the daemon starts: they are cheap and leave nothing behind."""
    with resource_container(image, bad_put_dir) as container:
        yield container


@pytest.fixture
def resource(image: str, bad_put_dir: Path) -> Iterator[Container]:
    """A fresh container per daemon row, so that what one row leaves behind is blamed on that row only."""
    with resource_container(image, bad_put_dir) as container:
        yield container


def run_row(container: ResourceContainer, row: Row) -> RunOutcome:
    argv = {
        "check": ["/opt/resource/check"],
        "in": ["/opt/resource/in", "/tmp/build/get"],
        "out": ["/opt/resource/out", PUT_DIR],
        "task": ["/opt/resource/task"],
    }[row.script]
    stdin = row.stdin if isinstance(row.stdin, str) else json.dumps(row.stdin)
    env = {} if row.script == "check" else {"BUILD_ID": "7", "BUILD_PIPELINE_NAME": "bad-inputs", **row.env}
    return container.exec(argv, env=env, stdin=stdin, timeout=300)


def assert_clear_failure(outcome: RunOutcome, row: Row) -> None:
    log = ANSI.sub("", outcome.stderr)
    assert outcome.exit_code == row.exit_code, log
    assert outcome.stdout == "", "stdout must stay empty on error"
    for phrase in row.phrases:
        assert phrase in log, f"{phrase!r} not in stderr:\n{log}"
    assert "Traceback" not in log
    assert outcome.leftovers == [], f"left running: {outcome.leftovers}"


def first_error_line(log: str) -> str:
    return next((line for line in ANSI.sub("", log).splitlines() if line.startswith("error:")), "")


@pytest.mark.parametrize("row", _rows(BEFORE_DAEMON_ROWS))
def test_bad_input_is_refused_before_the_daemon_starts_naming_the_parameter(
    shared_resource: Container, row: Row
) -> None:
    outcome = run_row(shared_resource, row)

    assert_clear_failure(outcome, row)
    # The first error line names the parameter: what to change, in the first line of the log.
    assert row.phrases[0].split(":")[0] in first_error_line(outcome.stderr)


@pytest.mark.parametrize("row", _rows(DAEMON_ROWS))
def test_runtime_failure_says_what_to_change_and_leaves_nothing_running(resource: Container, row: Row) -> None:
    outcome = run_row(resource, row)

    assert_clear_failure(outcome, row)


def test_not_privileged_says_to_declare_the_resource_type_privileged(image: str, bad_put_dir: Path) -> None:
    outcome = run_script(image, "out", put(APP), put_dir=str(bad_put_dir), privileged=False)

    assert_clear_failure(
        outcome, Row("not-privileged", "", 1, ("this container is not privileged", "privileged: true"))
    )


def test_inputs_are_left_unchanged(resource: Container, bad_put_dir: Path) -> None:
    """The put directory is mounted read-only like Concourse's inputs; a successful put must not need to write there."""
    before = {p: p.lstat().st_mtime_ns for p in bad_put_dir.rglob("*")}

    outcome = run_row(resource, Row("passing", put(APP), 0, ()))

    assert outcome.exit_code == 0, outcome.stderr
    assert {p: p.lstat().st_mtime_ns for p in bad_put_dir.rglob("*")} == before


SECRETS = {"registry": "hunter2-registry-pass", "token": "tok-0123456789abcdef", "password": "pw-correct-horse-battery"}


def test_secrets_never_reach_stdout_or_stderr(resource: Container) -> None:
    """The service echoes its secrets; the build log must show them masked, the response not at all."""
    request = put(
        {**APP, "env": {"SECRET_TOKEN": SECRETS["token"], "DB_PASSWORD": SECRETS["password"]}},
        {"registries": [{"host": "registry.example", "username": "ci", "password": SECRETS["registry"]}]},
    )

    outcome = run_row(resource, Row("secrets", request, 0, ()))

    assert outcome.exit_code == 0, outcome.stderr
    everything = outcome.stdout + outcome.stderr
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
    assert "token=*** password=***" in ANSI.sub("", outcome.stderr)
    assert "token=*** password=***" in outcome.metadata().get("logs/app", "")


#: Rows that fail before, at and after the daemon's start: the same answers in a worker's container.
WORKER_SAMPLE = (
    "stdin-not-json",
    "params-typo",
    "path-typo",
    "compose-invalid-yaml",
    "tarball-corrupt",
    "service-image-missing",
)


@pytest.mark.parametrize("runtime", ["concourse", "guardian"])
def test_a_sample_of_bad_inputs_gets_the_same_answers_in_a_workers_container(
    image: str, bad_put_dir: Path, runtime: str
) -> None:
    rows = {row.name: row for row in BEFORE_DAEMON_ROWS + DAEMON_ROWS}
    with open_container(image, [(str(bad_put_dir), PUT_DIR, True)], runtime=runtime) as container:
        for name in WORKER_SAMPLE:
            assert_clear_failure(run_row(container, rows[name]), rows[name])

    assert container.host_leftovers == []

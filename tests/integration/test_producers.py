"""Every producer's output, laid out as its source writes it (tests/producers.py), loaded by a real put.

Each input holds its own image, built here with a CMD, ENTRYPOINT, HEALTHCHECK, WORKDIR, USER, EXPOSE,
VOLUME, STOPSIGNAL and LABEL. Its compose service gives none of them, so it runs only if the loaded image
kept them: the entrypoint writes /tmp/ready, which the image's own healthcheck tests, and the `tests`
service waits for each with `condition: service_healthy`. While `tests` runs, the loaded images'
configs are read from the inner engine and compared with the originals, field by field. A rootfs-only
input keeps what its metadata files carry (and says what it lost); its service is given the rest.
Under each worker runtime, by direct writes and by docker load.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import ResourceContainer, run_script
from image_fixtures import FIXTURE_REPOSITORY, ImageParts, build_base_image, docker, parts_from_docker
from producers import (
    docker_image_resource_dir,
    oci_build_task_dir,
    oci_layout_dir,
    registry_image_oci_dir,
    registry_image_rootfs_dir,
)

#: The fields compared, as `docker image inspect` names them.
WHOLE_CONFIG = (
    "Cmd",
    "Entrypoint",
    "Env",
    "WorkingDir",
    "User",
    "Healthcheck",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Labels",
)
SERVICE_DOCKERFILE = """
FROM {base}
WORKDIR /usr/local
RUN printf '%s\\n' 'echo "serving $2 as $(id -u) in $(pwd) greeting=$GREETING"' ': > /tmp/ready' 'exec sleep 600' \\
  > /usr/local/serve.sh
ENV GREETING=hello-{name}
WORKDIR /srv/{name}
USER app
EXPOSE 6379/tcp
VOLUME /data
STOPSIGNAL SIGINT
LABEL org.example.shape={name}
HEALTHCHECK --interval=1s --timeout=3s --retries=60 CMD ["/bin/sh", "-c", "test -f /tmp/ready"]
ENTRYPOINT ["/bin/sh", "/usr/local/serve.sh"]
CMD ["--marker", "{name}"]
"""
TESTS_COMMAND = "trap 'exit 0' TERM; echo ready-for-inspection; while :; do sleep 1; done"
#: Run in the resource container once `tests` runs: the loaded images' configs, then `tests` told to finish.
INSPECT_AND_FINISH = """
import json, subprocess
configs = {}
for name in NAMES:
    inspect = ["docker", "image", "inspect", "--format", "{{json .Config}}", name]
    out = subprocess.run(inspect, capture_output=True, text=True)
    configs[name] = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()}
listing = ["docker", "ps", "-q", "--filter", "label=com.docker.compose.service=tests"]
ids = subprocess.run(listing, capture_output=True, text=True).stdout.split()
for container in ids:
    subprocess.run(["docker", "kill", "--signal", "TERM", container], capture_output=True)
print(json.dumps(configs))
"""


@dataclass(frozen=True)
class Input:
    """One producer's output: how it is laid out, how the put is given it, what survives."""

    name: str
    lay_out: Callable[[ImageParts, Path, str], Any]
    entry: Any
    kept: tuple[str, ...] = WHOLE_CONFIG

    @property
    def image(self) -> str:
        return f"example/{self.name}:ci"

    @property
    def whole(self) -> bool:
        return "Healthcheck" in self.kept


def _real_docker_save(reference: str, target: Path, *, gzipped: bool) -> None:
    """`docker save` as the outer engine writes it (dockerd 20.10 here), gzipped or not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    saved = target.with_suffix("") if gzipped else target
    docker("save", "-o", str(saved), reference)
    if gzipped:
        with open(saved, "rb") as source, gzip.open(target, "wb", compresslevel=1) as sink:
            shutil.copyfileobj(source, sink)
        saved.unlink()


INPUTS = (
    Input(
        "dis-save",
        lambda p, d, ref: docker_image_resource_dir(
            p, d, "example/dis-save", "ci", inspect=docker("inspect", ref) + "\n"
        ),
        "dis-save",
    ),
    Input(
        "dis-save-rootfs-tar",
        lambda p, d, ref: docker_image_resource_dir(
            p, d, "example/dis-save-rootfs-tar", "ci", rootfs_tar=True, inspect=docker("inspect", ref) + "\n"
        ),
        "dis-save-rootfs-tar",
    ),
    Input(
        "dis-rootfs",
        lambda p, d, ref: docker_image_resource_dir(
            p, d, "example/dis-rootfs", "ci", save=False, inspect=docker("inspect", ref) + "\n"
        ),
        "dis-rootfs",
    ),
    Input(
        "ri-oci",
        lambda p, d, ref: registry_image_oci_dir(p, d, "example/ri-oci", "ci", "index.docker.io/example/ri-oci:ci"),
        "ri-oci",
    ),
    Input("ri-layout", lambda p, d, ref: oci_layout_dir(p, d, "example/ri-layout", "ci"), "ri-layout"),
    Input(
        "ri-rootfs-1-18",
        lambda p, d, ref: registry_image_rootfs_dir(p, d, "example/ri-rootfs-1-18", "ci", release="v1.18.0"),
        "ri-rootfs-1-18",
        ("Cmd", "Entrypoint", "Env", "User", "Labels"),
    ),
    Input(
        "ri-rootfs-1-14",
        lambda p, d, ref: registry_image_rootfs_dir(p, d, "example/ri-rootfs-1-14", "ci", release="v1.14.0"),
        "ri-rootfs-1-14",
        ("Env", "User", "Labels"),
    ),
    Input("obt", lambda p, d, ref: oci_build_task_dir(p, d / "image"), {"path": "obt", "tag": "example/obt:ci"}),
    Input(
        "obt-unpack",
        lambda p, d, ref: oci_build_task_dir(p, d / "image", unpack_rootfs=True),
        {"path": "obt-unpack/image", "tag": "example/obt-unpack:ci"},
    ),
    Input(
        "obt-oci",
        lambda p, d, ref: oci_build_task_dir(p, d / "image", output_oci=True),
        {"path": "obt-oci", "tag": "example/obt-oci:ci"},
    ),
    Input(
        "obt-target", lambda p, d, ref: oci_build_task_dir(p, d), {"path": "obt-target", "tag": "example/obt-target:ci"}
    ),
    Input(
        "obt-multi",
        lambda p, d, ref: oci_build_task_dir(p, d / "image", platforms=[("linux", "arm64"), ("linux", "amd64")]),
        {"path": "obt-multi/image", "tag": "example/obt-multi:ci"},
    ),
    Input("save-tar", lambda p, d, ref: _real_docker_save(ref, d / "save.tar", gzipped=False), "save-tar/save.tar"),
    Input("save-gz", lambda p, d, ref: _real_docker_save(ref, d / "save.tar.gz", gzipped=True), "save-gz/save.tar.gz"),
)


def _service(item: Input) -> dict[str, Any]:
    """Nothing of what the image defines, but where a rootfs lost it (its warning says so)."""
    service: dict[str, Any] = {"image": item.image}
    if "Entrypoint" not in item.kept:
        service["entrypoint"] = ["/bin/sh", "/usr/local/serve.sh"]
        service["command"] = ["--marker", item.name]
    return service


def compose_project(put: Path, inputs: tuple[Input, ...], tests_image: str) -> None:
    services = {item.name: _service(item) for item in inputs}
    services["tests"] = {
        "image": tests_image,
        "command": ["/bin/sh", "-c", TESTS_COMMAND],
        "depends_on": {
            item.name: {"condition": "service_healthy" if item.whole else "service_started"} for item in inputs
        },
    }
    (put / "src").mkdir(parents=True, exist_ok=True)
    (put / "src" / "docker-compose.yml").write_text(json.dumps({"services": services}, indent=2))


@pytest.fixture(scope="module")
def originals(image: str) -> dict[str, dict[str, Any]]:
    """Each input's image built in the outer engine: name → its `docker image inspect` Config."""
    base = build_base_image()
    configs = {}
    for item in INPUTS:
        dockerfile = SERVICE_DOCKERFILE.format(base=base, name=item.name)
        docker(
            "build",
            "-q",
            "-t",
            item.image,
            "-t",
            f"{FIXTURE_REPOSITORY}/{item.name}:latest",
            "-",
            input=dockerfile.encode(),
        )
        configs[item.name] = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", item.image))
    return configs


@pytest.fixture(scope="module")
def producers_put(tmp_path_factory: pytest.TempPathFactory, originals: dict[str, dict[str, Any]]) -> Path:
    work = tmp_path_factory.mktemp("producers")
    put = work / "put"
    for item in INPUTS:
        parts = parts_from_docker(item.image, work / "parts" / item.name)
        item.lay_out(parts, put / item.name, item.image)
    compose_project(put, INPUTS, "example/tests:ci")
    # the tests service's image, as a plain docker save
    _real_docker_save(f"{FIXTURE_REPOSITORY}/base:latest", put / "base.tar", gzipped=False)
    return put


def _normalised(config: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: config.get(name) or None for name in fields}


def _inspect_while_running(
    names: list[str], configs: dict[str, Any], errors: list[str]
) -> Callable[[ResourceContainer], None]:
    def inspect(container: ResourceContainer) -> None:
        try:
            lines = container.probe(INSPECT_AND_FINISH.replace("NAMES", repr(names)))
            configs.update(json.loads(lines[-1]))
        except Exception as error:  # the assertion below says it; the run must still end
            errors.append(repr(error))

    return lambda container: threading.Thread(target=inspect, args=(container,), daemon=True).start()


@pytest.mark.parametrize("runtime", ["docker", "concourse", "guardian"])
@pytest.mark.parametrize("direct_load", [True, False], ids=["direct-writes", "docker-load"])
def test_every_producers_output_keeps_the_config_its_shape_can_carry(
    image: str, producers_put: Path, originals: dict[str, dict[str, Any]], runtime: str, direct_load: bool
) -> None:
    put = producers_put
    images = [item.entry for item in INPUTS] + [{"path": "base.tar", "tag": "example/tests:ci"}]
    request = {
        "source": {"dockerd": {"direct_load": direct_load}},
        "params": {
            "compose_files": ["src/docker-compose.yml"],
            "images": images,
            "command": "run --rm tests",
            "timeout": "3m",
        },
    }
    loaded: dict[str, Any] = {}
    errors: list[str] = []

    outcome = run_script(
        image,
        "out",
        request,
        put_dir=str(put),
        runtime=runtime,
        at_line={"ready-for-inspection": _inspect_while_running([i.image for i in INPUTS], loaded, errors)},
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert errors == []
    services = outcome.metadata()["services"]
    for item in INPUTS:
        state = f"{item.name}=running(healthy)" if item.whole else f"{item.name}=running"
        assert state in services.split(), (item.name, services)
        assert _normalised(loaded[item.image], item.kept) == _normalised(originals[item.name], item.kept), item.name
        if not item.whole:
            lost = ("HEALTHCHECK", "WORKDIR", "EXPOSE", "VOLUME", "STOPSIGNAL")
            warning = re.search(
                rf"warning: params\.images\[\d+\] \({re.escape(str(item.entry))}\): loaded from rootfs/.*$",
                outcome.stderr,
                re.MULTILINE,
            )
            assert warning and all(word in warning.group(0) for word in lost), item.name
            assert "params: {format: oci}" in warning.group(0)
    # the richest form wins, and the log says which file was used
    assert re.search(
        r"dis-save is a docker-save tarball \(no RepoTags\); image used, not the rootfs/, metadata.json beside it",
        outcome.stderr,
    )
    assert re.search(
        r"obt-unpack/image is a .*; image.tar used, not the rootfs/, metadata.json beside it", outcome.stderr
    )
    assert (
        "dis-rootfs is a rootfs directory (archived while streaming, with docker_inspect.json's whole image config)"
        in outcome.stderr
    )
    assert outcome.leftovers == []


def test_a_dependency_compose_cannot_create_is_named_as_the_failing_service(image: str, producers_put: Path) -> None:
    """A rootfs-only image without a command: compose cannot create its container, and the report says whose it is."""
    put = producers_put.parent / "no-command"
    shutil.copytree(producers_put / "ri-rootfs-1-14", put / "ri-rootfs-1-14")
    shutil.copy2(producers_put / "base.tar", put / "base.tar")
    services = {
        "server": {"image": "example/ri-rootfs-1-14:ci"},
        "tests": {"image": "example/tests:ci", "command": ["/bin/sh", "-c", "echo never"], "depends_on": ["server"]},
    }
    (put / "src").mkdir()
    (put / "src" / "docker-compose.yml").write_text(json.dumps({"services": services}))
    request = {
        "source": {},
        "params": {
            "compose_files": ["src/docker-compose.yml"],
            "images": ["ri-rootfs-1-14", {"path": "base.tar", "tag": "example/tests:ci"}],
            "command": "run --rm tests",
        },
    }

    outcome = run_script(image, "out", request, put_dir=str(put))

    assert outcome.exit_code == 1, outcome.stderr
    assert re.search(
        r"^\s+server\s+\S+-server-1\s+not-created\s+could not be created: Error response from daemon: no command "
        r"specified$",
        outcome.stderr,
        re.M,
    )
    assert "failed: exit code 1 | server=not-created tests=not-created" in outcome.stderr
    assert "`docker compose run --rm tests` exited with code 1 (failing: server, tests)" in outcome.stderr
    assert outcome.leftovers == []

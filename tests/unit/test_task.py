"""Task mode without Docker: COMPOSE_ENV decoding and validation, `run --rm`, streamed artifact extraction,
report.json.
"""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
from compose_env.config.model import BuildMetadata
from compose_env.console import Console
from compose_env.errors import UserError
from compose_env.redaction import Redactor
from compose_env.report import RunResult, ServiceState
from compose_env.run.containers import ChunkReader
from compose_env.run.logs import ServiceLogs
from compose_env.run.outputs import ArtifactCopy, _parse_time, _seconds_between, build_report, extract_stream
from compose_env.run.put import PutOutcome
from compose_env.run.task import AfterRunCollector, TaskConfig, decode_compose_env, parse_task_config, run_task
from compose_env.signals import AbortOnSignal

PARAMS = {"compose_files": ["code/docker-compose.yml"], "command": ["run", "--rm", "tests"]}


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """A task working directory with a `code` input holding a compose file."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "docker-compose.yml").write_text("services: {tests: {image: busybox}}\n")
    return tmp_path


def parse(value: dict, work_dir: Path) -> TaskConfig:
    return parse_task_config(value, work_dir, BuildMetadata())


def problem_paths(error: pytest.ExceptionInfo[UserError]) -> list[str]:
    return [path for path, _message, _hint in error.value.problems]


# ---------------------------------------------------------------- decoding


def test_compose_env_encoded_once_by_concourse_is_decoded() -> None:
    assert decode_compose_env({"COMPOSE_ENV": json.dumps(PARAMS)}) == PARAMS


def test_compose_env_given_as_a_json_string_and_encoded_again_is_decoded() -> None:
    assert decode_compose_env({"COMPOSE_ENV": json.dumps(json.dumps(PARAMS))}) == PARAMS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "is not set"),
        ("  ", "is not set"),
        ("{compose_files: x}", "is not valid JSON"),
        ('"compose_files: x"', "is not valid JSON"),
        ("[1, 2]", "must be a JSON object of put params, got list"),
        (json.dumps(json.dumps(json.dumps({}))), "got a string"),
    ],
)
def test_missing_or_malformed_compose_env_is_a_user_error_naming_it(raw: str | None, expected: str) -> None:
    env = {} if raw is None else {"COMPOSE_ENV": raw}

    with pytest.raises(UserError) as error:
        decode_compose_env(env)

    assert error.value.path == "COMPOSE_ENV"
    assert expected in error.value.message
    assert "params: {COMPOSE_ENV:" in error.value.hint


# ---------------------------------------------------------------- validation


def test_defaults_put_outputs_in_compose_env_output_and_artifacts_under_artifacts(work_dir: Path) -> None:
    task = parse({**PARAMS, "artifacts": [{"service": "tests", "path": "/reports"}]}, work_dir)

    assert task.output_dir == work_dir.resolve() / "compose-env-output"
    assert task.artifacts[0].to == "artifacts/tests"
    assert task.put.params.command == ("run", "--rm", "tests")
    assert task.put.params.compose_files == ((work_dir / "code" / "docker-compose.yml").resolve(),)


def test_relative_artifact_path_is_refused_with_its_path(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({**PARAMS, "artifacts": [{"service": "tests", "path": "reports/junit.xml"}]}, work_dir)

    assert problem_paths(error) == ["COMPOSE_ENV.artifacts[0].path"]
    assert "absolute path" in error.value.message


def test_artifact_without_service_and_with_unknown_key_is_refused(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({**PARAMS, "artifacts": [{"path": "/reports", "destination": "x"}]}, work_dir)

    assert set(problem_paths(error)) == {"COMPOSE_ENV.artifacts[0].service", "COMPOSE_ENV.artifacts[0].destination"}


@pytest.mark.parametrize("to", ["../elsewhere", "/etc", "a/../../b"])
def test_artifact_destination_outside_output_dir_is_refused(work_dir: Path, to: str) -> None:
    with pytest.raises(UserError) as error:
        parse({**PARAMS, "artifacts": [{"service": "tests", "path": "/reports", "to": to}]}, work_dir)

    assert error.value.path == "COMPOSE_ENV.artifacts[0].to"
    assert "outside output_dir" in error.value.message


def test_output_dir_outside_the_working_directory_is_refused(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({**PARAMS, "output_dir": "../out"}, work_dir)

    assert error.value.path == "COMPOSE_ENV.output_dir"


def test_put_param_problems_are_named_under_compose_env_in_task_words(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({"compose_files": ["code/docker-compose.yml", "../elsewhere.yml"]}, work_dir)

    assert error.value.path == "COMPOSE_ENV.compose_files[1]"
    assert "put directory" not in error.value.render() and "put's" not in error.value.render()
    assert "outside the task's working directory" in error.value.render()


def test_schema_problems_are_all_reported_under_compose_env(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({"compose_file": "x", "timeout": "soon", "source": {"startup_timeout": "x"}}, work_dir)

    paths = problem_paths(error)
    assert "COMPOSE_ENV.compose_file" in paths
    assert "COMPOSE_ENV.timeout" in paths
    assert "COMPOSE_ENV.source.startup_timeout" in paths
    assert all(path.startswith("COMPOSE_ENV") for path in paths)


def test_compose_files_may_come_from_source_params(work_dir: Path) -> None:
    task = parse({"source": {"params": {"compose_files": "code/docker-compose.yml"}}}, work_dir)

    assert task.put.params.compose_files[0].name == "docker-compose.yml"


def test_missing_compose_files_is_required(work_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        parse({"command": "up"}, work_dir)

    assert error.value.path == "COMPOSE_ENV.compose_files"


def test_a_user_error_during_the_run_is_named_under_compose_env_and_written_to_report_json(work_dir: Path) -> None:
    (work_dir / "code" / "image.tar").write_text("not an image")
    env = {"COMPOSE_ENV": json.dumps({**PARAMS, "images": ["code/image.tar"]})}

    with pytest.raises(UserError) as error:
        run_task(env, work_dir, Console(io.StringIO()), AbortOnSignal())

    assert error.value.path == "COMPOSE_ENV.images[0]"
    report = json.loads((work_dir / "compose-env-output" / "report.json").read_text())
    assert report["status"] == "error" and report["exit_code"] == 2
    assert "COMPOSE_ENV.images[0]" in report["error"]


# ---------------------------------------------------------------- streamed extraction


def tar_bytes(entries: list[tarfile.TarInfo], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info in entries:
            data = contents.get(info.name)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o4755 if kind == tarfile.REGTYPE else 0o755
    info.uid = 1234
    return info


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_archive_is_extracted_from_a_chunk_stream_and_unsafe_entries_are_skipped(tmp_path: Path) -> None:
    junit = b"<testsuite tests='1' failures='0'/>\n" * 1000
    data = tar_bytes(
        [
            member("reports", tarfile.DIRTYPE),
            member("reports/junit.xml"),
            member("reports/escape", tarfile.SYMTYPE, "../../../etc/passwd"),
            member("../outside.txt"),
            member("/abs.txt"),
        ],
        {"reports/junit.xml": junit, "../outside.txt": b"x", "/abs.txt": b"y"},
    )
    copy = ArtifactCopy("tests", "/reports", "out")
    target = tmp_path / "out"
    target.mkdir()

    extract_stream(chunked(data, 777), target, copy)

    extracted = target / "reports" / "junit.xml"
    assert extracted.read_bytes() == junit
    assert not extracted.stat().st_mode & 0o4000  # setuid dropped
    assert (target / "abs.txt").read_bytes() == b"y"  # a leading / is stripped: it lands inside
    assert (copy.files, copy.bytes) == (2, len(junit) + 1)
    assert len(copy.skipped) == 2
    assert not (tmp_path / "outside.txt").exists()
    assert not (target / "reports" / "escape").exists()


def test_a_path_ending_in_slash_dot_copies_the_directory_contents(tmp_path: Path) -> None:
    # `get_archive(container, "/reports/.")` names its entries "." and "./junit.xml", as `docker cp` does.
    data = tar_bytes([member(".", tarfile.DIRTYPE), member("./junit.xml")], {"./junit.xml": b"<testsuite/>"})
    copy = ArtifactCopy("tests", "/reports/.", "reports")

    extract_stream(chunked(data, 100), tmp_path, copy)

    assert (tmp_path / "junit.xml").read_bytes() == b"<testsuite/>"
    assert copy.skipped == []


def test_extraction_memory_stays_flat_whatever_the_archive_size(tmp_path: Path) -> None:
    size = 64 * 2**20
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as writer:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        writer.addfile(info, io.BytesIO(bytes(size)))

    def chunks() -> Iterator[bytes]:
        with open(archive, "rb") as handle:
            while chunk := handle.read(2 * 2**20):  # docker-py's default chunk size
                yield chunk

    target = tmp_path / "out"
    target.mkdir()
    tracemalloc.start()
    extract_stream(chunks(), target, ArtifactCopy("tests", "/big.bin", "out"))
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert (target / "big.bin").stat().st_size == size
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB archive"


def test_chunk_reader_reads_across_chunk_boundaries_without_joining_them() -> None:
    consumed = []

    def chunks() -> Iterator[bytes]:
        for index in range(5):
            consumed.append(index)
            yield bytes([index]) * 3

    reader = io.BufferedReader(ChunkReader(chunks()), 4)

    assert reader.read(4) == b"\x00\x00\x00\x01"
    assert consumed == [0, 1]  # read on demand, not all at once
    assert reader.read() == b"\x01\x01" + b"\x02" * 3 + b"\x03" * 3 + b"\x04" * 3


# ---------------------------------------------------------------- the after-run hook


class FakeEngine:
    """The three engine calls the hook makes, answered from memory: one `tests` container holding /reports."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive

    def containers(self, all: bool, filters: dict) -> list[dict]:
        labels = filters["label"]
        wanted = labels if isinstance(labels, list) else [labels]
        if any(label.endswith("service=db") for label in wanted):
            return []
        return [{"Id": "c1", "Created": 1}]

    def inspect_container(self, container: str) -> dict:
        labels = {"com.docker.compose.service": "tests", "com.docker.compose.oneoff": "True"}
        state = {
            "Status": "exited",
            "ExitCode": 3,
            "StartedAt": "2026-11-28T01:00:00.5Z",
            "FinishedAt": "2026-11-28T01:00:02Z",
        }
        return {
            "Name": "/p-tests-run-1",
            "Config": {"Labels": labels, "Image": "example/tests:ci"},
            "State": state,
            "RestartCount": 0,
        }

    def get_archive(self, container: str, path: str) -> tuple[Iterator[bytes], dict]:
        if path != "/reports":
            raise docker.errors.NotFound("no such path")
        return chunked(self.archive, 512), {}


class FakeProject:
    """`extra` is behind a profile that is not active: only all_services() knows it."""

    params = SimpleNamespace(project_name="p")

    def services(self) -> dict:
        return {"tests": {}, "db": {}}

    def all_services(self) -> dict:
        return {"tests": {}, "db": {}, "extra": {}}


def test_after_run_copies_what_exists_and_reports_what_does_not(work_dir: Path) -> None:
    artifacts = [
        {"service": "tests", "path": "/reports"},
        {"service": "tests", "path": "/coverage"},
        {"service": "db", "path": "/var/log"},
    ]
    task = parse({**PARAMS, "artifacts": artifacts}, work_dir)
    collector = AfterRunCollector(task, Console(io.StringIO()))
    engine = FakeEngine(
        tar_bytes(
            [member("reports", tarfile.DIRTYPE), member("reports/junit.xml")], {"reports/junit.xml": b"<testsuite/>"}
        )
    )

    collector(FakeProject(), SimpleNamespace(client=engine), RunResult(("run", "tests"), 3, "failed"))

    assert (task.output_dir / "artifacts" / "tests" / "reports" / "junit.xml").read_bytes() == b"<testsuite/>"
    copied, missing, not_run = collector.copies
    assert copied.copied and copied.files == 1
    assert not missing.copied and "no such file" in missing.problem
    assert not not_run.copied and "did not run" in not_run.problem
    assert collector.containers["tests"][0]["duration_seconds"] == 1.5
    assert "artifacts" in collector.timings


def test_an_artifact_of_a_service_behind_an_inactive_profile_is_copied(work_dir: Path) -> None:
    # `run extra` starts a service whose profile is off: the check accepted it, so must the copy.
    task = parse(
        {**PARAMS, "command": ["run", "extra"], "artifacts": [{"service": "extra", "path": "/reports"}]}, work_dir
    )
    collector = AfterRunCollector(task, Console(io.StringIO()))
    collector.check_services(FakeProject())  # type: ignore[arg-type]
    engine = FakeEngine(
        tar_bytes(
            [member("reports", tarfile.DIRTYPE), member("reports/junit.xml")], {"reports/junit.xml": b"<testsuite/>"}
        )
    )

    collector(FakeProject(), SimpleNamespace(client=engine), RunResult(("run", "extra"), 0, "passed"))

    (copy,) = collector.copies
    assert copy.copied and copy.problem == ""
    assert (task.output_dir / "artifacts" / "extra" / "reports" / "junit.xml").is_file()


def test_an_artifact_of_an_unknown_service_is_refused_before_anything_starts(work_dir: Path) -> None:
    task = parse(
        {**PARAMS, "artifacts": [{"service": "tests", "path": "/r"}, {"service": "tset", "path": "/r"}]}, work_dir
    )
    collector = AfterRunCollector(task, Console(io.StringIO()))
    project = SimpleNamespace(all_services=lambda: {"tests": {}, "db": {}})

    with pytest.raises(UserError) as error:
        collector.check_services(project)  # type: ignore[arg-type]

    assert error.value.path == "COMPOSE_ENV.artifacts[1].service"
    assert "services: db, tests" in error.value.hint


# ---------------------------------------------------------------- report


def test_docker_times_with_nanoseconds_give_durations() -> None:
    assert _parse_time("2026-11-28T01:02:03.123456789Z").microsecond == 123456
    assert _seconds_between("2026-11-28T01:02:03.5Z", "2026-11-28T01:02:05.75Z") == 2.25
    assert _seconds_between("2026-11-28T01:02:03Z", "0001-01-01T00:00:00Z") is None


def test_report_holds_the_response_plus_states_containers_timings_logs_and_artifacts(work_dir: Path) -> None:
    response = {"version": {"id": "1", "exit_code": "3"}, "metadata": [{"name": "status", "value": "failed"}]}
    result = RunResult(
        ("run", "tests", "--token=s3cr3t"), 3, "failed", [ServiceState("tests", "exited", 3)], {}, ["tests"]
    )
    outcome = PutOutcome(
        response, result, 1, ServiceLogs(work_dir / "logs"), {"daemon": 1.23456, "run": 2.5}, ["example/tests:ci"]
    )
    collector = AfterRunCollector(parse(PARAMS, work_dir), Console(io.StringIO()))
    collector.containers = {"tests": [{"container": "p-tests-run-1", "exit_code": 3, "duration_seconds": 2.1}]}
    collector.copies = [ArtifactCopy("tests", "/reports", "reports", copied=True, files=1, bytes=10)]

    report = build_report(outcome, collector, {"tests": "logs/tests.log"}, Redactor(["s3cr3t"]))

    assert report["version"] == {"id": "1", "exit_code": "3"}
    assert report["metadata"] == response["metadata"]
    assert report["status"] == "failed" and report["exit_code"] == 3
    assert report["command"] == ["run", "tests", "--token=***"]
    assert report["services"] == [
        {
            "name": "tests",
            "state": "exited",
            "exit_code": 3,
            "health": None,
            "failed": True,
            "log": "logs/tests.log",
            "containers": [{"container": "p-tests-run-1", "exit_code": 3, "duration_seconds": 2.1}],
        }
    ]
    assert report["timings"] == {"daemon": 1.235, "run": 2.5}
    assert report["artifacts"][0]["copied"] is True
    json.dumps(report)

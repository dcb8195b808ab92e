"""JUnit parsing in every dialect, refused entities, report paths and globs, and failed_tests in the budget."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from compose_env.config.model import BuildMetadata, PutParams, ReportEntry
from compose_env.console import Console
from compose_env.errors import UserError
from compose_env.report import RESPONSE_BUDGET, RunResult, build_response, response_size
from compose_env.run.junit import ReportError, ReportResults, failing_block, parse_report
from compose_env.run.put import keep_run_container
from compose_env.run.reports import check_services, collect_reports, glob_to_regex, path_matcher
from compose_env.run.task import parse_task_config

PYTEST = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="1.234">
<testcase classname="test_sample" name="test_passes" time="0.001"/>
<testcase classname="test_sample" name="test_fails" time="0.002"><failure message="assert 1 == 2&#10;where 1 = f()">def test_fails():
&gt;       assert f() == 2</failure></testcase>
<testcase classname="test_sample" name="test_skipped" time="0.000"><skipped type="pytest.skip" message="not today">skip</skipped></testcase>
<testcase classname="test_sample" name="test_errors" time="0.003"><error message="failed on setup with &quot;RuntimeError: no db&quot;">trace</error></testcase>
</testsuite></testsuites>"""

GO_JUNIT_REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="2" failures="1">
  <testsuite name="example.com/pkg" tests="2" failures="1" errors="0" time="0.500">
    <properties><property name="go.version" value="go1.22"></property></properties>
    <testcase name="TestOK" classname="pkg" time="0.100"></testcase>
    <testcase name="TestBad" classname="pkg" time="0.400"><failure message="Failed" type="">    bad_test.go:9: want 2, got 1</failure></testcase>
  </testsuite>
</testsuites>"""

SUREFIRE = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.example.AppTest" time="2.5" tests="4" errors="0" skipped="1" failures="1">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="adds" classname="com.example.AppTest" time="0.01"/>
  <testcase name="flaky" classname="com.example.AppTest" time="0.5"><flakyFailure message="timeout" type="java.lang.AssertionError"/></testcase>
  <testcase name="subtracts" classname="com.example.AppTest" time="0.02">
    <failure message="expected: &lt;1&gt; but was: &lt;2&gt;" type="org.opentest4j.AssertionFailedError">trace</failure>
  </testcase>
  <testcase name="later" classname="com.example.AppTest" time="0"><skipped/></testcase>
</testsuite>"""

JEST = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="2" failures="1" errors="0" time="3.21">
  <testsuite name="sum" errors="0" failures="1" skipped="0" timestamp="2026-11-28T01:00:00" time="1.5" tests="2">
    <testcase classname="sum adds 1 + 2" name="sum adds 1 + 2" time="0.003"></testcase>
    <testcase classname="sum handles null" name="sum handles null" time="0.004">
      <failure>Error: expect(received).toBe(expected)

Expected: 0</failure>
    </testcase>
  </testsuite>
</testsuites>"""

NESTED = """<testsuites><testsuite name="outer" time="1"><testsuite name="inner" time="1">
<testcase classname="a.B" name="c" time="1,000.5"/></testsuite></testsuite></testsuites>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<testsuite><testcase name="&lol3;"/></testsuite>"""

EXTERNAL = """<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><testsuite><testcase name="&x;"/></testsuite>"""


def write(tmp_path: Path, text: str, name: str = "report.xml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_pytest_report_gives_each_outcome_its_status_and_message(tmp_path: Path) -> None:
    report = parse_report(write(tmp_path, PYTEST))

    statuses = {case.name: case.status for case in report.cases}
    assert statuses == {
        "test_sample.test_passes": "passed",
        "test_sample.test_fails": "failed",
        "test_sample.test_skipped": "skipped",
        "test_sample.test_errors": "error",
    }
    failed = next(case for case in report.cases if case.status == "failed")
    assert failed.first_line == "assert 1 == 2"
    assert report.time == 1.234


@pytest.mark.parametrize(
    ("text", "passed", "failed", "skipped", "time", "message"),
    [
        (GO_JUNIT_REPORT, 1, 1, 0, 0.5, "bad_test.go:9: want 2, got 1"),
        (SUREFIRE, 2, 1, 1, 2.5, "expected: <1> but was: <2>"),
        (JEST, 1, 1, 0, 3.21, "Error: expect(received).toBe(expected)"),
        (NESTED, 1, 0, 0, 1.0, ""),
    ],
    ids=["go-junit-report", "surefire-flaky-is-passed", "jest-junit-message-in-text", "nested-suites"],
)
def test_other_dialects_are_read(
    tmp_path: Path, text: str, passed: int, failed: int, skipped: int, time: float, message: str
) -> None:
    results = ReportResults()
    results.add(parse_report(write(tmp_path, text)))

    totals = results.totals()
    assert (totals.passed, totals.failed, totals.errors, totals.skipped, totals.time) == (
        passed,
        failed,
        0,
        skipped,
        time,
    )
    assert [case.first_line for case in results.failing] == ([message] if failed else [])


def test_nested_case_names_join_classname_and_name_and_read_thousands_separators(tmp_path: Path) -> None:
    (case,) = parse_report(write(tmp_path, NESTED)).cases
    assert case.name == "a.B.c" and case.time == 1000.5


def test_totals_read_like_the_contract_says(tmp_path: Path) -> None:
    results = ReportResults()
    results.add(parse_report(write(tmp_path, PYTEST)))
    results.add(parse_report(write(tmp_path, GO_JUNIT_REPORT, "go.xml")))
    assert results.totals().summary() == "2 passed, 2 failed, 1 error, 1 skipped (1.7s)"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BILLION_LAUGHS, "declares XML entities"),
        (EXTERNAL, "declares XML entities"),
        ("<testsuite><testcase name='x'>", "not well-formed XML"),
        ("", "not well-formed XML"),
        ("<html><body/></html>", "root element is <html>"),
    ],
    ids=["billion-laughs", "external-entity", "truncated", "empty", "not-junit"],
)
def test_unsafe_broken_or_foreign_files_are_refused_with_a_reason(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ReportError, match=why):
        parse_report(write(tmp_path, text))


def test_failing_block_names_each_failing_test_with_its_first_line_then_how_many_more(tmp_path: Path) -> None:
    cases = parse_report(write(tmp_path, PYTEST)).cases
    assert failing_block(cases, 10) == [
        "test_sample.test_fails: assert 1 == 2",
        'test_sample.test_errors: failed on setup with "RuntimeError: no db"',
    ]
    assert failing_block(cases, 1) == ["test_sample.test_fails: assert 1 == 2", "+1 more"]


# ---------------------------------------------------------------- paths in the container


@pytest.mark.parametrize(
    ("path", "base", "wanted", "unwanted"),
    [
        ("/reports/junit.xml", "/reports/junit.xml", ["/reports/junit.xml"], ["/reports/other.xml"]),
        ("/reports/", "/reports", ["/reports/a.xml", "/reports/deep/b.xml"], ["/reports/a.txt", "/reportsx/a.xml"]),
        (
            "/app/target/surefire-reports/TEST-*.xml",
            "/app/target/surefire-reports",
            ["/app/target/surefire-reports/TEST-a.xml"],
            ["/app/target/surefire-reports/a.xml"],
        ),
        ("/src/**/junit-?.xml", "/src", ["/src/junit-1.xml", "/src/a/b/junit-2.xml"], ["/src/a/junit-10.xml"]),
        ("/out/[ab]*/r.xml", "/out", ["/out/a1/r.xml", "/out/b/r.xml"], ["/out/c/r.xml", "/out/a/x/r.xml"]),
    ],
)
def test_report_paths_ask_for_the_deepest_plain_directory_and_match_the_rest(
    path: str, base: str, wanted: list[str], unwanted: list[str]
) -> None:
    asked, matches = path_matcher(path)
    assert asked == base
    assert all(matches(p) for p in wanted)
    assert not any(matches(p) for p in unwanted)


def test_negated_character_class() -> None:
    assert glob_to_regex("/r/[!x].xml") == "/r/[^x]\\.xml"


def test_a_report_of_an_unknown_service_is_refused_before_anything_starts() -> None:
    entries = [ReportEntry("params.reports[0]", "tests", "/r"), ReportEntry("params.reports[1]", "tset", "/r")]
    with pytest.raises(UserError) as error:
        check_services(entries, ["db", "tests"])
    assert error.value.path == "params.reports[1].service"
    assert "services: db, tests" in error.value.hint


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeEngine:
    """A `tests` container holding /reports (two reports and a note) and nothing else."""

    def __init__(self) -> None:
        self.archive = tar_of(
            {"reports/a.xml": PYTEST.encode(), "reports/sub/b.xml": b"<testsuite><oops>", "reports/notes.txt": b"hi"}
        )

    def containers(self, all: bool, filters: dict) -> list[dict]:
        return [] if any("service=db" in label for label in filters["label"]) else [{"Id": "c1", "Created": 1}]

    def get_archive(self, container: str, path: str) -> tuple[Iterator[bytes], dict]:
        if path != "/reports":
            raise docker.errors.NotFound("no such path")
        return iter([self.archive[:700], self.archive[700:]]), {}


def test_collected_reports_land_under_the_service_and_their_container_path_with_a_warning_per_problem(
    tmp_path: Path,
) -> None:
    entries = [
        ReportEntry("params.reports[0]", "tests", "/reports"),
        ReportEntry("params.reports[1]", "tests", "/missing/junit.xml"),
        ReportEntry("params.reports[2]", "db", "/reports"),
        ReportEntry("params.reports[3]", "tests", "/reports/*.json"),
    ]
    outcome = collect_reports(FakeEngine(), "p", entries, tmp_path)  # type: ignore[arg-type]

    assert (tmp_path / "tests" / "reports" / "a.xml").read_text() == PYTEST
    assert not (tmp_path / "tests" / "reports" / "notes.txt").exists()
    assert [(r.container_path, r.tests) for r in outcome.read] == [("/reports/a.xml", 4)]
    assert outcome.results.totals().failed == 1
    assert outcome.warnings == [
        "params.reports[0] (tests:/reports): /reports/sub/b.xml: not well-formed XML (no element found: line 1, "
        "column 17)",
        "params.reports[1] (tests:/missing/junit.xml): no such file or directory in the container (did the tests get "
        "far enough to write it?)",
        "params.reports[2] (db:/reports): no container of service db (it did not run)",
        "params.reports[3] (tests:/reports/*.json): no file matches",
    ]


# ---------------------------------------------------------------- metadata


def response_with(failed: list[str], logs: dict[str, list[str]] | None = None) -> dict:
    result = RunResult(("up",), 1, "failed", [], logs or {}, ["tests"])
    return build_response(
        run_id="r",
        result=result,
        duration=1.0,
        timings={},
        images=[],
        dockerd="",
        redact=lambda text: text,
        tests="1 passed, 2 failed, 0 errors, 0 skipped (1.0s)",
        failed_tests=failed,
    )


def test_tests_and_failed_tests_follow_the_summary_one_name_a_line() -> None:
    metadata = response_with(["a.test_one", "a.test_two"])["metadata"]
    names = [entry["name"] for entry in metadata]
    assert names.index("tests") == names.index("resource") + 1
    assert metadata[names.index("failed_tests")]["value"] == "a.test_one\na.test_two"


def test_thousands_of_failing_tests_fit_as_many_as_possible_then_say_how_many_more_and_logs_keep_room() -> None:
    failed = [f"tests.test_module_{i:05d}.TestSomething.test_case_with_a_long_name_{i}" for i in range(5000)]
    response = response_with(failed, {"tests": [f"log line {i}" for i in range(500)]})

    assert response_size(response["metadata"], response["version"]) < RESPONSE_BUDGET
    values = {entry["name"]: entry["value"] for entry in response["metadata"]}
    shown = values["failed_tests"].split("\n")
    assert shown[-1] == f"+{5000 - (len(shown) - 1)} more"
    assert shown[:-1] == failed[: len(shown) - 1] and len(shown) > 20
    assert values["logs/tests"].endswith("log line 499")
    json.dumps(response)


def test_no_failed_tests_entry_when_nothing_failed() -> None:
    assert "failed_tests" not in [entry["name"] for entry in response_with([])["metadata"]]


# ---------------------------------------------------------------- run --rm


def test_run_rm_is_dropped_only_when_files_come_from_the_run_service(tmp_path: Path) -> None:
    console = Console(io.StringIO())
    command = ("run", "--rm", "-e", "X=1", "tests", "pytest", "--rm")
    params = PutParams(
        compose_files=(tmp_path / "c.yml",), project_directory=tmp_path, project_name="p", command=command
    )

    kept, service = keep_run_container(params, {"tests"}, console)
    assert kept.command == ("run", "-e", "X=1", "tests", "pytest", "--rm") and service == "tests"
    unchanged, none = keep_run_container(params, {"db"}, console)
    assert unchanged.command == command and none is None


def test_report_entries_are_named_in_task_terms(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "docker-compose.yml").write_text("services: {}\n")
    value = {"compose_files": ["code/docker-compose.yml"], "reports": [{"service": "tests", "path": "/r/*.xml"}]}
    task = parse_task_config(value, tmp_path, BuildMetadata())
    assert task.put.params.reports == (ReportEntry("COMPOSE_ENV.reports[0]", "tests", "/r/*.xml"),)

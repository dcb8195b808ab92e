"""The put response: the 4000-byte budget, fair log tails with failing services first, redaction."""

from __future__ import annotations

import json
import random

from compose_env.redaction import Redactor
from compose_env.report import (
    ELLIPSIS,
    RESPONSE_BUDGET,
    RunResult,
    ServiceState,
    build_response,
    fair_shares,
    response_size,
    tail_within,
)


def response_for(result: RunResult, redact: Redactor | None = None) -> dict[str, object]:
    return build_response(
        run_id="42-20261128T000000Z-abcdef",
        result=result,
        duration=12.3,
        timings={"daemon": 1.2, "load": 3.4, "run": 7.0, "teardown": 0.5},
        images=["example/redis:ci", "example/tests:ci"],
        dockerd="26.1.5 overlay2 disk",
        redact=redact or Redactor(),
    )


def stdout_bytes(response: dict[str, object]) -> int:
    """What protocol.write_json prints."""
    return len((json.dumps(response) + "\n").encode())


def metadata(response: dict[str, object]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in response["metadata"]}  # type: ignore[index, union-attr]


def flood(prefix: str, count: int, width: int = 100) -> list[str]:
    return [f"{prefix} {number:08d} " + "x" * width for number in range(count)]


def test_summary_entries_come_first_with_the_contract_names() -> None:
    result = RunResult(
        ("run", "tests"),
        0,
        "passed",
        [ServiceState("tests", "exited", 0), ServiceState("redis", "running", 0, "healthy")],
        {"tests": ["ok"]},
    )

    response = response_for(result)

    names = [item["name"] for item in response["metadata"]]  # type: ignore[index]
    assert names == [
        "status",
        "exit_code",
        "command",
        "duration",
        "timings",
        "images",
        "services",
        "dockerd",
        "resource",
        "logs/tests",
    ]
    assert response["version"] == {"id": "42-20261128T000000Z-abcdef", "exit_code": "0"}
    assert metadata(response)["services"] == "tests=exited(0) redis=running(healthy)"
    assert metadata(response)["logs/tests"] == "ok"


def test_the_resource_entry_names_the_version_and_revision_that_ran_the_put() -> None:
    result = RunResult(("run", "tests"), 0, "passed", [ServiceState("tests", "exited", 0)], {"tests": ["ok"]})

    shipped = build_response(
        run_id="42",
        result=result,
        duration=1.0,
        timings={},
        images=[],
        dockerd="",
        redact=Redactor(),
        resource="compose-env 1.2.3 (3f2c1ab)",
    )

    assert metadata(response_for(result))["resource"] == "compose-env dev (unknown)"  # a source tree has no build.json
    assert metadata(shipped)["resource"] == "compose-env 1.2.3 (3f2c1ab)"


def test_megabytes_of_logs_from_many_services_stay_under_the_budget() -> None:
    logs = {f"service{n:02d}": flood(f"s{n}", 20_000) for n in range(30)}
    result = RunResult(("up",), 1, "failed", [ServiceState(name, "exited", 1) for name in logs], logs, ["service29"])

    response = response_for(result)

    assert stdout_bytes(response) < RESPONSE_BUDGET
    assert "logs/service29" in metadata(response)  # failing first, even when others are left out


def test_tails_are_shared_fairly_and_a_short_log_gives_its_room_to_the_long_ones() -> None:
    logs = {"api": flood("api", 5000), "db": flood("db", 5000), "tiny": ["just one line"]}
    result = RunResult(("up",), 0, "passed", [], logs, [])

    values = metadata(response_for(result))

    assert values["logs/tiny"] == "just one line"
    assert abs(len(values["logs/api"]) - len(values["logs/db"])) < 150
    assert values["logs/api"].endswith(logs["api"][-1])  # the end of the log, where the failure is
    assert len(values["logs/api"]) > 1200


def test_failing_services_come_first_in_the_metadata() -> None:
    logs = {"a": ["a line"], "b": ["b line"], "z": ["z line"]}
    result = RunResult(("up",), 3, "failed", [], logs, ["z"])

    names = [item["name"] for item in response_for(result)["metadata"]]  # type: ignore[index]

    assert names[-3:] == ["logs/z", "logs/a", "logs/b"]


def test_a_single_huge_line_keeps_its_end() -> None:
    line = "start " + "y" * 100_000 + " the end"
    result = RunResult(("run", "tests"), 1, "failed", [], {"tests": [line]}, ["tests"])

    response = response_for(result)

    value = metadata(response)["logs/tests"]
    assert value.startswith(ELLIPSIS) and value.endswith(" the end")
    assert stdout_bytes(response) < RESPONSE_BUDGET


def test_escaped_and_non_ascii_characters_are_counted_as_encoded() -> None:
    noisy = ['quote " backslash \\ tab \t ctrl \x1b[31m red é 日本 🎉'] * 3000
    result = RunResult(("up",), 0, "passed", [], {"a": noisy, "b": noisy}, [])

    assert stdout_bytes(response_for(result)) < RESPONSE_BUDGET


def test_random_logs_never_break_the_budget() -> None:
    generator = random.Random(5)
    alphabet = 'abc "\\\n\té€😀\x00'
    for _ in range(15):
        logs = {
            f"svc{n}": [
                "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 400)))
                for _ in range(generator.randint(0, 200))
            ]
            for n in range(generator.randint(1, 12))
        }
        result = RunResult(("up",), 1, "failed", [], logs, [generator.choice(list(logs))])
        assert stdout_bytes(response_for(result)) < RESPONSE_BUDGET


def test_a_huge_summary_is_cut_but_the_response_still_fits() -> None:
    services = [ServiceState(f"service-with-a-long-name-{n}", "exited", 0) for n in range(300)]
    result = RunResult(tuple(["run", "tests", *["--arg"] * 500]), 0, "passed", services, {"tests": flood("t", 100)})

    response = response_for(result)

    assert stdout_bytes(response) < RESPONSE_BUDGET
    assert metadata(response)["logs/tests"]


def test_secrets_are_masked_in_every_metadata_value() -> None:
    result = RunResult(
        ("run", "tests", "--token=s3cr3t-value"), 1, "failed", [], {"tests": ["using s3cr3t-value"]}, ["tests"]
    )

    text = json.dumps(response_for(result, Redactor(["s3cr3t-value"])))

    assert "s3cr3t-value" not in text
    assert "--token=***" in text


def test_tail_within_keeps_whole_lines_from_the_end() -> None:
    lines = ["one", "two", "three"]

    assert tail_within(lines, 100) == "one\ntwo\nthree"
    assert tail_within(lines, len("two\\nthree")) == "two\nthree"


def test_fair_shares_give_small_needs_in_full_and_split_the_rest_equally() -> None:
    assert fair_shares({"a": 100, "b": 5000, "c": 5000}, 2100) == {"a": 100, "b": 1000, "c": 1000}
    assert fair_shares({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}


def test_response_size_counts_the_newline_protocol_prints() -> None:
    version = {"id": "x", "exit_code": "0"}

    assert response_size([], version) == len(json.dumps({"version": version, "metadata": []})) + 1


def test_a_larger_metadata_budget_keeps_more_of_each_log_and_still_holds() -> None:
    logs = {"api": flood("api", 5000), "db": flood("db", 5000)}
    result = RunResult(("up",), 1, "failed", [], logs, ["api"])

    default = metadata(response_for(result))
    larger = build_response(
        run_id="42", result=result, duration=1.0, timings={}, images=[], dockerd="", redact=Redactor(), budget=20_000
    )

    assert 15_000 < stdout_bytes(larger) < 20_000
    assert len(metadata(larger)["logs/api"]) > 4 * len(default["logs/api"])

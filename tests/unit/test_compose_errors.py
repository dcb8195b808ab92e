"""compose_errors: the file compose rejects, named as params name it, with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from compose_env.run.compose_errors import file_named_in, first_line, rejected

BASE = Path("/tmp/build/put/code/ci/compose.yml")
TEST = Path("/tmp/build/put/code/ci/compose.test.yml")
ENV = Path("/tmp/build/put/code/ci/.env")
LABELS = {
    BASE: "params.compose_files[0] (code/ci/compose.yml)",
    TEST: "params.compose_files[1] (code/ci/compose.test.yml)",
    ENV: "params.env_files[0] (code/ci/.env)",
}
SYNTAX = "did not find expected ',' or ']'"
DUPLICATE = 'mapping key "b" already defined at line 2'


@pytest.mark.parametrize(
    ("error", "file", "path", "message"),
    [
        (f"yaml: line 2: {SYNTAX}", TEST, "params.compose_files[1] (code/ci/compose.test.yml), line 2", SYNTAX),
        (
            f'failed to read {ENV}: line 2: unexpected character "\\"" in variable name',
            ENV,
            "params.env_files[0] (code/ci/.env), line 2",
            'unexpected character "\\"" in variable name',
        ),
        (
            f"validating {BASE}: services.a Additional property bogus is not allowed",
            BASE,
            LABELS[BASE],
            "services.a Additional property bogus is not allowed",
        ),
        (f"yaml: unmarshal errors:\n  line 4: {DUPLICATE}", TEST, f"{LABELS[TEST]}, line 4", DUPLICATE),
        ("services.c must be a mapping", BASE, LABELS[BASE], "services.c must be a mapping"),
    ],
    ids=["yaml syntax", "env file", "schema", "unmarshal", "no line"],
)
def test_a_rejected_file_is_named_with_its_param_path_and_line(error: str, file: Path, path: str, message: str) -> None:
    named = rejected(error, file, LABELS[file])

    assert (named.path, named.message) == (path, message)


def test_the_file_compose_names_is_found_the_longest_path_first() -> None:
    assert file_named_in(f"validating {TEST}: services.a must be a mapping", LABELS) == TEST
    assert file_named_in(f"failed to read {ENV}: line 1: x", LABELS) == ENV
    assert file_named_in("yaml: line 2: did not find expected ',' or ']'", LABELS) is None


def test_first_lines_compare_without_the_file_paths() -> None:
    whole = f"validating {TEST}: services.a must be a mapping\nmore"
    alone = f"\nvalidating {TEST}: services.a must be a mapping"

    assert first_line(whole, LABELS) == first_line(alone, LABELS) == "validating <file>: services.a must be a mapping"

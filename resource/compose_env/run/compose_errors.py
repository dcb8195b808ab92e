"""Which compose or env file `docker compose config` rejects, named as the put's params name it.

compose names the file in some errors (`validating /tmp/build/put/ci/compose.yml: …`,
`failed to read /tmp/build/put/ci/.env: line 2: …`) but not in YAML syntax errors
(`yaml: line 2: did not find expected ',' or ']'`). With two compose files the user could not
tell which one is broken: the error is rewritten as
`params.compose_files[1] (ci/compose.test.yml), line 2: did not find expected ',' or ']'`.
A file compose does not name is found by checking each compose file alone (project.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: `line 2: …` anywhere in the message (`yaml: line 2: …`, `…: line 2: …`, `  line 4: …` of unmarshal errors).
LINE = re.compile(r"(?:^|\s|: )line (\d+): (.*)$", re.MULTILINE)
YAML_PREFIX = "yaml: "


@dataclass(frozen=True)
class RejectedFile:
    """`path` for UserError (`params.compose_files[1] (x.yml), line 2`) and the message without the file and line."""

    path: str
    message: str


def file_named_in(text: str, labels: Mapping[Path, str]) -> Path | None:
    """The compose or env file whose full path compose's error mentions (the longest, if several match)."""
    named = [path for path in labels if str(path) in text]
    return max(named, key=lambda path: len(str(path))) if named else None


def rejected(text: str, file: Path, label: str) -> RejectedFile:
    """compose's error about `file`, as `label[, line N]` and the rest of the message."""
    text = text.strip()
    at = text.find(str(file))
    if at >= 0:  # `validating /x/c.yml: message` → `message`
        text = text[at + len(str(file)) :].lstrip(":").strip() or text
    text = text.removeprefix(YAML_PREFIX)
    line = LINE.search(text)
    if line is None:
        return RejectedFile(label, text)
    before = text[: line.start()].strip().rstrip(":").removesuffix("yaml").strip()
    rest = "\n".join(part for part in (line.group(2).strip(), text[line.end() :].strip()) if part)
    message = f"{before}: {rest}" if before and before != "unmarshal errors" else rest
    return RejectedFile(f"{label}, line {line.group(1)}", message)


def first_line(text: str, files: Mapping[Path, str]) -> str:
    """compose's first error line with every file path taken out: the same for the whole project and one file alone."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    for path in files:
        line = line.replace(str(path), "<file>")
    return line

"""JUnit XML reports → test cases and totals, parsed without trusting the file.

The files come from the code under test, so the parser refuses DTD entities and external
references (defusedxml): a billion-laughs file or an `<!ENTITY x SYSTEM "file:///etc/passwd">`
is an unreadable report, not a hang or a leak.

One reading covers the dialects in use: pytest, go-junit-report, Maven Surefire, jest-junit
and JUnit 5's legacy XML. `testsuites` or `testsuite` at the root, suites nested at any
depth, and in each `testcase` a `failure`, `error` or `skipped` element (Surefire's
`flakyFailure`/`rerunFailure` are passes that needed a rerun, so they count as passed).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import defusedxml
import defusedxml.ElementTree as SafeElementTree

from compose_env.report import format_seconds

#: A report bigger than this is not read (a JUnit file of 100 000 tests is about 20 MB).
MAX_REPORT_BYTES = 64 * 2**20
#: A test's message as kept in report.json; the build log and metadata show its first line.
MAX_MESSAGE_CHARS = 4000
#: Outcome elements of a testcase, the stronger first (pytest adds a teardown `error` to a failed test).
OUTCOMES: tuple[tuple[str, CaseStatus], ...] = (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))
#: `message` attributes that say nothing the status does not: the element's text is read instead.
PLACEHOLDER_MESSAGES = {"", "failed", "failure", "error"}
#: A test case's outcome, as report.json's `tests` gives it.
CaseStatus = Literal["passed", "failed", "error", "skipped"]
STATUSES: tuple[CaseStatus, ...] = ("passed", "failed", "error", "skipped")


class ReportError(Exception):
    """A report that cannot be read as JUnit XML; the message says why, for a warning line."""


@dataclass(frozen=True)
class CaseResult:
    """One `testcase`: `classname.name`, its outcome, seconds, and the message of its outcome."""

    name: str
    status: CaseStatus
    time: float = 0.0
    message: str = ""

    @property
    def failing(self) -> bool:
        return self.status in ("failed", "error")

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.message.splitlines() if line.strip()), "")


@dataclass(frozen=True)
class Totals:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0

    @property
    def count(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    def summary(self) -> str:
        """`212 passed, 1 failed, 0 errors, 3 skipped (41.2s)`; `1 error`."""
        errors = f"{self.errors} error" + ("" if self.errors == 1 else "s")
        seconds = format_seconds(self.time)
        return f"{self.passed} passed, {self.failed} failed, {errors}, {self.skipped} skipped ({seconds})"


@dataclass(frozen=True)
class ParsedReport:
    cases: tuple[CaseResult, ...]
    #: the suites' own total time (includes set-up the cases do not count), else the cases' sum
    time: float


@dataclass
class ReportResults:
    """Every case of every report read, in order."""

    cases: list[CaseResult] = field(default_factory=list)
    time: float = 0.0

    def add(self, report: ParsedReport) -> None:
        self.cases += report.cases
        self.time += report.time

    @property
    def failing(self) -> list[CaseResult]:
        return [case for case in self.cases if case.failing]

    def totals(self) -> Totals:
        counts = {status: 0 for status in STATUSES}
        for case in self.cases:
            counts[case.status] += 1
        return Totals(counts["passed"], counts["failed"], counts["error"], counts["skipped"], self.time)


def parse_report(path: Path) -> ParsedReport:
    """The cases of one JUnit XML file; ReportError when it is too big, not XML, unsafe or not JUnit."""
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise ReportError(too_big(size))
    try:
        root = SafeElementTree.parse(path, forbid_dtd=False, forbid_entities=True, forbid_external=True).getroot()
    except defusedxml.EntitiesForbidden:
        raise ReportError("it declares XML entities (refused: a report may not expand entities)") from None
    except defusedxml.DefusedXmlException as error:
        raise ReportError(f"refused: {error}") from None
    except ElementTree.ParseError as error:
        raise ReportError(f"not well-formed XML ({error})") from None
    if root is None:  # a parsed document always has a root; the stubs allow None
        raise ReportError("not well-formed XML (no root element)")
    return read_root(root)


def too_big(size: int) -> str:
    return f"{size / 2**20:.0f} MiB is more than the {MAX_REPORT_BYTES // 2**20} MiB a report may have"


def read_root(root: ElementTree.Element) -> ParsedReport:
    if _local(root.tag) not in ("testsuites", "testsuite"):
        raise ReportError(
            f"the root element is <{_local(root.tag)}>, not <testsuites> or <testsuite>: not a JUnit report"
        )
    cases = tuple(_case(element) for element in root.iter() if _local(element.tag) == "testcase")
    return ParsedReport(cases, _suite_time(root, cases))


def _case(element: ElementTree.Element) -> CaseResult:
    classname, name = element.get("classname", "").strip(), element.get("name", "").strip() or "(unnamed)"
    status: CaseStatus = "passed"
    message = ""
    children = {_local(child.tag): child for child in reversed(list(element))}  # the first of each kind
    for tag, outcome in OUTCOMES:
        if tag in children:
            status, message = outcome, _message(children[tag])
            break
    return CaseResult(
        f"{classname}.{name}" if classname else name, status, _number(element.get("time")) or 0.0, message
    )


def _message(element: ElementTree.Element) -> str:
    """The `message` attribute, else the element's text (jest-junit writes no attribute, go-junit-report a mere
    "Failed")."""
    attribute = (element.get("message") or "").strip()
    text = attribute if attribute.lower() not in PLACEHOLDER_MESSAGES else (element.text or "").strip() or attribute
    return text[:MAX_MESSAGE_CHARS]


def _suite_time(root: ElementTree.Element, cases: Sequence[CaseResult]) -> float:
    """The root's `time`; else the sum of its top-level suites' times; else the cases' sum."""
    own = _number(root.get("time"))
    if own is not None:
        return own
    suites = [_number(child.get("time")) for child in root if _local(child.tag) == "testsuite"]
    if suites and all(time is not None for time in suites):
        return sum(time for time in suites if time is not None)
    return sum(case.time for case in cases)


def _number(text: str | None) -> float | None:
    """JUnit times are seconds; some writers use a thousands separator (`1,234.5`)."""
    if not text:
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _local(tag: object) -> str:
    """The tag without a namespace (`{urn:x}testsuite` → `testsuite`); comments and PIs have no str tag."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def failing_block(cases: Iterable[CaseResult], limit: int) -> list[str]:
    """`name: first line of the message` for each failing test, at most `limit` lines, then `+N more`."""
    failing = [case for case in cases if case.failing]
    lines = [f"{case.name}: {case.first_line}" if case.first_line else case.name for case in failing[:limit]]
    if len(failing) > limit:
        lines.append(f"+{len(failing) - limit} more")
    return lines

"""`params.reports`: JUnit files copied out of the stopped containers, read, and summed.

Each entry names a file, a directory (every `*.xml` below it) or a glob (`*`, `?`, `[...]`
within a name, `**` across directories) in a container of a service. The engine's archive
of the deepest directory without a wildcard is read as a stream, and only the files that
match are written, under `<target>/<service>/<their path in the container>`.

A report that is missing or unreadable is a warning naming the entry; it never changes
the put's status, which the command's exit code alone decides.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from compose_env.config.model import ReportEntry
from compose_env.errors import UserError
from compose_env.run.containers import service_container, streamed_archive
from compose_env.run.junit import MAX_REPORT_BYTES, ReportError, ReportResults, parse_report

GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ReportFile:
    """One file read: where it was in the container, where it is now, how many tests it held."""

    service: str
    container_path: str
    local_path: Path
    tests: int = 0
    problem: str = ""


@dataclass
class ReportsOutcome:
    results: ReportResults = field(default_factory=ReportResults)
    files: list[ReportFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def read(self) -> list[ReportFile]:
        return [report for report in self.files if not report.problem]


def check_services(entries: Sequence[ReportEntry], known: Iterable[str]) -> None:
    """Before any service starts: every entry names a service of the project (a typo would cost a whole run)."""
    names = sorted(known)
    unknown = [entry for entry in entries if entry.service not in names]
    if unknown:
        hint = f"services: {', '.join(names) or 'none'}"
        raise UserError.many(
            [
                (f"{entry.param_path}.service", f"{entry.service!r} is not a service of the project", hint)
                for entry in unknown
            ]
        )


def path_matcher(path: str) -> tuple[str, Callable[[str], bool]]:
    """(the path to ask the engine for, whether a file's path in the container is wanted).

    A glob gives its deepest directory without a wildcard; a plain path is asked for as it
    is, and wanted is that file itself or, for a directory, every `.xml` file below it.
    """
    path = posixpath.normpath(path)
    parts = path.split("/")
    first_glob = next((index for index, part in enumerate(parts) if GLOB_CHARACTERS.search(part)), None)
    if first_glob is None:
        return (
            path,
            lambda candidate: (
                candidate == path or (candidate.startswith(path.rstrip("/") + "/") and candidate.endswith(".xml"))
            ),
        )
    base = "/".join(parts[:first_glob]) or "/"
    pattern = re.compile(glob_to_regex(path))
    return base, lambda candidate: pattern.fullmatch(candidate) is not None


def glob_to_regex(glob: str) -> str:
    """A path glob as a regex: `*` and `?` stay within a name, `[...]` is a class, `**/` spans directories."""
    out: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            out.append("(?:[^/]+/)*")
            index += 3
            continue
        if glob.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := glob.find("]", index + 2)) != -1:
            body = glob[index + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def collect_reports(
    client: docker.APIClient, project: str, entries: Sequence[ReportEntry], target: Path
) -> ReportsOutcome:
    """Copy every entry's files into `target` and read them; what goes wrong becomes a warning."""
    outcome = ReportsOutcome()
    for entry in entries:
        copied, problem = copy_entry(client, project, entry, target)
        if problem:
            outcome.warnings.append(f"{entry.describe()}: {problem}")
        for container_path, local_path, skipped in copied:
            report = _read(entry, container_path, local_path, skipped, outcome.results)
            outcome.files.append(report)
            if report.problem:
                outcome.warnings.append(f"{entry.describe()}: {container_path}: {report.problem}")
    return outcome


def _read(
    entry: ReportEntry, container_path: str, local_path: Path, skipped: str, results: ReportResults
) -> ReportFile:
    if skipped:
        return ReportFile(entry.service, container_path, local_path, problem=skipped)
    try:
        parsed = parse_report(local_path)
    except (ReportError, OSError) as error:
        return ReportFile(entry.service, container_path, local_path, problem=str(error))
    results.add(parsed)
    return ReportFile(entry.service, container_path, local_path, len(parsed.cases))


def copy_entry(
    client: docker.APIClient, project: str, entry: ReportEntry, target: Path
) -> tuple[list[tuple[str, Path, str]], str]:
    """The entry's files written under `target/<service>/`: [(path in the container, local path, why skipped)], and a
    problem."""
    base, wanted = path_matcher(entry.path)
    try:
        container = service_container(client, project, entry.service)
        if container is None:
            return [], f"no container of service {entry.service} (it did not run)"
        chunks, _stat = client.get_archive(container, base)
    except docker.errors.NotFound:
        return [], "no such file or directory in the container (did the tests get far enough to write it?)"
    except docker.errors.APIError as error:
        return [], f"copy failed: {error.explanation or error}"
    # The archive's names start with the last component of `base`; files go where they were.
    parent = posixpath.dirname(base.rstrip("/")) or "/"
    destination = target / entry.service / parent.lstrip("/")
    copied: list[tuple[str, Path, str]] = []
    try:
        with streamed_archive(chunks) as archive:
            for member in archive:
                container_path = posixpath.normpath(posixpath.join(parent, member.name))
                if not member.isfile() or not wanted(container_path):
                    continue
                local_path = destination / member.name
                if member.size > MAX_REPORT_BYTES:
                    copied.append(
                        (
                            container_path,
                            local_path,
                            f"{member.size / 2**20:.0f} MiB is more than a report may have "
                            f"({MAX_REPORT_BYTES // 2**20} MiB)",
                        )
                    )
                    continue
                try:
                    archive.extract(member, destination, filter="data")
                except tarfile.FilterError as error:
                    copied.append((container_path, local_path, f"not copied: {error}"))
                    continue
                copied.append((container_path, local_path, ""))
    except (tarfile.TarError, OSError, docker.errors.APIError) as error:
        return copied, f"copy failed: {error}"
    if not copied:
        return [], "no file matches" if base != posixpath.normpath(entry.path) else "holds no .xml file"
    return copied, ""

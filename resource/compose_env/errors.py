"""The two kinds of failure a put can end with, rendered the same way everywhere."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_ABORTED = 143


class UserError(Exception):
    """A problem with the configuration or the input files: exit 2, no traceback.

    `path` names the parameter (`params.images[1].path`) so that the first line of
    the build log says exactly what to change. Schema validation reports every
    problem at once: `problems` then holds one (path, message, hint) per problem,
    each rendered on its own line.
    """

    exit_code = EXIT_CONFIG

    def __init__(
        self, path: str, message: str, hint: str = "", *, problems: list[tuple[str, str, str]] | None = None
    ) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
        self.hint = hint
        self.problems = problems or [(path, message, hint)]

    @classmethod
    def many(cls, problems: list[tuple[str, str, str]]) -> UserError:
        """One error for several problems; its own path/message are the first problem's."""
        path, message, hint = problems[0]
        return cls(path, message, hint, problems=problems)

    def render(self) -> str:
        lines = []
        for path, message, hint in self.problems:
            lines.append(f"error: {path}: {message}" if path else f"error: {message}")
            if hint:
                lines.append(f"  hint: {hint}")
        return "\n".join(lines)


class RuntimeFailure(Exception):
    """Something failed while running (daemon, load, compose): exit 1, with a diagnosis."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, diagnosis: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.diagnosis = diagnosis

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.diagnosis:
            text += "\n" + "\n".join(f"  {line}" for line in self.diagnosis.splitlines())
        return text


class DaemonStartFailure(RuntimeFailure):
    """The inner dockerd or containerd did not start: a task cache it refused is wiped and the run tried again."""


class Aborted(BaseException):
    """Raised in the main thread by the SIGTERM handler (Concourse abort or step timeout).

    A BaseException so that `except Exception` blocks in the flow do not swallow it.
    """

    exit_code = EXIT_ABORTED

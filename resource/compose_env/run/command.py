"""The user's compose command as far as validation and reporting need it: subcommand, services, options.

Compose has no parser to ask, so the few options that take a value are listed here: enough to
find the services a command names (and the one `run` runs), `--exit-code-from`, `--no-deps`, and
what it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: `run` options that take a value: needed to find the service among the arguments.
RUN_VALUE_OPTIONS = {
    "-e", "--env", "--entrypoint", "-l", "--label", "--name", "-p", "--publish", "-u", "--user",
    "-v", "--volume", "-w", "--workdir", "--cap-add", "--cap-drop", "--pull", "--env-from-file",
}  # fmt: skip
UP_VALUE_OPTIONS = {
    "--exit-code-from",
    "-t",
    "--timeout",
    "--scale",
    "--attach",
    "--no-attach",
    "--pull",
    "--wait-timeout",
}
#: Subcommands that create containers, so their images must exist first.
CREATING_SUBCOMMANDS = {"up", "run", "create"}
#: Subcommands whose positional arguments are service names.
SERVICE_SUBCOMMANDS = {"up", "create", "start", "restart", "stop", "logs", "pull", "build"}


@dataclass(frozen=True)
class CommandShape:
    """What the user's command is, as far as validation and reporting need to know."""

    subcommand: str
    services: tuple[str, ...]
    exit_code_from: str | None = None
    run_service: str | None = None
    no_deps: bool = False
    #: every option given, with its value ("" for flags)
    options: tuple[tuple[str, str], ...] = ()

    def values_of(self, *names: str) -> list[str]:
        return [value for option, value in self.options if option in names]

    def follows_output_of(self, service: str) -> bool:
        """Whether compose prints this service's output with a prefix (attached `up`)."""
        if self.subcommand != "up" or self.values_of("-d", "--detach", "--wait", "--no-log-prefix"):
            return False
        attach = self.values_of("--attach")
        return (not attach or service in attach) and service not in self.values_of("--no-attach")

    @property
    def named_services(self) -> tuple[str, ...]:
        """Every service the command names, which must exist in the project."""
        extra = (self.exit_code_from,) if self.exit_code_from and self.exit_code_from not in self.services else ()
        return self.services + extra


def analyse_command(command: Sequence[str]) -> CommandShape:
    if not command:
        return CommandShape("", ())
    subcommand, args = command[0], list(command[1:])
    value_options = RUN_VALUE_OPTIONS if subcommand == "run" else UP_VALUE_OPTIONS if subcommand == "up" else set()
    positionals: list[str] = []
    exit_code_from = None
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            positionals += args[index + 1 :]
            break
        if arg.startswith("-"):
            option, has_value, value = arg.partition("=")
            if option in value_options and not has_value:
                value = args[index + 1] if index + 1 < len(args) else ""
                index += 1
            if option == "--exit-code-from":
                exit_code_from = value
            options.append((option, value))
            index += 1
            continue
        positionals.append(arg)
        if subcommand == "run":
            break  # the rest is the command run inside the container
        index += 1
    no_deps = any(option == "--no-deps" for option, _ in options)
    if subcommand == "run":
        service = positionals[0] if positionals else None
        return CommandShape("run", (service,) if service else (), None, service, no_deps, tuple(options))
    services = tuple(positionals) if subcommand in SERVICE_SUBCOMMANDS else ()
    return CommandShape(subcommand, services, exit_code_from, None, no_deps, tuple(options))


def services_started(shape: CommandShape, services: Mapping[str, Any]) -> list[str]:
    """The services whose containers the command creates: its targets (or all) and their dependencies."""
    if shape.subcommand not in CREATING_SUBCOMMANDS:
        return []
    roots = list(shape.services) or (list(services) if shape.subcommand != "run" else [])
    if shape.no_deps:
        return [name for name in roots if name in services]
    started: list[str] = []
    pending = list(roots)
    while pending:
        name = pending.pop(0)
        if name in started or name not in services:
            continue
        started.append(name)
        depends_on = services[name].get("depends_on") or {}
        pending += list(depends_on)  # a map in `config --format json`, a list in older forms: both iterate names
    return started

"""Requests → validated, typed, frozen configuration, with paths resolved inside the put directory."""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from compose_env.config.paths import PathResolver
from compose_env.config.schema import PathPart, default_at, describe, format_path, validate, with_defaults
from compose_env.errors import UserError


def _frozen(value: Any) -> Any:
    """A schema value as a frozen dataclass holds it: lists become tuples."""
    return tuple(value) if isinstance(value, list) else value


def _source_default(*keys: str) -> Any:
    return _frozen(default_at("source", *keys))


def _params_default(*keys: str) -> Any:
    return _frozen(default_at("put_params", *keys))


DEFAULT_DATA_ROOT: str = _source_default("dockerd", "data_root")
#: The project name when Concourse sets no BUILD_* variables (task mode).
DEFAULT_PROJECT_NAME: str = _params_default("project_name")


@dataclass(frozen=True)
class BuildMetadata:
    """The BUILD_* variables Concourse sets for get/put, read in one place."""

    build_id: str = ""
    build_name: str = ""
    job_name: str = ""
    pipeline_name: str = ""
    team_name: str = ""
    external_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuildMetadata:
        return cls(
            build_id=env.get("BUILD_ID", ""),
            build_name=env.get("BUILD_NAME", ""),
            job_name=env.get("BUILD_JOB_NAME", ""),
            pipeline_name=env.get("BUILD_PIPELINE_NAME", ""),
            team_name=env.get("BUILD_TEAM_NAME", ""),
            external_url=env.get("ATC_EXTERNAL_URL", ""),
        )

    def project_name(self) -> str:
        """A compose project name from pipeline/job/build, sanitised to compose's rules."""
        parts = [p for p in (self.pipeline_name, self.job_name, self.build_name) if p]
        return sanitize_project_name("-".join(parts)) or DEFAULT_PROJECT_NAME


def sanitize_project_name(raw: str) -> str:
    """Compose accepts `[a-z0-9][a-z0-9_-]*`: lowercase, map the rest to '-', trim."""
    name = re.sub(r"[^a-z0-9_-]+", "-", raw.lower())
    name = re.sub(r"-{2,}", "-", name).lstrip("-_")
    return name[:63].rstrip("-_")


@dataclass(frozen=True)
class DockerdOptions:
    """`source.dockerd`; each default is the schema's (`schemas/source.json`), None where it has none."""

    storage_driver: str = _source_default("dockerd", "storage_driver")
    data_root: str = DEFAULT_DATA_ROOT
    data_root_medium: str = _source_default("dockerd", "data_root_medium")
    #: None: the MTU of the default-route interface, found when dockerd starts.
    mtu: int | None = None
    registry_mirrors: tuple[str, ...] = _source_default("dockerd", "registry_mirrors")
    insecure_registries: tuple[str, ...] = _source_default("dockerd", "insecure_registries")
    debug: bool = _source_default("dockerd", "debug")
    iptables: str = _source_default("dockerd", "iptables")
    args: tuple[str, ...] = _source_default("dockerd", "args")
    #: Write loadable images straight into the overlay2 store before dockerd starts (images.layerstore).
    direct_load: bool = _source_default("dockerd", "direct_load")


@dataclass(frozen=True)
class RegistryLogin:
    host: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = field(default=None, repr=False)
    cert: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Source:
    startup_timeout: float = float(_source_default("startup_timeout"))
    dockerd: DockerdOptions = DockerdOptions()
    registries: tuple[RegistryLogin, ...] = _source_default("registries")
    docker_host: str | None = None
    tls: TlsFiles | None = None


@dataclass(frozen=True)
class ImageEntry:
    """One `params.images` entry: where it is, how the user wrote it, and extra names."""

    index: int
    path: Path
    given: str
    tags: tuple[str, ...] = ()

    @property
    def param_path(self) -> str:
        return f"params.images[{self.index}]"


@dataclass(frozen=True)
class LogOptions:
    tail: int = _params_default("logs", "tail")
    services: tuple[str, ...] | None = None
    #: What the whole response may take (report.py shares it out): 4000 works on every Concourse release.
    metadata_bytes: int = _params_default("logs", "metadata_bytes")


@dataclass(frozen=True)
class ReportEntry:
    """One `params.reports` entry: JUnit XML at `path` (a file, a directory or a glob) in a container of `service`."""

    param_path: str
    service: str
    path: str

    def describe(self) -> str:
        """`params.reports[0] (tests:/reports/*.xml)`: what a warning names."""
        return f"{self.param_path} ({self.service}:{self.path})"


@dataclass(frozen=True)
class PutParams:
    """Put params; each default is the schema's (`schemas/put_params.json`), None where it has none."""

    compose_files: tuple[Path, ...]
    project_directory: Path
    project_name: str
    images: tuple[ImageEntry, ...] = _params_default("images")
    command: tuple[str, ...] = _params_default("command")
    env: Mapping[str, str] = field(default_factory=partial(_params_default, "env"))
    env_files: tuple[Path, ...] = _params_default("env_files")
    profiles: tuple[str, ...] = _params_default("profiles")
    timeout: float | None = None
    fail_on_error: bool = _params_default("fail_on_error")
    logs: LogOptions = LogOptions()
    stop_grace: int = _params_default("stop_grace")
    reports: tuple[ReportEntry, ...] = _params_default("reports")
    #: Services given the environment's engine (run/docker_socket.py).
    docker_socket: tuple[str, ...] = _params_default("docker_socket")
    #: Each compose and env file → how an error names it: `params.compose_files[1] (ci/compose.test.yml)`.
    file_labels: Mapping[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PutConfig:
    source: Source
    params: PutParams
    build: BuildMetadata
    put_dir: Path


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` wins; nested objects merge key by key; lists are replaced, not appended."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_duration(value: float | int | str, path: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", value)
    if not match:
        raise UserError(path, f"{value!r} is not a duration", 'use "90s", "30m", "1h" or a number of seconds')
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0:
        raise UserError(path, "must be more than zero")
    return seconds


def _as_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def parse_source(raw: Mapping[str, Any] | None) -> Source:
    """`source` → Source; also checks `source.params` (the put params' defaults) on their own."""
    raw = dict(raw or {})
    validate(raw, "source", "source")
    validate(raw.get("params") or {}, "put_params", "source.params", ignore_required=True)
    return _source_from(raw)


def _source_from(given: Mapping[str, Any]) -> Source:
    """Source from a validated `source`; the keys without a schema default may be absent."""
    raw = with_defaults(given, "source")
    dockerd_raw = raw["dockerd"]
    dockerd = DockerdOptions(
        storage_driver=dockerd_raw["storage_driver"],
        data_root=dockerd_raw["data_root"],
        data_root_medium=dockerd_raw["data_root_medium"],
        mtu=dockerd_raw.get("mtu"),
        registry_mirrors=tuple(dockerd_raw["registry_mirrors"]),
        insecure_registries=tuple(dockerd_raw["insecure_registries"]),
        debug=dockerd_raw["debug"],
        iptables=dockerd_raw["iptables"],
        args=tuple(dockerd_raw["args"]),
        direct_load=dockerd_raw["direct_load"],
    )
    tls = None
    if "tls" in raw:
        if "docker_host" not in raw:
            raise UserError("source.tls", "is only used with source.docker_host", "remove it, or set docker_host")
        tls = TlsFiles(**raw["tls"])
    return Source(
        startup_timeout=float(raw["startup_timeout"]),
        dockerd=dockerd,
        registries=tuple(RegistryLogin(**r) for r in raw["registries"]),
        docker_host=raw.get("docker_host"),
        tls=tls,
    )


def _has_path(document: Any, parts: tuple[PathPart, ...]) -> bool:
    for part in parts:
        in_object = isinstance(document, Mapping) and isinstance(part, str) and part in document
        in_list = isinstance(document, list) and isinstance(part, int) and part < len(document)
        if not (in_object or in_list):
            return False
        document = document[part]
    return True


@dataclass(frozen=True)
class MergedParams:
    """Put params with `source.params` deep-merged under them, remembering where each value came from."""

    values: dict[str, Any]
    given: Mapping[str, Any]
    defaults: Mapping[str, Any]

    def root_for(self, parts: tuple[PathPart, ...]) -> str:
        """`source.params` for a value that only the defaults hold, else `params`."""
        if not _has_path(self.given, parts) and _has_path(self.defaults, parts):
            return "source.params"
        return "params"

    def path(self, *parts: PathPart) -> str:
        return format_path(self.root_for(parts), parts)


def merged_params(source_raw: Mapping[str, Any] | None, params_raw: Mapping[str, Any] | None) -> MergedParams:
    defaults = (source_raw or {}).get("params") or {}
    if not isinstance(defaults, Mapping):
        raise UserError("source.params", f"expected an object of default put params, got {describe(defaults)}")
    given = params_raw or {}
    return MergedParams(deep_merge(defaults, given), given, defaults)


def env_value(value: str | float | bool) -> str:
    """A `params.env` value as compose passes its own `environment:` values: `5432` → `5432`, `true` → `true`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def parse_command(value: str | list[str]) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(value)
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise UserError("params.command", f"cannot split {value!r}: {error}", "check the quotes") from None
    if not words:
        raise UserError("params.command", "is empty")
    return tuple(words)


def _image_entries(items: list[Any], merged: MergedParams, resolver: PathResolver) -> tuple[ImageEntry, ...]:
    entries = []
    for index, item in enumerate(items):
        given = item if isinstance(item, str) else item["path"]
        where = merged.path("images", index) if isinstance(item, str) else merged.path("images", index, "path")
        resolved = resolver.resolve(given, where, kind="path")
        tags = () if isinstance(item, str) else _as_tuple(item.get("tag"))
        entries.append(ImageEntry(index=index, path=resolved, given=given, tags=tags))
    return tuple(entries)


def parse_put_params(merged: MergedParams, put_dir: Path, build: BuildMetadata) -> PutParams:
    """Typed params from merged values that parse_put_request has already validated.

    The keys without a schema default may be absent.
    """
    raw = with_defaults(merged.values, "put_params")
    resolver = PathResolver(put_dir)

    compose_given = _as_tuple(raw["compose_files"])
    as_list = isinstance(raw["compose_files"], list)
    labels: dict[Path, str] = {}
    resolved_files = []
    for index, given in enumerate(compose_given):
        where = merged.path("compose_files", index) if as_list else merged.path("compose_files")
        resolved_files.append(resolver.resolve(given, where))
        labels.setdefault(resolved_files[-1], f"{where} ({given})")
    compose_files = tuple(resolved_files)
    if "project_directory" in raw:
        project_directory = resolver.resolve(
            raw["project_directory"], merged.path("project_directory"), kind="directory"
        )
    else:
        project_directory = compose_files[0].parent

    images = _image_entries(raw["images"], merged, resolver)
    env_files = tuple(resolver.resolve(g, merged.path("env_files", i)) for i, g in enumerate(raw["env_files"]))
    for index, (given, env_file) in enumerate(zip(raw["env_files"], env_files, strict=True)):
        labels.setdefault(env_file, f"{merged.path('env_files', index)} ({given})")
    logs_raw = raw["logs"]
    return PutParams(
        compose_files=compose_files,
        project_directory=project_directory,
        # The schema's default name is the last choice: the one Concourse's BUILD_* variables give comes first.
        project_name=merged.values.get("project_name") or build.project_name(),
        images=images,
        command=parse_command(raw["command"]),
        env={name: env_value(value) for name, value in raw["env"].items()},
        env_files=env_files,
        profiles=tuple(raw["profiles"]),
        timeout=parse_duration(raw["timeout"], merged.path("timeout")) if "timeout" in raw else None,
        fail_on_error=raw["fail_on_error"],
        logs=LogOptions(
            tail=logs_raw["tail"],
            services=tuple(logs_raw["services"]) if "services" in logs_raw else None,
            metadata_bytes=logs_raw["metadata_bytes"],
        ),
        stop_grace=raw["stop_grace"],
        docker_socket=tuple(raw["docker_socket"]),
        reports=tuple(
            ReportEntry(merged.path("reports", i), item["service"], item["path"])
            for i, item in enumerate(raw["reports"])
        ),
        file_labels=labels,
    )


def parse_put_request(request: Mapping[str, Any], put_dir: Path, build: BuildMetadata) -> PutConfig:
    """Validate source and the merged params together, so that one run reports every problem."""
    source_raw = request.get("source") or {}
    problems: list[tuple[str, str, str]] = []
    try:
        validate(source_raw, "source", "source")
    except UserError as error:
        problems += error.problems
    merged = (
        merged_params(source_raw, request.get("params"))
        if isinstance(source_raw.get("params") or {}, Mapping)
        else None
    )
    if merged is not None:
        try:
            validate(merged.values, "put_params", merged.root_for)
        except UserError as error:
            problems += error.problems
    if problems or merged is None:
        raise UserError.many(problems)
    source = _source_from(source_raw)
    if source.docker_host and merged.values.get("docker_socket"):
        raise UserError(
            merged.path("docker_socket"),
            f"cannot hand out the engine at {source.docker_host} (source.docker_host): its socket is not in this "
            "container",
            "remove params.docker_socket, or source.docker_host so that the put starts its own engine, whose socket "
            "it binds",
        )
    params = parse_put_params(merged, put_dir, build)
    return PutConfig(source=source, params=params, build=build, put_dir=Path(put_dir))

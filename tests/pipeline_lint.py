"""Every Concourse pipeline and task config in the repository, checked as `fly validate-pipeline` would and beyond.

The documents: README.md's and docs/'s ```yaml blocks, pipeline-example.yml, tasks/*.yml, ci/pipeline.yml
and ci/tasks/*.yml. Each must be a whole pipeline or a whole task config (no fragments a reader
cannot paste; a compose-env put step shown alone is checked as one), and:

- its structure is valid: known top-level keys, unique valid names, steps of known kinds, a task with
  `file:` or `config:`, a task config with `platform` and `run.path` (Concourse's own validation);
- every resource a step uses, and every resource type, is declared (or built into the workers);
- every artifact a step reads (task inputs, `image:`, put `inputs:`, `load_var` files) was made by
  an earlier step of its job: a `get` of a task's output fails as an unknown resource;
- every task `file:` in this repository's input exists;
- every `((var))` is listed where the document says how to set it: `-v var=` in a file's header
  comments, or `((var))` / `-v var=` in the Markdown around a block;
- every compose-env put and task passes compose-env's own validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from compose_env.config.model import merged_params, parse_source
from compose_env.config.schema import validate
from compose_env.errors import UserError
from compose_env.run.task import validate_compose_env

ROOT = Path(__file__).resolve().parents[1]
#: Pipeline keys Concourse accepts (it refuses unknown ones).
TOP_LEVEL_KEYS = {"jobs", "resources", "resource_types", "groups", "var_sources", "display"}
#: Resource types every Concourse worker ships with.
CORE_TYPES = {
    "git", "registry-image", "time", "semver", "s3", "docker-image", "pool", "github-release", "hg",
    "bosh-io-release", "bosh-io-stemcell", "cf", "mock", "tracker",
}  # fmt: skip
#: Concourse's identifier rule (a lowercase letter first; then letters, digits, `-`, `_`, `.`).
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_.-]*$")
STEP_KINDS = ("get", "put", "task", "load_var", "in_parallel", "do", "try", "set_pipeline")
HOOKS = ("ensure", "on_success", "on_failure", "on_error", "on_abort")
#: Files the git resource writes into its clone, beyond the repository's own.
GIT_RESOURCE_FILES = {".git/ref", ".git/short_ref", ".git/commit_message", ".git/committer", ".git/describe_ref"}
RESOURCE_TASK = "/opt/resource/task"
VARIABLE = re.compile(r"\(\(([A-Za-z0-9_-]+)\)\)")


@dataclass(frozen=True)
class Document:
    """One pipeline or task config: where it is, its YAML, the text that says how to set its variables."""

    label: str
    text: str
    explanation: str
    #: The input that is this repository (ci/pipeline.yml's `code`): its `file:`s are checked here.
    repository_input: str | None = None

    def parsed(self) -> Any:
        return yaml.safe_load(self.text)


def documents(root: Path = ROOT) -> list[Document]:
    found = []
    for name in ("README.md", *sorted(str(p.relative_to(root)) for p in (root / "docs").glob("*.md"))):
        text = (root / name).read_text()
        blocks = list(re.finditer(r"^```yaml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL))
        prose = re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)
        found += [Document(f"{name} yaml block {n + 1}", block.group(1), prose) for n, block in enumerate(blocks)]
    files = [
        "pipeline-example.yml",
        "ci/pipeline.yml",
        *sorted(
            str(p.relative_to(root)) for p in [*(root / "tasks").glob("*.yml"), *(root / "ci" / "tasks").glob("*.yml")]
        ),
    ]
    for name in files:
        text = (root / name).read_text()
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        found.append(Document(name, text, header, "code" if name.startswith("ci/") else None))
    return found


def lint(document: Document, root: Path = ROOT) -> list[str]:
    try:
        parsed = document.parsed()
    except yaml.YAMLError as error:
        return [f"{document.label}: not valid YAML: {error}"]
    if not isinstance(parsed, dict):
        return [f"{document.label}: neither a pipeline nor a task config"]
    if "jobs" in parsed:
        problems = Pipeline(parsed, document, root).problems()
    elif "run" in parsed or "platform" in parsed:
        problems = task_config_problems(parsed, document.label)
    elif "put" in parsed:
        problems = put_step_problems(parsed, document.label)
    else:
        return [
            f"{document.label}: neither a pipeline (jobs:), a task config (platform:, run:) nor a put step: a "
            "fragment a reader cannot use"
        ]
    used = set(VARIABLE.findall(yaml.safe_dump(parsed)))  # comments may name variables of other files
    problems += [
        f"{document.label}: (({name})) is not listed where the document says how to set it"
        for name in sorted(used)
        if not _explained(name, document)
    ]
    return problems


def _explained(name: str, document: Document) -> bool:
    return f"-v {name}=" in document.explanation or (
        not document.label.endswith(".yml") and f"(({name}))" in document.explanation
    )


def steps(plan: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step of a plan, nested ones (in_parallel, do, try, hooks) included."""
    for step in plan:
        yield step
        nested = step.get("in_parallel") or step.get("do") or []
        if isinstance(nested, dict):
            nested = nested.get("steps", [])
        yield from steps(nested)
        for key in ("try", *HOOKS):
            if key in step:
                yield from steps([step[key]])


def resource_of(step: dict[str, Any]) -> str:
    name: str = step.get("resource", step.get("get") or step.get("put"))
    return name


def task_config_problems(config: dict[str, Any], where: str) -> list[str]:
    problems = []
    if config.get("platform") not in ("linux", "darwin", "windows"):
        problems.append(f"{where}: platform must be linux, darwin or windows")
    if not isinstance(config.get("run"), dict) or not config["run"].get("path"):
        problems.append(f"{where}: run.path is missing")
    for kind in ("inputs", "outputs", "caches"):
        key = "path" if kind == "caches" else "name"
        if not all(isinstance(item, dict) and item.get(key) for item in config.get(kind, [])):
            problems.append(f"{where}: every one of {kind} needs a {key}")
    if config.get("run", {}).get("path") == RESOURCE_TASK:
        try:
            validate_compose_env(config.get("params", {}).get("COMPOSE_ENV"))
        except UserError as error:
            problems.append(f"{where}: {error.render()}")
    return problems


def put_step_problems(step: dict[str, Any], where: str) -> list[str]:
    """A compose-env put step shown alone: its params pass compose-env's validation, its paths start with one of its
    inputs."""
    try:
        merged = merged_params({}, step.get("params") or {})
        validate(merged.values, "put_params", merged.root_for)
    except UserError as error:
        return [f"{where}: {error.render()}"]
    inputs = step.get("inputs")
    params = step.get("params") or {}
    paths = [
        *(
            [params["compose_files"]]
            if isinstance(params.get("compose_files"), str)
            else params.get("compose_files", [])
        )
    ]
    paths += [item if isinstance(item, str) else item["path"] for item in params.get("images", [])]
    if not isinstance(inputs, list):
        return [f"{where}: a put shown alone lists its inputs"]
    return [
        f"{where}: {path} is not in the put's inputs {inputs}" for path in paths if path.split("/")[0] not in inputs
    ]


class Pipeline:
    """One pipeline's checks; `problems()` lists them in `fly validate-pipeline`'s words where it has them."""

    def __init__(self, pipeline: dict[str, Any], document: Document, root: Path) -> None:
        self.pipeline = pipeline
        self.document = document
        self.root = root
        self.resources = {r["name"]: r for r in pipeline.get("resources", [])}
        self.types = {t["name"]: t for t in pipeline.get("resource_types", [])}

    def problems(self) -> list[str]:
        problems = [f"unknown top-level key '{key}'" for key in sorted(set(self.pipeline) - TOP_LEVEL_KEYS)]
        for kind in ("jobs", "resources", "resource_types"):
            names = [item.get("name", "") for item in self.pipeline.get(kind, [])]
            problems += [
                f"{kind}: '{name}' appears more than once" for name in sorted({n for n in names if names.count(n) > 1})
            ]
            problems += [f"{kind}: '{name}' is not a valid identifier" for name in names if not IDENTIFIER.match(name)]
        problems += [
            f"resource '{n}': unknown type '{r['type']}'"
            for n, r in self.resources.items()
            if r.get("type") not in {*self.types, *CORE_TYPES}
        ]
        problems += [
            f"resource type '{n}': unknown type '{t['type']}'"
            for n, t in self.types.items()
            if t.get("type") not in CORE_TYPES
        ]
        for job in self.pipeline["jobs"]:
            problems += self._job_problems(job)
        return [f"{self.document.label}: {problem}" for problem in problems]

    def _job_problems(self, job: dict[str, Any]) -> list[str]:
        where = f"jobs.{job['name']}"
        problems: list[str] = []
        for step in steps(job.get("plan", [])):
            kind = next((k for k in STEP_KINDS if k in step), None)
            if kind is None:
                problems.append(f"{where}: a step of no known kind: {sorted(step)}")
                continue
            if kind == "task" and ("file" in step) == ("config" in step):
                problems.append(f"{where}.task({step['task']}): must specify one of `file:` or `config:`")
            if kind == "task" and "config" in step:
                problems += task_config_problems(step["config"], f"{where}.task({step['task']})")
            if "file" in step:
                problems += self._missing_file(f"{where}.{kind}({step[kind]})", step["file"])
            if kind in ("get", "put"):
                problems += self._resource_problems(where, kind, step)
        problems += self._flow_problems(where, job.get("plan", []), set())
        return problems

    def _resource_problems(self, where: str, kind: str, step: dict[str, Any]) -> list[str]:
        name = resource_of(step)
        if name not in self.resources:
            return [f"{where}.{kind}({step[kind]}): unknown resource '{name}'"]
        problems = []
        jobs = {j["name"]: j for j in self.pipeline["jobs"]}
        for upstream in step.get("passed", []):
            if upstream not in jobs:
                problems.append(f"{where}.get({step['get']}).passed: unknown job '{upstream}'")
            elif name not in {resource_of(s) for s in steps(jobs[upstream]["plan"]) if "get" in s or "put" in s}:
                problems.append(
                    f"{where}.get({step['get']}).passed: job '{upstream}' does not interact with resource '{name}'"
                )
        resource_type = self.types.get(self.resources[name]["type"])
        if kind == "put" and resource_type is not None and _is_compose_env(resource_type):
            try:
                source = self.resources[name].get("source") or {}
                parse_source(source)
                merged = merged_params(source, step.get("params") or {})
                validate(merged.values, "put_params", merged.root_for)
            except UserError as error:
                problems.append(f"{where}.put({step['put']}): {error.render()}")
        return problems

    def _missing_file(self, where: str, path: str) -> list[str]:
        first, _, rest = path.partition("/")
        if first != self.document.repository_input or rest in GIT_RESOURCE_FILES or (self.root / rest).is_file():
            return []
        return [f"{where}: file {path} does not exist in the repository"]

    def _task_config(self, step: dict[str, Any]) -> dict[str, Any]:
        if "config" in step:
            config: dict[str, Any] = step["config"]
            return config
        first, _, rest = step["file"].partition("/")
        if first == self.document.repository_input and (self.root / rest).is_file():
            loaded: dict[str, Any] = yaml.safe_load((self.root / rest).read_text())
            return loaded
        return {}

    def _flow_problems(self, where: str, plan: list[dict[str, Any]], available: set[str]) -> list[str]:
        """Concourse mounts only artifacts of earlier steps: a wrong name fails the build, not set-pipeline."""
        problems: list[str] = []
        for step in plan:
            group = step.get("in_parallel")
            members = (group.get("steps", []) if isinstance(group, dict) else group) if group else [step]
            made: set[str] = set()
            for member in members:
                reads, outputs = self._reads_and_outputs(member)
                label = member.get("task") or member.get("get") or member.get("put") or member.get("load_var") or "do"
                problems += [
                    f"{where}.{label}: reads '{name}', which no earlier step made" for name in sorted(reads - available)
                ]
                made |= outputs
                for nested in ("do", "try", *HOOKS):
                    if nested in member:
                        body = member[nested] if isinstance(member[nested], list) else [member[nested]]
                        problems += self._flow_problems(where, body, available | made)
            available |= made
        return problems

    def _reads_and_outputs(self, step: dict[str, Any]) -> tuple[set[str], set[str]]:
        if "get" in step:
            return set(), {step["get"]}
        if "load_var" in step:
            return {step["file"].split("/")[0]}, set()
        if "put" in step:
            inputs = step.get("inputs", "all")
            return (set(inputs) if isinstance(inputs, list) else set()), {step["put"]}
        if "task" not in step:
            return set(), set()
        config = self._task_config(step)
        mapping = step.get("input_mapping", {})
        reads = {
            mapping.get(item["name"], item["name"]) for item in config.get("inputs", []) if not item.get("optional")
        }
        reads |= {step["image"]} if "image" in step else set()
        if "file" in step:
            reads.add(step["file"].split("/")[0])
        outputs = {step.get("output_mapping", {}).get(item["name"], item["name"]) for item in config.get("outputs", [])}
        return reads, outputs


def _is_compose_env(resource_type: dict[str, Any]) -> bool:
    """A resource type whose image is compose-env's (its repository is the image variable, or compose-env's rc)."""
    repository = str((resource_type.get("source") or {}).get("repository", ""))
    return "compose_env_image" in repository or resource_type["name"].startswith("compose-env")

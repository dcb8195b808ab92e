"""Validate JSON against the schemas shipped in `schemas/`, one readable line per problem.

jsonschema's own messages (`42 is not valid under any of the given schemas`) name
neither the parameter nor the fix. Each error is translated here into a problem:
the path inside the document, what is wrong, and a hint (did you mean ...?).
Schemas carry three extra keywords for this: `x-expected` (what a value must look
like), `x-hints` (per required key) and `x-unknown-hint` (for unknown keys).

The schemas are also the one place defaults are written (`default`): `with_defaults` fills
them into a validated document, `default_at` reads one for a dataclass field. A default that
depends on another value is written as a keyword of its own: `x-default-folder` (an
artifact's `to` is this folder, then the service's name).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urljoin

import jsonschema
from referencing import Registry, Resource

from compose_env.errors import UserError

PathPart = str | int
#: Maps a problem's path parts to the name of the document it is in (`params`, `source.params`).
RootFor = Callable[[tuple[PathPart, ...]], str]
SCHEMA_NAMES = ("source", "put_params", "request", "in_request", "task_config")
#: Beyond this many, a wrong document (the wrong file passed as params?) would flood the log.
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    parts: tuple[PathPart, ...]
    message: str
    hint: str = ""


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schemas", f"{name}.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _registry() -> Registry:
    """All shipped schemas by `$id`, so that `task_config` can `$ref` the put params."""
    schemas = [load_schema(name) for name in SCHEMA_NAMES]
    return Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas)


def _resolved(schema: Mapping[str, Any], base: str) -> tuple[dict[str, Any], str]:
    """`schema` with its `$ref` followed (keywords beside the `$ref`, such as a `default`, kept), and the `$id` it is
    in."""
    if "$ref" not in schema:
        return dict(schema), base
    target = _registry().resolver(base_uri=base).lookup(schema["$ref"])
    beside = {key: value for key, value in schema.items() if key != "$ref"}
    resolved, base = _resolved(target.contents, urljoin(base, schema["$ref"]).partition("#")[0])
    return {**resolved, **beside}, base


def subschema(schema_name: str, *keys: str) -> dict[str, Any]:
    """The schema of the value at `keys` in a document of the named schema; a list's items are stepped into."""
    schema = load_schema(schema_name)
    base: str = schema["$id"]
    for key in keys:
        if "items" in schema:
            schema, base = _resolved(schema["items"], base)
        schema, base = _resolved(schema["properties"][key], base)
    return schema


def default_at(schema_name: str, *keys: str) -> Any:
    """The schema's `default` for the value at `keys`: what a dataclass field starts as."""
    return copy.deepcopy(subschema(schema_name, *keys)["default"])


def with_defaults(instance: Mapping[str, Any], schema_name: str) -> dict[str, Any]:
    """A copy of a valid document with every absent key that has a `default` set to it, at any depth."""
    schema = load_schema(schema_name)
    filled: dict[str, Any] = _filled(instance, schema, schema["$id"])
    return filled


def _filled(value: Any, schema: Mapping[str, Any], base: str) -> Any:
    schema, base = _resolved(schema, base)
    if isinstance(value, Mapping) and "properties" in schema:
        properties: dict[str, Any] = schema["properties"]
        filled = {key: _filled(item, properties.get(key, {}), base) for key, item in value.items()}
        for key, property_schema in properties.items():
            resolved = _resolved(property_schema, base)[0]
            if key not in filled and "default" in resolved:
                filled[key] = _filled(copy.deepcopy(resolved["default"]), property_schema, base)
        return filled
    if isinstance(value, list) and "items" in schema:
        return [_filled(item, schema["items"], base) for item in value]
    return copy.deepcopy(value)


def format_path(root: str, parts: Sequence[PathPart]) -> str:
    path = root
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _with_article(words: str) -> str:
    return words if words == "null" else ("an " if words[0] in "aeiou" else "a ") + words


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower().replace("-", "_")


def did_you_mean(key: str, allowed: Sequence[str]) -> str | None:
    """The closest known key: `compose_file` → `compose_files`, `composeFiles` → `compose_files`."""
    snake = _snake(key)
    if snake in allowed and snake != key:
        return snake
    close = difflib.get_close_matches(snake, allowed, n=1, cutoff=0.6)
    return close[0] if close else None


def _branch_for_value(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError] | None:
    """Errors of the one anyOf/oneOf branch whose type fits the value, if exactly one fits.

    For `images[0]: {path: 1}` the object branch fits, so its precise error
    (`images[0].path: must be a string`) says more than "expected a path or {path, tag}".
    """
    by_branch: dict[int | str, list[jsonschema.ValidationError]] = {}
    for inner in error.context or []:
        by_branch.setdefault(inner.relative_schema_path[0], []).append(inner)
    depth = len(error.absolute_path)
    fitting = [
        errors
        for errors in by_branch.values()
        if not any(e.validator == "type" and len(e.absolute_path) == depth for e in errors)
    ]
    return fitting[0] if len(fitting) == 1 else None


def _problems(error: jsonschema.ValidationError) -> list[Problem]:
    """Turn one jsonschema error into problems, each with its path and a fix."""
    parts = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance: Any = error.instance
    got = describe(instance)

    if error.validator == "additionalProperties" and schema.get("additionalProperties") is False:
        allowed = sorted(schema.get("properties", {}))
        problems = []
        for key in instance:
            if key in allowed:
                continue
            close = did_you_mean(key, allowed)
            hint = (
                f"did you mean '{close}'?"
                if close
                else schema.get("x-unknown-hint") or f"known keys: {', '.join(allowed)}"
            )
            problems.append(Problem((*parts, key), "unknown key", hint))
        return problems
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [Problem((*parts, missing), "is required", schema.get("x-hints", {}).get(missing, ""))]
    if error.validator in ("anyOf", "oneOf"):
        branch = _branch_for_value(error)
        if branch:
            return [problem for inner in branch for problem in _problems(inner)]
        return [Problem(parts, f"expected {schema.get('x-expected', 'another type')}, got {got}")]
    if "x-expected" in schema and error.validator in ("type", "pattern"):
        return [Problem(parts, f"expected {schema['x-expected']}, got {got}")]
    if error.validator == "type":
        wanted = schema.get("type")
        wanted_text = (
            " or ".join(_with_article(w) for w in wanted) if isinstance(wanted, list) else _with_article(str(wanted))
        )
        shown = "" if instance is None else f" ({got})"
        return [Problem(parts, f"must be {wanted_text}, got {_type_name(instance)}{shown}")]
    if error.validator == "enum":
        choices = [str(choice) for choice in schema.get("enum", [])]
        close = did_you_mean(instance, choices) if isinstance(instance, str) else None
        return [
            Problem(
                parts, f"must be one of {', '.join(choices)}, got {got}", f"did you mean '{close}'?" if close else ""
            )
        ]
    if error.validator == "minLength":
        return [Problem(parts, "must not be empty")]
    if error.validator == "minItems":
        return [Problem(parts, "must not be an empty list")]
    if error.validator == "minimum":
        return [Problem(parts, f"must be at least {schema['minimum']}, got {got}")]
    if error.validator == "maximum":
        return [Problem(parts, f"must be at most {schema['maximum']}, got {got}")]
    if error.validator == "exclusiveMinimum":
        return [Problem(parts, f"must be more than {schema['exclusiveMinimum']}, got {got}")]
    return [Problem(parts, error.message)]


def problems_in(instance: Any, schema_name: str, *, ignore_required: bool = False) -> list[Problem]:
    """Every problem of `instance` against the named schema, sorted by path, without duplicates."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name), registry=_registry())
    found: list[Problem] = []
    for error in validator.iter_errors(instance):
        for problem in _problems(error):
            if ignore_required and problem.message == "is required" and len(problem.parts) == 1:
                continue
            if problem not in found:
                found.append(problem)
    return sorted(found, key=lambda problem: [(isinstance(part, str), part) for part in problem.parts])


def validate(instance: Any, schema_name: str, root: str | RootFor, *, ignore_required: bool = False) -> None:
    """Raise one UserError listing every problem, each naming its path from `root`.

    `root` is the document's name (`params`), or a function choosing it per problem
    (put params merged from `params` and `source.params`).
    """
    problems = problems_in(instance, schema_name, ignore_required=ignore_required)
    if not problems:
        return
    root_for = root if callable(root) else (lambda _parts: root)
    lines = [(format_path(root_for(p.parts), p.parts), p.message, p.hint) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(("", f"... and {len(problems) - MAX_PROBLEMS} more problems", ""))
    raise UserError.many(lines)

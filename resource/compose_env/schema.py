"""Validate JSON against the schemas shipped in `schemas/`, one readable line per problem."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from .errors import UserError


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schemas", f"{name}.json").read_text()
    return json.loads(text)


def format_path(root: str, parts: Iterable[Any]) -> str:
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


def _messages(error: jsonschema.ValidationError, root: str) -> list[tuple[str, str, str]]:
    """Turn one jsonschema error into (path, message, hint) triples."""
    path = format_path(root, error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance

    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        found = []
        for key in instance:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            found.append((format_path(path, [key]), "unknown key", hint))
        return found
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [(format_path(path, [missing]), "is required", "")]
    if error.validator in ("anyOf", "oneOf"):
        # Where the value is an object and one branch is for objects, the precise
        # problem lies inside that branch: report it instead of "expected ...".
        if isinstance(instance, dict):
            inner = [e for e in error.context or [] if e.validator != "type" and len(e.absolute_path) >= len(error.absolute_path)]
            if inner:
                return [m for e in inner for m in _messages(e, root)]
        expected = schema.get("x-expected", "another type")
        return [(path, f"expected {expected}, got {describe(instance)}", "")]
    if error.validator == "type":
        wanted = schema.get("type")
        wanted_text = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return [(path, f"must be {'an' if str(wanted_text)[0] in 'aeiou' else 'a'} {wanted_text}, got {_type_name(instance)} ({describe(instance)})", "")]
    if error.validator == "enum":
        choices = ", ".join(str(c) for c in schema.get("enum", []))
        return [(path, f"must be one of {choices}, got {describe(instance)}", "")]
    if error.validator == "pattern" and path.endswith("project_name"):
        return [
            (path, f"{describe(instance)} is not a valid compose project name", "use lowercase letters, digits, '-' and '_', starting with a letter or digit")
        ]
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "minLength", "minItems", "pattern"):
        return [(path, f"{describe(instance)} is not allowed: {error.message}", "")]
    return [(path, error.message, "")]


def validate(instance: Any, schema_name: str, root: str) -> None:
    """Raise one UserError listing every problem, each line naming its path."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    problems: list[tuple[str, str, str]] = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        for problem in _messages(error, root):
            if problem not in problems:
                problems.append(problem)
    if not problems:
        return
    first_path, first_message, first_hint = problems[0]
    if len(problems) == 1:
        raise UserError(first_path, first_message, first_hint)
    lines = [f"{p}: {m}" + (f" ({h})" if h else "") for p, m, h in problems]
    raise UserError("", f"{len(problems)} problems in the configuration:\n  " + "\n  ".join(lines))

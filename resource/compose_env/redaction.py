"""Secrets never reach the build log, the log files or the metadata: one place decides what is secret.

Every text we print or store goes through one `Redactor`: the console (our lines and every
line compose or a container writes), the per-service log files, and the metadata values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_KEY_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
MASK = "***"
#: Shorter values ("", "1", "on") would mask half the log and protect nothing.
MIN_SECRET_LENGTH = 3
#: schema.describe() shows at most this many characters of a value.
SHORTENED_AT = 40


def is_secret_key(key: str) -> bool:
    """`params.env` keys whose value is a secret: they contain PASSWORD, SECRET, TOKEN or KEY."""
    return any(word in key.upper() for word in SECRET_KEY_WORDS)


def secret_env_values(env: Mapping[str, str]) -> list[str]:
    """Values of `params.env` whose key names a secret; a boolean never is one (masking every `true` hides much)."""
    return [value for key, value in env.items() if is_secret_key(key) and value.lower() not in ("true", "false")]


def secrets_in_request(request: Mapping[str, Any]) -> list[str]:
    """Registry passwords, the TLS key and secret-named env values, from a request not yet validated.

    A value of the wrong type (a number, a list) is a secret all the same: a validation
    error would otherwise print it. Error messages shorten long values to their first
    37 characters, so that form is masked too.
    """
    source: Mapping[str, Any] = request["source"] if isinstance(request.get("source"), dict) else {}
    values: list[Any] = []
    for registry in source.get("registries") or []:
        if isinstance(registry, dict) and registry.get("password") is not None:
            values.append(registry["password"])
    tls = source.get("tls")
    if isinstance(tls, dict) and tls.get("key") is not None:
        values.append(tls["key"])
    for params in (source.get("params"), request.get("params")):
        env = params.get("env") if isinstance(params, dict) else None
        if isinstance(env, dict):
            values += [value for key, value in env.items() if is_secret_key(str(key))]
    secrets: list[str] = []
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value)
        secrets.append(text)
        if not isinstance(value, str):
            secrets.append(str(value))
        if len(json.dumps(value)) > SHORTENED_AT:
            secrets.append(json.dumps(value)[: SHORTENED_AT - 3])
    return secrets


def _forms(secret: str) -> list[str]:
    """The secret itself, and each line of a multi-line one (a PEM key is printed line by line)."""
    forms = [secret]
    if "\n" in secret:
        forms += [line.strip() for line in secret.splitlines()]
    return [form for form in forms if len(form) >= MIN_SECRET_LENGTH]


class Redactor:
    """Replaces every known secret with `***`. Callable, so it plugs into the console and the logs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self._secrets.update(_forms(secret))
        if self._secrets:
            # Longest first, so that a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

"""Secrets never reach the build log or the metadata: one place decides what is secret."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRET_KEY_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
MASK = "***"


def secret_env_values(env: Mapping[str, str]) -> list[str]:
    """Values of `params.env` whose key names a secret (PASSWORD, SECRET, TOKEN or KEY)."""
    return [value for key, value in env.items() if any(word in key.upper() for word in SECRET_KEY_WORDS)]


class Redactor:
    """Replaces every known secret with `***`. Callable, so it plugs into the console."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values (""/"1") would mask half the log and protect nothing.
        self._secrets.update(s for s in secrets if len(s) >= 3)
        if self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

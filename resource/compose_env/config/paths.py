"""Paths in params: relative to the put directory (or the task's), resolved, and kept inside it."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from compose_env.errors import UserError


class PathResolver:
    """Resolves user paths inside the put directory and refuses anything that leads out of it.

    `..` escapes, absolute paths elsewhere and symlinks pointing out are all caught
    by comparing the real path (symlinks followed) with the real put directory.
    Nothing is ever written: Concourse may mount the inputs read-only.
    """

    def __init__(self, put_dir: Path) -> None:
        self.put_dir = Path(os.path.realpath(put_dir))

    def resolve(self, given: str, path: str, *, kind: str = "file", base: Path | None = None) -> Path:
        if "\0" in given:
            raise UserError(path, f"{given!r} contains a NUL character")
        candidate = Path(given) if os.path.isabs(given) else (base or self.put_dir) / given
        real = Path(os.path.realpath(candidate))
        if not self._inside(real):
            raise self._outside(given, path, candidate, real)
        if not real.exists():
            raise UserError(path, f"no such {kind}: {given}", self._hint(candidate))
        if kind == "file" and not real.is_file():
            raise UserError(path, f"{given} is not a file" + (" but a directory" if real.is_dir() else ""))
        if kind == "directory" and not real.is_dir():
            raise UserError(path, f"{given} is not a directory")
        return real

    def _inside(self, real: Path) -> bool:
        return real == self.put_dir or real.is_relative_to(self.put_dir)

    def _outside(self, given: str, path: str, candidate: Path, real: Path) -> UserError:
        lexical = Path(os.path.normpath(os.path.abspath(candidate)))
        if self._inside(lexical):
            return UserError(
                path,
                f"{given!r} is a symlink that leads outside the put directory (to {real})",
                "an input must hold the file itself: copy it into the artifact instead of linking to it",
            )
        how = "an absolute path" if os.path.isabs(given) else "a path that leads"
        return UserError(
            path,
            f"{given!r} is {how} outside the put directory {self.put_dir}",
            "paths are relative to the put directory, where each of the put's `inputs` is a folder: write "
            "<input>/<file>",
        )

    def _hint(self, candidate: Path) -> str:
        """Name the first missing component, what its folder holds, and the closest match."""
        relative = Path(os.path.normpath(candidate)).relative_to(self.put_dir).parts
        folder = self.put_dir
        for depth, part in enumerate(relative):
            if (folder / part).exists():
                folder = folder / part
                continue
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            close = difflib.get_close_matches(part, present, n=1, cutoff=0.6)
            if close:
                return f"did you mean {Path(*relative[:depth], close[0])}?"
            shown = ", ".join(present[:12]) or "nothing"
            where = "the put directory" if folder == self.put_dir else f"{Path(*relative[:depth])}/"
            hint = f"{where} holds: {shown}"
            if depth == 0:
                hint += f". Is '{part}' among the put's `inputs`?"
            return hint
        return ""

"""Shared test settings: `resource/` and `tests/` are on sys.path (see pyproject.toml)."""
